"""The SLA clock's watermark on the real broker and Postgres: how far its consumer group has
handled what the producers published."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.tables import availability
from services.sla_clock.tables import blind_outages
from services.sla_clock.watermark import InputWatermark
from shared.clock import ManualClock
from shared.eventstore import EVENTS, RELAY
from tests.integration.own_database import OwnDatabase, own_database  # noqa: F401 - a fixture
from tests.support import WATERMARK_ALLOWANCE, create_topic, eventually, running_watermark


@pytest.fixture
def engine(own_database: OwnDatabase) -> AsyncEngine:  # noqa: F811
    """A database of this module's own: these tests write stand-in rows (not CloudEvents) into
    intake's store and move its relay, which the e2e tests' replay of intake would then read."""
    return own_database.engine


ALLOWANCE = WATERMARK_ALLOWANCE


@pytest.fixture
async def setup(kafka_bootstrap, engine) -> AsyncIterator[tuple[InputWatermark, str, str]]:
    topic = await create_topic(kafka_bootstrap, 2)
    group = f"wm-{uuid.uuid4().hex[:8]}"
    # No relay runs in integration tests: rows other tests left unpublished would hold the watermark.
    async with running_watermark(kafka_bootstrap, engine, [topic], group) as watermark:
        yield watermark, topic, group


async def rounds_later(watermark: InputWatermark, n: int = 3) -> None:
    target = watermark.rounds + n
    await eventually(lambda: watermark.rounds >= target, what=f"{n} watermark rounds")


async def commit(kafka_bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


async def test_the_watermark_waits_until_the_clocks_group_has_handled_every_published_record(
    setup, producer, kafka_bootstrap
) -> None:
    watermark, topic, group = setup
    await producer.send_and_wait(topic, b"a lead event", key=b"k", partition=0)
    published = datetime.now(UTC)
    await rounds_later(watermark)
    assert watermark.seen is None  # partition 0 holds a record nobody has handled

    await commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 1})
    seen = await eventually(lambda: watermark.seen, what="the watermark once the record is handled")
    assert seen > published - ALLOWANCE

    # More traffic, handled: the watermark keeps up with the clock.
    for _ in range(3):
        await producer.send_and_wait(topic, b"more", key=b"k", partition=1)
    later = datetime.now(UTC)
    await commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 3})
    await eventually(lambda: watermark.seen > later, what="the watermark past the later records")


async def test_an_event_a_producer_has_not_published_yet_holds_the_watermark(setup, engine) -> None:
    watermark, topic, _ = setup
    await eventually(lambda: watermark.seen, what="the watermark of an empty topic")
    store = EVENTS["intake"]

    def stored(topic: str, event_type: str) -> dict:
        return dict(stream_id=str(uuid.uuid4()), version=1, topic=topic, key="lead", event_id=str(uuid.uuid4()),
                    event_type=event_type, payload=b"{}")

    async with engine.begin() as conn:
        # A stuck dead letter is no input of the clock: it holds nothing.
        letter = (await conn.execute(insert(store).values(**stored("leads.deadletter", "deadletter"))
                                     .returning(store.c.position, store.c.recorded_at))).one()
    await eventually(lambda: watermark.seen > letter.recorded_at, what="the watermark past a stuck dead letter")
    async with engine.begin() as conn:
        # A touch intake accepted, not yet published (the broker is away, the relay is down...).
        row = (await conn.execute(insert(store).values(**stored(topic, "activity.recorded"))
                                  .returning(store.c.position, store.c.recorded_at))).one()
    await rounds_later(watermark, 5)
    assert watermark.seen < row.recorded_at

    relay = RELAY["intake"]
    async with engine.begin() as conn:  # what the relay records once it has published the row
        await conn.execute(pg_insert(relay).values(id=1, published_position=row.position).on_conflict_do_update(
            index_elements=[relay.c.id], set_={"published_position": row.position}))
    await eventually(lambda: watermark.seen > row.recorded_at, what="the watermark once the row is published")


async def test_the_clock_never_judges_past_an_intake_outage_before_it_knows_of_it(kafka_bootstrap, engine) -> None:
    """After an outage the watermark's round moved `seen` past it, then read intake's heartbeats to
    learn of it: the timer loop, judging in between, breached deadlines due in the outage as the
    owner's miss (found by the chaos auditor) instead of holding them and calling them system_delay."""
    topic = await create_topic(kafka_bootstrap, 1)
    now = datetime.now(UTC)
    async with engine.begin() as conn:  # intake beat until 20 s ago, was silent, and beats again
        await conn.execute(availability.delete())  # this module's database: only these beats
        await conn.execute(insert(availability).values([
            {"interval_id": str(uuid.uuid4()), "first_beat": now - timedelta(minutes=5),
             "last_beat": now - timedelta(seconds=20)},
            {"interval_id": str(uuid.uuid4()), "first_beat": now - timedelta(seconds=1), "last_beat": now}]))
    outage_began = now - timedelta(seconds=20)
    judged_past_unknown: list[datetime] = []
    viewed = asyncio.Event()

    async def timer_loop_view(watermark: InputWatermark) -> None:  # what the timer loop may read at any turn
        while not viewed.is_set():
            judged = watermark.judged_until
            if judged is not None and judged > outage_began and not watermark.hold.outages:
                judged_past_unknown.append(judged)
            await asyncio.sleep(0)

    async with running_watermark(kafka_bootstrap, engine, [topic]) as watermark:
        viewing = asyncio.create_task(timer_loop_view(watermark))
        try:
            await eventually(lambda: watermark.hold.outages, what="the outage known")
            await rounds_later(watermark)
        finally:
            viewed.set()
            await viewing
    assert judged_past_unknown == []
    assert watermark.judged_until <= outage_began  # held for the grace after it


