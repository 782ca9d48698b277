"""Nothing stops the pipeline: a record the broker refuses, a poison record, generated garbage.
Each case on the real broker and Postgres, each one a defect that once stopped everything."""
from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from services.intake.bootstrap import bootstrap as intake_bootstrap
from shared.consumer import EventConsumer
from shared.db import PROCESSED, deadletters
from shared.events import (
    DEADLETTER_PREFIX_BYTES,
    TOPIC_ROUTING,
    CloudEvent,
    LeadQueued,
    new_event,
)
from shared.eventstore import EVENTS, PARKED
from shared.outbox import OutboxRelay, release_parked, skip_parked
from shared.uow import UnitOfWork
from tests.support import TopicReader, create_topic, eventually

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
CONFIG = """
tiers:
  default: C
  rules: [{tier: A, when: {intent: [demo_request]}}]
"""


def queued(lead_id: str, queue: str) -> CloudEvent:
    return new_event("lead.queued", service="router", lead_id=lead_id, time=NOW,
                     data=LeadQueued(lead_id=lead_id, tier="A", queue=queue, reason="test"))


async def test_a_row_the_broker_refuses_is_parked_and_holds_back_only_its_own_lead(
    engine, producer, kafka_bootstrap
) -> None:
    huge_lead, other_lead = f"lead-{uuid.uuid4()}", f"lead-{uuid.uuid4()}"
    async with (TopicReader(kafka_bootstrap, TOPIC_ROUTING) as reader,
                OutboxRelay(engine, "router", producer, asyncio.Event()) as relay):
        async with UnitOfWork(engine, "router") as uow:
            uow.emit(TOPIC_ROUTING, queued(huge_lead, "x" * 1_200_000))  # over the 1 MiB record limit
            uow.emit(TOPIC_ROUTING, queued(huge_lead, "after-the-huge-one"))
            uow.emit(TOPIC_ROUTING, queued(other_lead, "other-lead"))
            await uow.commit()

        for _ in range(5):  # a relay that retried the huge row forever would publish nothing
            await relay.publish_batch()
        await reader.wait_for(lambda es: any(e.subject == other_lead for e in es), what="the other lead's event")
        health = await relay.read_health()
        await reader.poll()
        assert [e.data["queue"] for e in reader.events(huge_lead)] == []  # its later event waits behind it
        assert health.parked >= 1 and health.pending >= 2

        t, parked = EVENTS["router"], PARKED["router"]
        async with engine.connect() as conn:
            refused = (await conn.execute(select(parked.c.position, parked.c.error).join(
                t, t.c.position == parked.c.position).where(t.c.key == huge_lead).order_by(parked.c.position))).all()
        # The huge row, refused with the broker's error; its lead's later row held behind it.
        assert len(refused) == 2 and "TooLarge" in refused[0].error and refused[1].error is None

        # The operator's way out: retrying sends nothing while the row is still too large; skipping
        # it (it stays in the store) lets the held row go, in order.
        assert await release_parked(engine, "router", producer) == 0
        assert await skip_parked(engine, "router", [refused[0].position]) == 1
        assert await release_parked(engine, "router", producer) == 1
        events = await reader.wait_for(lambda es: any(e.subject == huge_lead for e in es), what="the held row")
        assert (await relay.read_health()).parked == 0
    assert [e.data["queue"] for e in events if e.subject == huge_lead] == ["after-the-huge-one"]


async def run_intake_consumer(make_ctx, kafka_bootstrap, engine, topic: str, group: str, until) -> None:
    """Intake's real submission handler and decoder, consuming a topic of the test's own."""
    ctx = make_ctx("intake", CONFIG)
    real = intake_bootstrap(ctx).subscriptions[0]
    sub = replace(real, group=group, topics=(topic,))
    consumer = EventConsumer(sub, service="intake", bootstrap=kafka_bootstrap, engine=engine,
                             relay_wakeup=asyncio.Event(), clock=ctx.clock, projection=ctx.projection)
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        await until()
    finally:
        stop.set()
        await running  # it must still be alive to stop cleanly: a crashed consumer raises here


async def dead_lettered_offsets(engine, topic: str, kind: str = "") -> set[tuple[int, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(deadletters.c.partition, deadletters.c.offset)
                                  .where(deadletters.c.topic == topic, deadletters.c.error.startswith(kind)))
        return {(r.partition, r.offset) for r in rows}


async def handled_count(engine, group: str) -> int:
    """Decoded records the consumer group took in: handled, or dead-lettered by their handler."""
    t = PROCESSED["intake"]
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(t).where(
            t.c.consumer == group, ~t.c.event_id.startswith("deadletter:")))


async def lead_received_for(engine, email: str) -> bool:
    t = EVENTS["intake"]
    async with engine.connect() as conn:
        return bool(await conn.scalar(select(func.count()).select_from(t).where(
            t.c.event_type == "lead.received", t.c.payload.like(f'%"{email}"%'.encode()))))


