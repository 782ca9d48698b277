"""The CloudEvents 1.0 envelope (structured JSON mode): the part of an event every consumer
reads the same way, whatever its type. The typed payloads of `data` are in `payloads.py`."""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timezone
from functools import cache, lru_cache, partial
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer
from pydantic_core import TzInfo

from .. import tracing

CONTENT_TYPE = b"application/cloudevents+json"

TOPIC_SUBMISSIONS_RAW = "leads.submissions.raw"
TOPIC_ACTIVITIES_RAW = "leads.activities.raw"
TOPIC_INTAKE = "leads.intake"
TOPIC_ROUTING = "leads.routing"
TOPIC_SLA = "leads.sla"
TOPIC_NOTIFICATIONS = "leads.notifications"
TOPIC_DEADLETTER = "leads.deadletter"
ALL_TOPICS = (
    TOPIC_SUBMISSIONS_RAW,
    TOPIC_ACTIVITIES_RAW,
    TOPIC_INTAKE,
    TOPIC_ROUTING,
    TOPIC_SLA,
    TOPIC_NOTIFICATIONS,
    TOPIC_DEADLETTER,
)


def utc_iso(ts: datetime) -> str:
    """RFC 3339 in UTC with a Z, the only time format on the wire."""
    if type(ts.tzinfo) in _FIXED_OFFSETS:
        return _utc_iso_of_instant(ts)
    return _utc_iso(ts)


# Zones of one offset: two equal times of these are one instant, and so one string. (Not a zone
# with transitions: there, equal wall times of either side of a fold compare equal.)
_FIXED_OFFSETS = frozenset({timezone, TzInfo})


@lru_cache(maxsize=4096)
def _utc_iso_of_instant(ts: datetime) -> str:
    # A handler writes the same few times again and again (its event's, the lead's, the timer's),
    # and pydantic's TzInfo makes each isoformat cost microseconds.
    return _utc_iso(ts)


