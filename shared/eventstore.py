"""Each service's event store: the append-only record of every event the service emitted.

`<schema>.events` is the system of record. A row is one CloudEvent (the exact bytes that go to
Kafka) with its global `position`, its stream (the lead id; the owner id for owner changes) and
its `version` in that stream, unique per stream. The service's state tables are projections of
these events, written in the same transaction as the append.

Appends of one service are serialised by a transaction-scoped advisory lock taken just before
the insert and held to commit, so positions become visible in order: the relay can publish by
position with a plain cursor and never skip a row that commits late. The lock covers only the
insert and the commit (a millisecond or two); batches amortise it.

Optimistic concurrency: a command that read a stream's version (`expect`) and appends to it
conflicts if someone else appended first; it is then retried from fresh state
(`ConcurrencyConflict`, see `retry_on_conflict`).

`topic` is NULL for events kept only in the store (a service's internal decisions); the relay
publishes the others. Nothing is deleted unless `LEADSLA_EVENT_RETENTION_DAYS` is set.
"""
from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import SERVICE_SCHEMAS, any_text, metadata
from .events import CloudEvent

T = TypeVar("T")


def events_table(schema: str) -> Table:
    return Table(
        "events",
        metadata,
        Column("position", BigInteger, primary_key=True, autoincrement=True),
        Column("stream_id", String, nullable=False),
        Column("version", Integer, nullable=False),
        Column("event_id", String, nullable=False),
        Column("event_type", String, nullable=False),
        Column("topic", String),  # NULL: kept in the store only, never published
        Column("key", String, nullable=False),  # the Kafka record key (the lead id)
        Column("payload", LargeBinary, nullable=False),  # the CloudEvent, as published
        Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        UniqueConstraint("stream_id", "version", name=f"uq_{schema}_events_stream_version"),
        schema=schema,
    )


