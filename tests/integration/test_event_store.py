"""The event store on real Postgres: optimistic concurrency per stream, position order, read-back."""
from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel
from sqlalchemy import text

from shared.db import SERVICE_SCHEMAS
from shared.events import TOPIC_ROUTING, LeadQueued, new_event
from shared.eventstore import (
    ConcurrencyConflict,
    Pending,
    append,
    append_lock_key,
    read_all,
    read_stream,
    retry_on_conflict,
)
from shared.outbox import OutboxRelay
from shared.uow import UnitOfWork
from tests.support import TopicReader, eventually

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


class Counted(BaseModel):
    count: int


async def an_append_waits_for_the_lock(engine) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = :key"
        ), {"key": append_lock_key("router")}))


def counted(stream: str, count: int):
    return new_event("test.counted", service="router", lead_id=stream, time=NOW, data=Counted(count=count))


async def test_two_writers_racing_on_a_stream_one_wins_the_other_conflicts(engine) -> None:
    stream = f"race-{uuid.uuid4()}"
    first, second = UnitOfWork(engine, "router"), UnitOfWork(engine, "router")
    async with first, second:
        assert await first.load_version(stream) == 0
        assert await second.load_version(stream) == 0
        first.emit(None, counted(stream, 1))
        second.emit(None, counted(stream, 1))
        await first.commit()
        with pytest.raises(ConcurrencyConflict) as conflict:
            await second.commit()
    assert (conflict.value.expected, conflict.value.actual) == (0, 1)
    async with engine.connect() as conn:
        assert [e.version for e in await read_stream(conn, "router", stream)] == [1]


async def test_an_append_that_waited_for_the_lock_sees_the_append_it_waited_for(engine) -> None:
    """The version check runs after the append lock, in a snapshot taken after it: an append that
    waited for another writer's append to the same stream conflicts (never a duplicate version)."""
    stream = f"race-{uuid.uuid4()}"
    first = await engine.connect()
    await first.begin()
    await append(first, "router", [Pending(None, counted(stream, 1), stream)], {stream: 0})  # lock held
    async with UnitOfWork(engine, "router") as second:
        second.expect(stream, 0)
        second.emit(None, counted(stream, 1))
        waiting = asyncio.create_task(second.commit())

        await eventually(lambda: an_append_waits_for_the_lock(engine), what="the second append to wait for the first")
        await first.commit()
        await first.close()
        with pytest.raises(ConcurrencyConflict) as conflict:
            await waiting
    assert (conflict.value.expected, conflict.value.actual) == (0, 1)
    async with engine.connect() as conn:
        assert [e.version for e in await read_stream(conn, "router", stream)] == [1]


async def test_racing_commands_retry_from_fresh_state_and_none_is_lost(engine) -> None:
    """Eight commands each read the stream and append "the next count". Without the version check
    several would append the same count; with it, the losers retry and every count appears once."""
    stream = f"race-{uuid.uuid4()}"
    all_read = asyncio.Barrier(8)
    conflicts = 0

    async def command(first_try: list[bool]) -> None:
        nonlocal conflicts
        async with UnitOfWork(engine, "router") as uow:
            version = await uow.load_version(stream)
            events = await read_stream(uow.conn, "router", stream)
            if first_try[0]:  # make every command read before any writes: a real race
                first_try[0] = False
                await all_read.wait()
            uow.emit(None, counted(stream, len(events) + 1))
            try:
                await uow.commit()
            except ConcurrencyConflict:
                conflicts += 1
                raise
            assert version == len(events)

    await asyncio.gather(*(retry_on_conflict(lambda flag=[True]: command(flag), attempts=10) for _ in range(8)))

    async with engine.connect() as conn:
        stored = await read_stream(conn, "router", stream)
    assert [e.event.data["count"] for e in stored] == list(range(1, 9))
    assert [e.version for e in stored] == list(range(1, 9))
    assert conflicts >= 1  # the race happened, and was resolved by retrying


async def test_a_leads_events_read_back_in_order_with_increasing_positions(engine) -> None:
    lead = f"lead-{uuid.uuid4()}"
    for n in range(3):
        async with UnitOfWork(engine, "router") as uow:
            uow.emit(TOPIC_ROUTING, new_event("lead.queued", service="router", lead_id=lead, time=NOW,
                                              data=LeadQueued(lead_id=lead, tier="A", queue=f"q{n}", reason="t")))
            uow.emit(None, counted(lead, n))
            await uow.commit()
    async with engine.connect() as conn:
        stored = await read_stream(conn, "router", lead)
        page = await read_all(conn, "router", after=stored[0].position - 1, limit=10_000)
    assert [e.version for e in stored] == list(range(1, 7))
    assert [e.event.type for e in stored] == ["lead.queued", "test.counted"] * 3
    assert [e.topic for e in stored] == [TOPIC_ROUTING, None] * 3
    positions = [e.position for e in stored]
    assert positions == sorted(positions)
    assert [e.position for e in page if e.stream_id == lead] == positions


