"""The SLA board: one server-rendered HTML page, no build step, no script beyond a meta refresh.
Pure: data in, HTML out. It shows lead ids, tiers and owner ids, never contact data."""
from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from shared.events import utc_iso

REFRESH_SECONDS = 15

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#f6f7f9;color:#1c2330}
h1{font-size:1.4rem;margin:0 0 .2rem} .stamp{color:#667;font-size:.85rem;margin-bottom:1rem}
section{background:#fff;border-radius:8px;padding:1rem;margin-bottom:1rem;box-shadow:0 1px 2px #0002}
h2{font-size:1.05rem;margin:0 0 .6rem} table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eee;font-size:.9rem}
.late{color:#b00020;font-weight:600} .soon{color:#b26a00;font-weight:600} .ok{color:#1b7f3a}
.bar{display:flex;align-items:center;gap:.5rem;margin:.25rem 0} .bar .label{width:5rem}
.bar .track{flex:1;background:#eee;border-radius:4px;height:1.1rem;position:relative}
.bar .fill{background:#2e7d32;height:100%;border-radius:4px} .bar .fill.low{background:#c62828}
.bar .value{width:8rem;font-variant-numeric:tabular-nums} .empty{color:#889}
"""


def _remaining(due: datetime, now: datetime) -> tuple[str, str]:
    seconds = int((due - now).total_seconds())
    label = _duration(abs(seconds))
    if seconds < 0:
        return f"overdue {label}", "late"
    return f"in {label}", "soon" if seconds < 300 else "ok"


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def _cell(value: Any) -> str:
    return escape("" if value is None else str(value))


def render_board(data: dict[str, Any], now: datetime) -> str:
    open_rows = "".join(
        f'<tr><td>{_cell(t["lead_id"])}</td><td>{_cell(t["tier"])}</td><td>{_cell(t["metric"])}</td>'
        f'<td>{_cell(t["owner_id"])}</td><td>{_cell(utc_iso(t["due_at"]))}</td>'
        f'<td class="{css}">{text}</td></tr>'
        for t in data["open"] for text, css in [_remaining(t["due_at"], now)]
    ) or '<tr><td colspan="6" class="empty">No open timers.</td></tr>'
    breach_rows = "".join(
        f'<tr><td>{_cell(b["lead_id"])}</td><td>{_cell(b["tier"])}</td><td>{_cell(b["metric"])}</td>'
        f'<td>{_cell(b["owner_id"])}</td><td>{_cell(utc_iso(b["breached_at"]))}</td>'
        f'<td>{_cell(b["root_cause"])}</td></tr>'
        for b in data["breaches"]
    ) or '<tr><td colspan="6" class="empty">No breaches today.</td></tr>'
    bars = "".join(_bar(row) for row in data["compliance"]) or '<p class="empty">No SLAs judged in the last 7 days.</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>leadsla · SLA board</title><style>{STYLE}</style></head>
<body>
<h1>SLA board</h1>
<div class="stamp">as of {escape(utc_iso(now))} · refreshes every {REFRESH_SECONDS}s</div>
<section id="compliance"><h2>First-response compliance by tier, last 7 days</h2>{bars}</section>
<section id="open-timers"><h2>Open timers, nearest to breach{_shown(len(data["open"]), data.get("open_total"), "first")}</h2>
<table><thead><tr><th>lead</th><th>tier</th><th>metric</th><th>owner</th><th>due (UTC)</th><th>remaining</th></tr></thead>
<tbody>{open_rows}</tbody></table></section>
<section id="breaches-today"><h2>Breaches today ({data.get("breaches_today", len(data["breaches"]))}){_shown(len(data["breaches"]), data.get("breaches_today"), "the latest")}</h2>
<table><thead><tr><th>lead</th><th>tier</th><th>metric</th><th>owner</th><th>breached at (UTC)</th><th>root cause</th></tr></thead>
<tbody>{breach_rows}</tbody></table></section>
</body></html>"""


def _shown(listed: int, total: int | None, which: str) -> str:
    """Says so when the rows listed are not all there are."""
    return f" · {which} {listed} of {total}" if total is not None and total > listed else ""


def _bar(row: dict[str, Any]) -> str:
    compliance = row["compliance"]
    judged = (row["met"] or 0) + (row["breached"] or 0)
    width = 0 if compliance is None else round(compliance * 100, 1)
    shown = "n/a" if compliance is None else f"{width:g}% of {judged}"
    low = " low" if compliance is not None and compliance < 0.9 else ""
    return (f'<div class="bar" data-tier="{_cell(row["tier"])}"><span class="label">{_cell(row["tier"] or "none")}</span>'
            f'<span class="track"><span class="fill{low}" style="width:{width}%;display:block"></span></span>'
            f'<span class="value">{shown}</span></div>')
