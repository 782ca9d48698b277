"""W3C Trace Context across every hop: HTTP request -> event -> Kafka record -> handler -> event.

Each event is one span: its envelope carries the CloudEvents distributed-tracing extension
attribute `traceparent` (`00-<trace id>-<span id>-<flags>`), and the relay copies it into the
Kafka record's `traceparent` header. An event inherits the trace of what caused it: the cause
event's traceparent, else the one in effect (an HTTP request's `traceparent` header, or a Kafka
record's header while a handler runs). The span id is derived from the event id, so a retried
handler, which emits the same event id, emits the same traceparent.

An event that starts a trace (no incoming traceparent) takes a trace id derived from its
correlation id (its own id when it starts the correlation). Events fired later by a loop, with no
cause in hand (a timer's breach, an escalation step), are built with the lead's correlation id and
so land in the same trace.

Logs: `handling(event)` and the HTTP middleware bind lead id, correlation id and trace id to
structlog's context variables for the duration of the work.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

HEADER = "traceparent"
_FORMAT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


@dataclass(frozen=True)
class TraceContext:
    trace_id: str
    span_id: str
    flags: str = "01"

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


@lru_cache(maxsize=4096)
def parse(value: str | bytes | None) -> TraceContext | None:
    """A valid traceparent (W3C Trace Context level 1), or None for anything else. Cached: an
    event's traceparent is parsed again for every event it causes (the context is immutable)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    match = _FORMAT.match(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, flags)


def _hex(seed: str, length: int) -> str:
    digest = hashlib.sha256(seed.encode()).hexdigest()[:length]
    return digest if digest.strip("0") else "1".rjust(length, "0")


def span_id_for(event_id: str) -> str:
    return _hex("span:" + event_id, 16)


def trace_id_for(correlation_id: str) -> str:
    return _hex("trace:" + correlation_id, 32)


_current: ContextVar[TraceContext | None] = ContextVar("leadsla_traceparent", default=None)


def current() -> TraceContext | None:
    return _current.get()


@contextlib.contextmanager
def use(parent: TraceContext | str | None) -> Iterator[None]:
    """Make `parent` the trace new events continue, for the block; None leaves the current one."""
    context = parse(parent) if isinstance(parent, str) else parent
    if context is None:
        yield
        return
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


def traceparent_for(event_id: str, *, cause_traceparent: str | None, correlation_id: str | None) -> str:
    """The traceparent of a new event: a child of its cause, else of the trace in effect, else
    the root of the trace its correlation id names."""
    parent = parse(cause_traceparent) or current()
    if parent is not None:
        return str(TraceContext(parent.trace_id, span_id_for(event_id), parent.flags))
    return str(TraceContext(trace_id_for(correlation_id or event_id), span_id_for(event_id)))


def _header_value(headers: Any, name: str) -> bytes | None:
    for key, value in headers or ():
        if key.lower() == name:
            return value
    return None


@contextlib.contextmanager
def handling(event: Any, headers: Any = None) -> Iterator[None]:
    """While a consumer handles `event`: its trace is in effect (the envelope's traceparent, else
    the Kafka record's header) and logs carry its lead id, correlation id and trace id."""
    parent = parse(getattr(event, "traceparent", None)) or parse(_header_value(headers, HEADER))
    bound = {"lead_id": event.subject, "correlation_id": event.correlationid, "event_id": event.id,
             "event_type": event.type}
    if parent is not None:
        bound["trace_id"] = parent.trace_id
    with use(parent), structlog.contextvars.bound_contextvars(**bound):
        yield


# ---- Kafka ------------------------------------------------------------------------------------

_ENVELOPE_KEY = b'"traceparent":"'
_DATA_KEY = b'"data":'


# The shape this system writes (version 00): matched on the bytes, so the relay need not decode.
_WRITTEN = re.compile(rb'"traceparent":"(00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})"')
_ZERO_IDS = (b"-" + _ZERO_TRACE.encode() + b"-", b"-" + _ZERO_SPAN.encode() + b"-")


def _traceparent_bytes(payload: bytes) -> bytes | None:
    """The envelope's traceparent, read from the serialized CloudEvent without parsing it: the
    attribute is written before `data`, and a quote inside a JSON string is always escaped, so the
    first match before `"data":` is the envelope's own."""
    end = payload.find(_DATA_KEY)
    end = end if end >= 0 else len(payload)
    written = _WRITTEN.search(payload, 0, end)
    if written is not None:
        value = written.group(1)
        return None if _ZERO_IDS[0] in value or _ZERO_IDS[1] in value else value
    start = payload.find(_ENVELOPE_KEY, 0, end)
    if start < 0:
        return None
    start += len(_ENVELOPE_KEY)
    context = parse(payload[start:start + 55])  # another version or a stray suffix: the full rules
    return str(context).encode() if context else None


def traceparent_in(payload: bytes) -> str | None:
    value = _traceparent_bytes(payload)
    return value.decode() if value else None


def record_headers(payload: bytes, content_type: bytes) -> list[tuple[str, bytes]]:
    """The Kafka headers of an outbox row: CloudEvents binding content-type, and traceparent."""
    traceparent = _traceparent_bytes(payload)
    if traceparent:
        return [("content-type", content_type), (HEADER, traceparent)]
    return [("content-type", content_type)]


# ---- HTTP -------------------------------------------------------------------------------------

_LEAD_PATH = re.compile(r"^/v1/leads/([^/:]+)")


class TraceMiddleware:
    """An incoming `traceparent` header becomes the parent of the events the request emits; logs
    written while the request runs carry its trace id and, on lead routes, the lead id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parent = parse(_header_value(scope.get("headers"), HEADER.encode()))
        bound: dict[str, str] = {}
        if parent is not None:
            bound["trace_id"] = parent.trace_id
        if match := _LEAD_PATH.match(scope.get("path", "")):
            bound["lead_id"] = match.group(1)
        if parent is None and not bound:  # nothing to set (most requests): no context managers
            await self.app(scope, receive, send)
            return
        with use(parent), structlog.contextvars.bound_contextvars(**bound):
            await self.app(scope, receive, send)