async def test_poison_and_oversized_records_are_dead_lettered_and_the_next_lead_goes_through(
    make_ctx, kafka_bootstrap, engine, producer
) -> None:
    topic = await create_topic(kafka_bootstrap, partitions=1)
    huge_email = f"{uuid.uuid4().hex[:8]}@example.com"
    huge_int = json.dumps({"contact": {"email": huge_email}, "intent": {"type": "demo_request"},
                           "score": "DIGITS"}).replace('"DIGITS"', "9" * 5000).encode()  # a lead: kept as sent
    deep = b"[" * 100_000 + b"]" * 100_000
    oversized = json.dumps({"contact": {"email": "big@example.com"}, "intent": {"type": "trial"},
                            "custom_fields": {"blob": "x" * 999_000}}).encode()
    good = json.dumps({"contact": {"email": f"{uuid.uuid4().hex[:8]}@example.com"},
                       "intent": {"type": "demo_request"}}).encode()
    good_email = json.loads(good)["contact"]["email"]
    for value in (huge_int, deep, oversized, good):
        await producer.send_and_wait(topic, value)

    async def all_done() -> bool:
        return (len(await dead_lettered_offsets(engine, topic)) == 2 and await lead_received_for(engine, good_email)
                and await lead_received_for(engine, huge_email))

    await run_intake_consumer(make_ctx, kafka_bootstrap, engine, topic, f"test-intake-{uuid.uuid4().hex[:6]}",
                              lambda: eventually(all_done, timeout=60, what="two dead letters and two leads"))

    assert await dead_lettered_offsets(engine, topic) == {(0, 1), (0, 2)}
    async with engine.connect() as conn:
        kept = (await conn.execute(select(deadletters.c.original, deadletters.c.id, deadletters.c.error)
                                   .where(deadletters.c.topic == topic).order_by(deadletters.c.offset))).all()
        letters = [CloudEvent.from_bytes(p) for (p,) in (await conn.execute(
            select(EVENTS["intake"].c.payload).where(EVENTS["intake"].c.event_type == "deadletter",
                                                     EVENTS["intake"].c.payload.like(f'%"{topic}"%'.encode()))))]
    assert [row.original for row in kept] == [deep, oversized]  # whole, in Postgres
    assert "too large" in kept[1].error
    by_offset = {e.data["offset"]: e for e in letters}
    big = by_offset[2]
    assert big.data["truncated"] is True and big.data["original_size"] == len(oversized)
    assert base64.b64decode(big.data["original_bytes_b64"]) == oversized[:DEADLETTER_PREFIX_BYTES]
    assert big.data["deadletter_id"] == kept[1].id
    assert all(len(e.to_bytes()) < 200_000 for e in letters)  # every dead letter fits the broker


def _json_values():
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=10), inner, max_size=4), max_leaves=20)


def _lead_like():
    contact = st.fixed_dictionaries({}, optional={
        "email": st.sampled_from(["a@example.com", "not-an-email", "", None]) | st.text(max_size=20),
        "phone": st.sampled_from(["+14155550100", "020 7946 0958", "12"]) | st.integers(),
        "country": st.sampled_from(["US", "GB", "Deutschland", "xx"]) | st.integers(),
    })
    return st.fixed_dictionaries({"contact": contact | _json_values()}, optional={
        "intent": st.fixed_dictionaries({"type": st.sampled_from(["demo_request", "trial"]) | st.text()})
        | _json_values(),
        "score": st.integers(min_value=-10**50, max_value=10**50) | st.text(max_size=5) | st.floats(),
        "submitted_at": st.sampled_from(["2026-11-17T09:00:00Z", "yesterday", "2026-11-17T09:00:00"]),
        "specversion": st.sampled_from(["1.0", "0.3"]),
        "id": st.text(max_size=5),
        "data": _json_values(),
    })


def generated_records(count: int) -> list[bytes]:
    """Bytes, arbitrary JSON and lead-shaped JSON, drawn by hypothesis (derandomized: repeatable)."""
    drawn: list[bytes] = []
    record = (st.binary(max_size=200)
              | _json_values().map(lambda v: json.dumps(v).encode())
              | _lead_like().map(lambda v: json.dumps(v).encode()))

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(record)
    def draw(value: bytes) -> None:
        drawn.append(value)

    draw()
    return drawn


async def test_generated_garbage_never_stops_intake_and_every_record_has_one_outcome(
    make_ctx, kafka_bootstrap, engine, producer
) -> None:
    topic = await create_topic(kafka_bootstrap, partitions=2)
    values = generated_records(150)
    # Known-good leads between the generated records: each must come out as a lead.
    good = list(range(0, len(values), 10))
    for i in good:
        values.insert(i, json.dumps({"contact": {"email": f"fuzz-{i}-{uuid.uuid4().hex[:6]}@example.com"},
                                     "intent": {"type": "demo_request"}}).encode())
    emails = [json.loads(values[i])["contact"]["email"] for i in good]
    for i, value in enumerate(values):
        await producer.send(topic, value, key=str(i).encode())
    await producer.flush()
    group = f"test-intake-{uuid.uuid4().hex[:6]}"

    async def all_done() -> bool:
        undecodable = await dead_lettered_offsets(engine, topic, "undecodable")
        return len(undecodable) + await handled_count(engine, group) == len(values)

    await run_intake_consumer(make_ctx, kafka_bootstrap, engine, topic, group,
                              lambda: eventually(all_done, timeout=120, what="every generated record handled"))
    # Every record was either handled or dead-lettered (all_done), every good one became a lead,
    # and the consumer is still alive (run_intake_consumer stops it cleanly).
    assert [await lead_received_for(engine, email) for email in emails] == [True] * len(emails)
    assert await dead_lettered_offsets(engine, topic)
