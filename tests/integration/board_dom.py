"""Reads the board's DOM as a browser rendered it (stdlib parser: table rows per section, the
compliance bars, the refresh interval)."""
from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class BoardDom:
    rows: dict[str, list[list[str]]] = field(default_factory=dict)  # section id -> body rows of cells
    bars: dict[str, str] = field(default_factory=dict)  # tier -> the value shown beside its bar
    refresh_seconds: str | None = None

    @classmethod
    def parse(cls, html: str) -> BoardDom:
        parser = _Parser()
        parser.feed(html)
        return parser.dom


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.dom = BoardDom()
        self._section: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None
        self._bar: str | None = None
        self._value: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
        elif tag == "meta" and a.get("http-equiv") == "refresh":
            self.dom.refresh_seconds = a.get("content")
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._section:
            self.dom.rows.setdefault(self._section, []).append([])
        elif tag == "td" and self._in_body:
            self._cell = []
        elif tag == "div" and "bar" in (a.get("class") or "").split():
            self._bar = a.get("data-tier")
        elif tag == "span" and self._bar is not None and a.get("class") == "value":
            self._value = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._cell is not None and self._section:
            self.dom.rows[self._section][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "span" and self._value is not None and self._bar is not None:
            self.dom.bars[self._bar] = "".join(self._value).strip()
            self._value, self._bar = None, None

    def handle_data(self, data: str) -> None:
        for sink in (self._cell, self._value):
            if sink is not None:
                sink.append(data)
