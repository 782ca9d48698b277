from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import PROCESSED
from shared.eventstore import EVENTS, RELAY
from shared.housekeeping import prune
from tests.integration.own_database import OwnDatabase, own_database  # noqa: F401 - a fixture


@pytest.fixture
def engine(own_database: OwnDatabase) -> AsyncEngine:  # noqa: F811
    """A database of this module's own: these tests write stand-in rows (not CloudEvents) into
    the stores, which a replay in a later test would read."""
    return own_database.engine


NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


async def test_keeps_every_event_unless_a_retention_is_set_and_then_only_published_ones_go(engine) -> None:
    store, relay, processed = EVENTS["reporting"], RELAY["reporting"], PROCESSED["reporting"]
    stream = f"hk-{uuid.uuid4()}"
    consumer = f"hk-{uuid.uuid4()}"
    ages = {"old published": timedelta(days=40), "recent published": timedelta(hours=1),
            "old unpublished": timedelta(days=40)}
    async with engine.begin() as conn:
        positions = {}
        for version, (label, age) in enumerate(ages.items(), start=1):
            positions[label] = await conn.scalar(insert(store).values(
                stream_id=stream, version=version, topic="t", key=stream, event_id=label, event_type="x",
                payload=b"{}", recorded_at=NOW - age).returning(store.c.position))
        published = positions["recent published"]
        await conn.execute(pg_insert(relay).values(id=1, published_position=published).on_conflict_do_update(
            index_elements=[relay.c.id], set_={"published_position": published}))
        await conn.execute(insert(processed), [
            {"consumer": consumer, "event_id": "old", "processed_at": NOW - timedelta(days=15)},
            {"consumer": consumer, "event_id": "recent", "processed_at": NOW - timedelta(days=13)}])

    async def kept() -> set[str]:
        async with engine.connect() as conn:
            return set((await conn.execute(select(store.c.event_id).where(store.c.stream_id == stream))).scalars())

    await prune(engine, "reporting", NOW, keep_events=None, keep_processed=timedelta(days=14))
    assert await kept() == set(ages)  # the store is the system of record: nothing goes by default

    await prune(engine, "reporting", NOW, keep_events=timedelta(days=30), keep_processed=timedelta(days=14))
    assert await kept() == {"recent published", "old unpublished"}
    async with engine.connect() as conn:
        ids = set((await conn.execute(
            select(processed.c.event_id).where(processed.c.consumer == consumer))).scalars())
    assert ids == {"recent"}


async def test_prunes_in_bounded_statements_until_everything_due_is_gone(engine) -> None:
    """Each statement deletes a bounded part (a running service's statements have a timeout):
    the oldest events a few at a time, processed ids a range of table pages at a time. Together
    they delete exactly what one statement would."""
    store, relay, processed = EVENTS["notifier"], RELAY["notifier"], PROCESSED["notifier"]
    stream, consumer = f"hk-{uuid.uuid4()}", f"hk-{uuid.uuid4()}"
    async with engine.begin() as conn:
        positions = [await conn.scalar(insert(store).values(
            stream_id=stream, version=version, topic="t", key=stream, event_id=f"{stream}-{version}", event_type="x",
            payload=b"{}", recorded_at=NOW - timedelta(days=40 if version <= 7 else 1)).returning(store.c.position))
            for version in range(1, 10)]
        await conn.execute(pg_insert(relay).values(id=1, published_position=positions[-1]).on_conflict_do_update(
            index_elements=[relay.c.id], set_={"published_position": positions[-1]}))
        # Old and recent ids interleaved over many pages of the table.
        await conn.execute(insert(processed), [
            {"consumer": consumer, "event_id": f"{n:05}", "processed_at": NOW - timedelta(days=15 if n % 3 else 1)}
            for n in range(3000)])

    pruned, ids = await prune(engine, "notifier", NOW, keep_events=timedelta(days=30),
                              keep_processed=timedelta(days=14), events_per_statement=2, pages_per_statement=1)

    async with engine.connect() as conn:
        kept_events = set((await conn.execute(select(store.c.event_id).where(store.c.stream_id == stream))).scalars())
        kept_ids = set((await conn.execute(
            select(processed.c.event_id).where(processed.c.consumer == consumer))).scalars())
    assert kept_events == {f"{stream}-8", f"{stream}-9"}
    assert kept_ids == {f"{n:05}" for n in range(0, 3000, 3)}
    assert (pruned, ids) == (7, 2000)