def _utc_iso(ts: datetime) -> str:
    if ts.tzinfo is not UTC:
        if ts.tzinfo is None:
            raise ValueError("naive datetime on the wire")
        ts = ts.astimezone(UTC)
    return ts.isoformat().replace("+00:00", "Z")


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    @field_serializer("*", when_used="json")
    def _times_in_utc(self, value: Any) -> Any:
        return utc_iso(value) if isinstance(value, datetime) else value

    @classmethod
    def wire(cls, **values: Any) -> dict[str, Any]:
        """`cls(**values).model_dump(mode="json")` for values our own code built with the fields'
        types, at a fraction of the cost: nothing is validated. For hot paths that build many
        events (the SLA clock's timer loop); anything read from outside is validated instead.
        A value that is itself the wire form of a model is taken as it is."""
        out: dict[str, Any] = _Wired()
        for name, required, default, to_float in _wire_fields(cls):
            if name in values:
                value = values.pop(name)
                kind = type(value)
                if kind is datetime:
                    value = utc_iso(value)
                elif to_float and kind is int:
                    value = float(value)
                elif kind not in _PLAIN:
                    value = _jsonable(value)
                out[name] = value
            elif required:
                raise TypeError(f"{cls.__name__}.wire: {name} is required")
            else:  # a fresh copy of a list or dict default, as pydantic makes
                out[name] = default if type(default) in _PLAIN else _jsonable(default)
        for name, value in values.items():  # extra fields, after the declared ones as pydantic dumps them
            out[name] = _jsonable(value)
        return out

    @classmethod
    def unwire(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """`cls.model_validate(data).model_dump()` for data in the wire form our own code wrote
        (`wire`, or a JSON dump of the model), at a fraction of the cost: the times are parsed back
        and floats made floats, nothing else is checked. For the in-process folds of events just
        built (the SLA clock's projection); a model with fields of other shapes, a missing
        required field or a time in another format takes pydantic's path."""
        fields = _unwire_fields(cls)
        if fields is None:
            return cls.model_validate(data).model_dump()
        out: dict[str, Any] = {}
        try:
            for name, convert, required, default in fields:
                if name in data:
                    value = data[name]
                    out[name] = value if convert is None or value is None else convert(value)
                elif required:
                    return cls.model_validate(data).model_dump()  # raises, naming the field
                else:
                    out[name] = default()
        except (TypeError, ValueError):
            return cls.model_validate(data).model_dump()
        if len(out) < len(data):  # extra fields, after the declared ones as pydantic dumps them
            out.update((k, v) for k, v in data.items() if k not in out)
        return out


def _time(value: Any) -> datetime:
    return value if type(value) is datetime else datetime.fromisoformat(value)


def _float(value: Any) -> float:
    if type(value) is bool:
        raise TypeError("not a float")
    return float(value)


def _timed_pairs(value: Any) -> list[tuple[int, datetime]]:
    return [(int(p), _time(t)) for p, t in value]


def _int_list(value: Any) -> list[int]:
    if any(type(v) is not int for v in value):
        raise TypeError("not a list of ints")
    return list(value)


# Field annotations `unwire` converts without pydantic: converter (None: taken as it is).
_UNWIRE: dict[Any, Any] = {
    **dict.fromkeys((str, int, bool, str | None, int | None, bool | None), None),
    datetime: _time, datetime | None: _time, float: _float, float | None: _float,
    list[int]: _int_list, list[tuple[int, datetime]]: _timed_pairs,
}


@cache
def _unwire_fields(cls: type[WireModel]) -> tuple[tuple[str, Any, bool, Any], ...] | None:
    """(name, converter, required, default factory) per field; None if a field is of another shape."""
    fields = []
    for name, field in cls.model_fields.items():
        if field.annotation not in _UNWIRE or field.alias not in (None, name):
            return None
        default = None if field.is_required() else partial(field.get_default, call_default_factory=True)
        fields.append((name, _UNWIRE[field.annotation], field.is_required(), default))
    return tuple(fields)


@cache
def _wire_fields(cls: type[WireModel]) -> tuple[tuple[str, bool, Any, bool], ...]:
    return tuple((name, field.is_required(),
                  None if field.is_required() else _jsonable(field.get_default(call_default_factory=True)),
                  field.annotation in (float, float | None))
                 for name, field in cls.model_fields.items())


class _Wired(dict):
    """A dict that `WireModel.wire` made: in wire form already."""


_PLAIN = frozenset({str, int, float, bool, type(None), _Wired})


def _jsonable(value: Any) -> Any:
    """A value as WireModel dumps it in JSON mode: times in UTC with a Z, tuples as lists."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: v if type(v) in _PLAIN else _jsonable(v) for k, v in value.items()}
    return value


class CloudEvent(WireModel):
    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    subject: str | None = None
    time: datetime
    datacontenttype: str = "application/json"
    correlationid: str | None = None
    causationid: str | None = None
    # CloudEvents distributed-tracing extension (W3C traceparent); written before `data` (see tracing).
    traceparent: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    # `time` is the envelope's only datetime, and `data` is in wire form already: one call, not
    # one per field (WireModel's serializer of the same name, narrowed).
    @field_serializer("time", when_used="json")
    def _times_in_utc(self, value: datetime) -> str:
        return utc_iso(value)

    def to_bytes(self) -> bytes:
        """The event as published and stored: `model_dump_json(exclude_none=True)`, byte for byte,
        made by orjson (several times faster; the SLA clock serialises every event it records).
        Anything orjson does not write as pydantic does (a time or another object in `data`, a
        key that is not a plain str, an extra field) takes pydantic's path."""
        if not self.__pydantic_extra__:
            envelope = {name: value for name, value in self.__dict__.items() if value is not None}
            envelope["time"] = utc_iso(self.time)
            try:
                return orjson.dumps(envelope, option=orjson.OPT_PASSTHROUGH_DATETIME
                                    | orjson.OPT_PASSTHROUGH_DATACLASS, default=_not_plain)
            except TypeError:
                pass
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> CloudEvent:
        """Parse one record value; raises `BadEvent` naming what is wrong."""
        if not raw:
            raise BadEvent("empty record value")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise BadEvent("not a CloudEvent: " + describe_validation_error(exc)) from exc


def _not_plain(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__}: for pydantic to serialise")


class BadEvent(ValueError):
    """A record that can never be processed; it goes to the dead-letter topic."""


def describe_validation_error(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
    )


def new_event(
    type: str,
    *,
    service: str,
    lead_id: str | None,
    data: BaseModel | Mapping[str, Any],
    time: datetime,
    cause: CloudEvent | None = None,
    correlation_id: str | None = None,
    event_id: str | None = None,
) -> CloudEvent:
    """Build an event; `cause` carries the correlation id and trace forward and becomes the causation id.
    A cause that has no correlation id (a sender's CloudEvent on a raw topic) is the chain's origin:
    its id is the correlation id. Without a cause on the bus (an HTTP request, a timer), the
    causation id is the correlation id:
    the chain's first event names itself, as its correlation id does, and a later one the chain's
    origin; every event carries both (the contract's envelope).
    `data`: the payload, or its wire form already (`WireModel.wire`)."""
    declared = getattr(data, "TYPE", None)
    if declared is not None and declared != type:
        raise ValueError(f"a {declared} payload ({data.__class__.__name__}) in a {type} event")
    event_id = event_id or str(uuid.uuid4())
    # A cause without a correlation id is a sender's submission (a raw record): it started the chain.
    correlation_id = correlation_id or ((cause.correlationid or cause.id) if cause else None) or event_id
    return CloudEvent(
        id=event_id,
        source=f"leadsla/{service}",
        type=type,
        subject=lead_id or None,  # CloudEvents: a subject, when present, is not empty
        time=time,
        correlationid=correlation_id,
        causationid=cause.id if cause else correlation_id,
        traceparent=tracing.traceparent_for(event_id, cause_traceparent=cause.traceparent if cause else None,
                                            correlation_id=correlation_id),
        data=data.model_dump(mode="json") if isinstance(data, BaseModel) else data,
    )


def deterministic_id(*parts: str) -> str:
    """An event id derived from what caused it, so a retried handler emits the same id:
    `str(uuid.uuid5(uuid.NAMESPACE_URL, "leadsla:" + ":".join(parts)))`, built here without the
    UUID object (a third of the cost; several per event on the SLA clock's hot path)."""
    digest = bytearray(hashlib.sha1(_ID_PREFIX + ":".join(parts).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_ID_PREFIX = uuid.NAMESPACE_URL.bytes + b"leadsla:"
