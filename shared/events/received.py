"""An event as a handler receives it: the envelope, and its `data` decoded once, at the edge,
into the payload class of its type."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel

from .envelope import CloudEvent
from .payloads import decode_payload

P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True)
class Received(Generic[P]):
    """`envelope` is what came off the wire (ids, time, correlation: a new event's `cause`);
    `data` is its payload, already validated."""

    envelope: CloudEvent
    data: P

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def time(self) -> datetime:
        return self.envelope.time

    @property
    def correlationid(self) -> str | None:
        return self.envelope.correlationid

    @classmethod
    def of(cls, event: CloudEvent) -> Received:
        """Decode a contract event by its type; raises `BadEvent` naming the field that does not fit."""
        return cls(event, decode_payload(event))  # type: ignore[arg-type]