async def test_the_watermark_names_every_recent_outage_of_intake_not_the_latest_only(kafka_bootstrap, engine) -> None:
    """Faults back to back: a breach due in the first outage, judged after the second began, was
    blamed on the owner, because the hold named the latest outage only."""
    topic = await create_topic(kafka_bootstrap, 1)
    now = datetime.now(UTC)
    beats = [(now - timedelta(minutes=10), now - timedelta(minutes=5)),  # out 5 min ago, for 30 s
             (now - timedelta(minutes=4, seconds=30), now - timedelta(seconds=40)),  # out 40 s ago, for 20 s
             (now - timedelta(seconds=20), now + timedelta(minutes=1))]  # beating still, however slow the round
    async with engine.begin() as conn:
        await conn.execute(availability.delete())  # this module's database: another test's beats would fill the gaps
        await conn.execute(insert(availability).values([
            {"interval_id": str(uuid.uuid4()), "first_beat": first, "last_beat": last} for first, last in beats]))
    async with running_watermark(kafka_bootstrap, engine, [topic]) as watermark:
        await eventually(lambda: watermark.hold.outages, what="the outages known")
    began = sorted(o.began for o in watermark.hold.outages)
    assert began == [beats[0][1], beats[1][1]]


async def test_the_clocks_own_outage_is_still_held_after_it_restarts(kafka_bootstrap, engine) -> None:
    """Rounds of the watermark far apart (the broker frozen, as the clock saw it) are an outage of
    its inputs. A clock killed inside the grace after it came back knowing nothing of it: the
    breaches due in it left at once, blamed on owners, whenever intake had seen no outage of its own."""
    topic = await create_topic(kafka_bootstrap, 1)
    async with engine.begin() as conn:  # this module's database: only this test's outages
        await conn.execute(availability.delete())
        await conn.execute(blind_outages.delete())
    clock = ManualClock(datetime.now(UTC))
    async with running_watermark(kafka_bootstrap, engine, [topic], clock=clock) as watermark:
        await rounds_later(watermark, 1)
        clock.advance(timedelta(seconds=10))  # the next round comes 10 s after the last, by the clock
        await eventually(lambda: watermark.hold.outages, what="the clock's own outage known")
    [outage] = watermark.hold.outages
    clock.advance(timedelta(seconds=5))  # restarted 5 s after it, inside the 30 s grace
    async with running_watermark(kafka_bootstrap, engine, [topic], clock=clock) as restarted:
        await rounds_later(restarted, 1)
        assert restarted.hold.outages == (outage,)
        assert restarted.hold.until == outage.began  # no deadline after it began is judged yet