def relay_table(schema: str) -> Table:
    """One row: the position up to which the relay has published (or parked) the store."""
    return Table(
        "relay_position",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("published_position", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        schema=schema,
    )


def parked_table(schema: str) -> Table:
    """Store rows the relay could not publish: refused by the broker for good (with the error),
    or held behind such a row of the same key so that one lead's events stay in order."""
    return Table(
        "parked",
        metadata,
        Column("position", BigInteger, primary_key=True),
        Column("key", String, nullable=False),
        Column("error", Text),  # NULL for a row held behind an earlier refused row of its key
        Column("parked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index(f"ix_{schema}_parked_key", "key"),
        schema=schema,
    )


EVENTS = {schema: events_table(schema) for schema in SERVICE_SCHEMAS}
RELAY = {schema: relay_table(schema) for schema in SERVICE_SCHEMAS}
PARKED = {schema: parked_table(schema) for schema in SERVICE_SCHEMAS}


class ConcurrencyConflict(Exception):
    """Another writer appended to a stream after this command read it; retry from fresh state."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id!r} is at version {actual}, expected {expected}")
        self.stream_id, self.expected, self.actual = stream_id, expected, actual


@dataclass(frozen=True)
class Pending:
    """An event to append: where it is published (None: nowhere) and the stream it belongs to."""

    topic: str | None
    event: CloudEvent
    stream_id: str


@dataclass(frozen=True)
class StoredEvent:
    position: int
    stream_id: str
    version: int
    topic: str | None
    event: CloudEvent
    recorded_at: datetime


def append_lock_key(schema: str) -> int:
    return zlib.crc32(f"leadsla.events.append.{schema}".encode())


async def stream_versions(conn: AsyncConnection, schema: str, stream_ids: Sequence[str]) -> dict[str, int]:
    """The current version of each stream (0: no events yet), in one statement."""
    found = dict((await conn.execute(_VERSIONS[schema], {"values": list(stream_ids)})).all())
    return {stream_id: found.get(stream_id, 0) for stream_id in stream_ids}


@dataclass(frozen=True)
class Appended:
    """What an append put in the store: its rows (position, topic, key, payload) in position order,
    and the last position committed before them. Once it commits, every row up to its last
    position is either committed or never will be: the appends of a schema commit in order."""

    committed_before: int
    rows: list[StoreRow]


class StoreRow(NamedTuple):
    """A store row as the relay publishes it; `held`: its key has a parked row."""

    position: int
    topic: str | None
    key: str
    payload: bytes
    held: bool = False


async def append(conn: AsyncConnection, schema: str, pending: list[Pending],
                 expected: dict[str, int] | None = None) -> Appended | None:
    """Append in order, in the caller's transaction; the caller commits right after (the append
    lock is held to commit). Raises `ConcurrencyConflict` if a stream in `expected` moved."""
    if not pending:
        return None
    payloads = [p.event.to_bytes() for p in pending]
    expected = expected or {}
    # The lock, then (in a snapshot taken after it, so every append committed before is seen)
    # the check of the expected versions, the numbering and the insert: one call of the store's
    # append function (migrations 0009, 0016). Nothing is inserted if a stream moved. The rows go
    # as a typed array per column, the payloads as bytea[] in binary: Postgres copies them as they
    # are (as JSON, every payload was parsed, unescaped and converted back to bytes).
    result = (await conn.execute(_APPENDS[schema], {
        "lock_key": append_lock_key(schema),
        # Streams read to decide (`expected`) are checked even when nothing is appended to them.
        "streams": list(dict.fromkeys([*(p.stream_id for p in pending), *expected])),
        "expected_streams": list(expected),
        "expected_versions": list(expected.values()),
        "stream_ids": [p.stream_id for p in pending],
        "event_ids": [p.event.id for p in pending],
        "event_types": [p.event.type for p in pending],
        "topics": [p.topic for p in pending],
        "keys": [p.event.subject or "" for p in pending],
        "payloads": payloads,
    })).first()
    assert result is not None
    if result.moved_stream is not None:
        raise ConcurrencyConflict(result.moved_stream, result.expected_version, result.actual_version)
    if result.last_position - result.first_position + 1 != len(pending):
        return None  # not one run of positions: nobody can tell the rows' positions apart
    return Appended(result.committed_before, [
        StoreRow(position, p.topic, p.event.subject or "", payload)
        for position, p, payload in zip(range(result.first_position, result.last_position + 1), pending, payloads,
                                        strict=True)])


# Built once: every unit of work that reads versions or appends runs these.
_VERSIONS = {schema: select(EVENTS[schema].c.stream_id, func.max(EVENTS[schema].c.version))
             .where(EVENTS[schema].c.stream_id == any_text(())).group_by(EVENTS[schema].c.stream_id)
             for schema in SERVICE_SCHEMAS}
_APPENDS = {schema: text(
    f"SELECT * FROM {schema}.append_events(:lock_key, CAST(:streams AS text[]), CAST(:expected_streams AS text[]), "
    "CAST(:expected_versions AS int[]), CAST(:stream_ids AS text[]), CAST(:event_ids AS text[]), "
    "CAST(:event_types AS text[]), CAST(:topics AS text[]), CAST(:keys AS text[]), CAST(:payloads AS bytea[]))")
    for schema in SERVICE_SCHEMAS}


def _stored(row) -> StoredEvent:
    return StoredEvent(position=row.position, stream_id=row.stream_id, version=row.version, topic=row.topic,
                       event=CloudEvent.from_bytes(row.payload), recorded_at=row.recorded_at)


async def read_stream(conn: AsyncConnection, schema: str, stream_id: str) -> list[StoredEvent]:
    """One stream's events in version order."""
    t = EVENTS[schema]
    rows = await conn.execute(select(t).where(t.c.stream_id == stream_id).order_by(t.c.version))
    return [_stored(r) for r in rows]


async def read_all(conn: AsyncConnection, schema: str, *, after: int = 0, limit: int = 1000,
                   types: Iterable[str] | None = None) -> list[StoredEvent]:
    """The store in position order, a page at a time (replay)."""
    t = EVENTS[schema]
    query = select(t).where(t.c.position > after).order_by(t.c.position).limit(limit)
    if types is not None:
        query = query.where(t.c.event_type.in_(list(types)))
    return [_stored(r) for r in await conn.execute(query)]


async def count(conn: AsyncConnection, schema: str) -> int:
    return await conn.scalar(select(func.count()).select_from(EVENTS[schema])) or 0


async def retry_on_conflict(command: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Run a command (which opens its own unit of work) again from fresh state when it loses a
    race on a stream."""
    for attempt in range(1, attempts + 1):
        try:
            return await command()
        except ConcurrencyConflict:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")