async def test_the_relay_never_passes_a_transaction_that_commits_late(engine, producer, kafka_bootstrap) -> None:
    """A transaction holding the append lock makes later appends wait: positions become visible in
    order, so the relay's cursor cannot skip a row that commits after a later one."""
    lead = f"lead-{uuid.uuid4()}"  # one lead, so one partition: its records' order is the relay's

    def queued(queue: str):
        return new_event("lead.queued", service="router", lead_id=lead, time=NOW,
                         data=LeadQueued(lead_id=lead, tier="A", queue=queue, reason="t"))

    async with (OutboxRelay(engine, "router", producer, asyncio.Event()) as relay,
                TopicReader(kafka_bootstrap, TOPIC_ROUTING) as reader):
        while await relay.publish_batch():
            pass
        slow = await engine.connect()
        await slow.begin()
        await append(slow, "router", [Pending(TOPIC_ROUTING, queued("early"), lead)])  # lock held, not committed

        async def fast_commit() -> None:
            async with UnitOfWork(engine, "router") as fast:
                fast.emit(TOPIC_ROUTING, queued("late"))
                await fast.commit()

        fast = asyncio.create_task(fast_commit())

        await eventually(lambda: an_append_waits_for_the_lock(engine), what="the second append to wait for the first")
        assert await relay.publish_batch() == 0  # nothing visible past the cursor yet
        await slow.commit()
        await slow.close()
        await fast
        while await relay.publish_batch():
            pass
        await reader.wait_for(lambda es: len([e for e in es if e.subject == lead]) >= 2, what="both events")
    assert [e.data["queue"] for e in reader.events(lead)] == ["early", "late"]
    async with engine.connect() as conn:
        assert [e.version for e in await read_stream(conn, "router", lead)] == [1, 2]


async def test_one_append_of_interleaved_streams_keeps_the_given_order(engine) -> None:
    """Positions follow the order the events were given in; each stream's versions number on from
    its stored version; an expectation on a stream not appended to is checked too."""
    a, b, idle = (f"{name}-{uuid.uuid4()}" for name in ("a", "b", "idle"))
    async with UnitOfWork(engine, "router") as uow:
        uow.emit(None, counted(a, 0))
        await uow.commit()
    async with UnitOfWork(engine, "router") as uow:
        for n, stream in enumerate([b, a, b, b, a, a, b, a] * 5):
            uow.emit(None, counted(stream, n))
        uow.expect(idle, 0)
        await uow.commit()
    async with engine.connect() as conn:
        stored = {s: await read_stream(conn, "router", s) for s in (a, b)}
    assert [e.version for e in stored[a]] == list(range(1, 22))
    assert [e.version for e in stored[b]] == list(range(1, 21))
    both = sorted(stored[a][1:] + stored[b], key=lambda e: e.position)
    assert [e.event.data["count"] for e in both] == list(range(40))
    async with UnitOfWork(engine, "router") as uow:
        uow.emit(None, counted(a, 99))
        uow.expect(idle, 1)  # it has no events: version 0
        with pytest.raises(ConcurrencyConflict) as conflict:
            await uow.commit()
    assert (conflict.value.stream_id, conflict.value.expected, conflict.value.actual) == (idle, 1, 0)


async def test_every_service_schema_appends_through_the_array_function(engine) -> None:
    """Migration 0016: each store's append takes its rows as typed arrays, the payloads as bytea[]
    (sent in binary: no JSON for Postgres to parse per event)."""
    async with engine.connect() as conn:
        schemas = set((await conn.execute(text(
            "SELECT n.nspname FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace "
            "WHERE p.proname = 'append_events' AND 'bytea[]'::regtype = ANY(p.proargtypes::regtype[])"))).scalars())
    assert schemas == set(SERVICE_SCHEMAS)


async def test_payloads_topics_and_keys_are_stored_as_given(engine) -> None:
    """The stored payload is the event's bytes exactly (escapes, non-ASCII, a NUL escape), a NULL
    topic stays NULL, and the relay's rows carry the positions the rows took."""
    lead = f"bytes-{uuid.uuid4()}"
    odd = new_event("test.counted", service="router", lead_id=lead, time=NOW,
                    data={"text": 'quote " backslash \\ nul \u0000 é ✓ 🚀 \n', "n": 1})
    plain = counted(lead, 2)
    async with engine.connect() as conn:
        async with conn.begin():
            appended = await append(conn, "router", [Pending(None, odd, lead), Pending("leads.queued", plain, lead)],
                                    {lead: 0})
        stored = await read_stream(conn, "router", lead)
        raw = (await conn.execute(text("SELECT position, topic, key, payload FROM router.events "
                                       "WHERE stream_id = :s ORDER BY position"), {"s": lead})).all()
    assert appended is not None
    assert [tuple(r) for r in raw] == [(row.position, row.topic, row.key, row.payload) for row in appended.rows]
    assert [(r.topic, r.key, bytes(r.payload)) for r in raw] == [
        (None, lead, odd.to_bytes()), ("leads.queued", lead, plain.to_bytes())]
    assert [e.version for e in stored] == [1, 2]
    assert stored[0].event.data["text"] == odd.data["text"]
