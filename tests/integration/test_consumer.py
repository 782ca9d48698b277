"""The consumer loop: each event id has its effects once; bad records go to the dead-letter topic
with their bytes and reason, and the consumer goes on."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import func, select, text

from shared.clock import ManualClock
from shared.consumer import EventConsumer, Subscription
from shared.db import PROCESSED, application_name, make_engine
from shared.events import (
    TOPIC_NOTIFICATIONS,
    BadEvent,
    CloudEvent,
    LeadDequeued,
    LeadQueued,
    Received,
    new_event,
)
from shared.eventstore import EVENTS
from shared.uow import UnitOfWork
from tests.support import create_topic, eventually

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


async def test_duplicates_are_ignored_and_bad_records_are_parked(engine, producer, kafka_bootstrap) -> None:
    topic = await create_topic(kafka_bootstrap, partitions=1)
    lead = f"lead-{uuid.uuid4()}"
    handled: list[str] = []

    async def handler(uow: UnitOfWork, received: Received[LeadQueued]) -> None:
        event = received.envelope
        if event.data.get("reason") == "poison":
            raise BadEvent("reason: poison is not allowed")
        handled.append(event.id)
        # An effect that lands in the outbox, so "done once" is visible in the database.
        uow.emit(TOPIC_NOTIFICATIONS, new_event("lead.dequeued", service="notifier", lead_id=lead, time=NOW,
                                                cause=event, data=LeadDequeued(**event.data)))

    def event(reason: str) -> CloudEvent:
        return new_event("lead.queued", service="router", lead_id=lead, time=NOW,
                         data=LeadQueued(lead_id=lead, tier="A", queue="q", reason=reason))

    first, second, poison = event("first"), event("second"), event("poison")
    garbage = b"\x00not a cloudevent"
    for value in (first.to_bytes(), garbage, first.to_bytes(), poison.to_bytes(), second.to_bytes()):
        await producer.send_and_wait(topic, value, key=lead.encode())

    consumer = EventConsumer(Subscription(f"test-{uuid.uuid4().hex[:6]}", (topic,), {LeadQueued: handler}), service="notifier",
                             bootstrap=kafka_bootstrap, engine=engine, relay_wakeup=asyncio.Event(),
                             clock=ManualClock(NOW))
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    outbox = EVENTS["notifier"]

    async def rows() -> list:
        async with engine.connect() as conn:
            # In store order: the relay marks rows published, which moves them in the heap.
            result = await conn.execute(select(outbox.c.event_type, outbox.c.payload)
                                        .where(outbox.c.key == lead).order_by(outbox.c.position))
            found = result.all()
        return found if len(found) >= 4 else []

    found = await eventually(rows, what="two effects and two dead letters")
    stop.set()
    await running

    # A handler may run again when its batch is rolled back and rerun with savepoints (the poison
    # event fails the optimistic run); what it did counts once, in the database.
    assert set(handled) == {first.id, second.id}
    effects = [CloudEvent.from_bytes(p) for t, p in found if t == "lead.dequeued"]
    assert [e.causationid for e in effects] == [first.id, second.id]
    letters = [CloudEvent.from_bytes(p).data for t, p in found if t == "deadletter"]
    assert len(letters) == 2
    by_bytes = {base64.b64decode(d["original_bytes_b64"]): d for d in letters}
    assert by_bytes[garbage]["error"].startswith("undecodable: ")
    assert by_bytes[garbage]["topic"] == topic and by_bytes[garbage]["offset"] == 1
    assert by_bytes[poison.to_bytes()]["error"] == "invalid_data: reason: poison is not allowed"


async def test_members_joining_and_leaving_lose_nothing_and_repeat_nothing(engine, producer, kafka_bootstrap) -> None:
    topic = await create_topic(kafka_bootstrap, partitions=4)
    run = uuid.uuid4().hex[:8]
    group = f"test-rebalance-{run}"

    async def handler(uow: UnitOfWork, received: Received[LeadQueued]) -> None:
        event = received.envelope
        uow.emit(TOPIC_NOTIFICATIONS, new_event("lead.dequeued", service="notifier", lead_id=f"{run}-effect",
                                                time=NOW, cause=event, data=LeadDequeued(**event.data)))

    def member() -> EventConsumer:
        return EventConsumer(Subscription(group, (topic,), {LeadQueued: handler}), service="notifier", bootstrap=kafka_bootstrap,
                             engine=engine, relay_wakeup=asyncio.Event(), clock=ManualClock(NOW))

    async def produce(n: int, start: int) -> set[str]:
        ids = set()
        for i in range(start, start + n):
            event = new_event("lead.queued", service="router", lead_id=f"{run}-{i % 17}", time=NOW,
                              data=LeadQueued(lead_id=f"{run}-{i % 17}", tier="A", queue="q", reason=str(i)))
            await producer.send(topic, event.to_bytes(), key=event.subject.encode())
            ids.add(event.id)
        await producer.flush()
        return ids

    outbox = EVENTS["notifier"]

    async def causes() -> list[str]:
        async with engine.connect() as conn:
            rows = await conn.execute(select(outbox.c.payload).where(outbox.c.key == f"{run}-effect"))
            return [CloudEvent.from_bytes(r.payload).causationid for r in rows]

    first, second = member(), member()
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    running_first = asyncio.create_task(first.run(stop_first))
    expected = await produce(150, 0)
    running_second = asyncio.create_task(second.run(stop_second))  # joins: the group rebalances
    expected |= await produce(150, 150)
    await eventually(lambda: _all_seen(causes, expected), timeout=60, what="every event after the join")

    stop_first.set()  # leaves the group: the second member takes every partition
    await running_first
    expected |= await produce(100, 300)
    await eventually(lambda: _all_seen(causes, expected), timeout=60, what="every event after the leave")
    stop_second.set()
    await running_second

    seen = await causes()
    assert len(seen) == len(set(seen)) == len(expected) == 400


async def _all_seen(causes, expected: set[str]) -> bool:
    return expected <= set(await causes())


async def test_stopping_mid_batch_loses_nothing_and_repeats_nothing(engine, producer, kafka_bootstrap) -> None:
    topic = await create_topic(kafka_bootstrap, partitions=1)
    group = f"test-stop-{uuid.uuid4().hex[:6]}"
    lead = f"lead-{uuid.uuid4()}"
    sent = []
    for n in range(10):
        event = new_event("lead.queued", service="router", lead_id=lead, time=NOW,
                          data=LeadQueued(lead_id=lead, tier="A", queue="q", reason=str(n)))
        await producer.send(topic, event.to_bytes(), key=lead.encode())
        sent.append(event.id)
    await producer.flush()

    handled: list[str] = []
    stop_first = asyncio.Event()

    async def handler(uow: UnitOfWork, received: Received[LeadQueued]) -> None:
        event = received.envelope
        handled.append(event.id)
        if len(handled) == 3:
            stop_first.set()  # shutdown arrives while the fetched batch still holds records

    def member() -> EventConsumer:
        return EventConsumer(Subscription(group, (topic,), {LeadQueued: handler}), service="notifier", bootstrap=kafka_bootstrap,
                             engine=engine, relay_wakeup=asyncio.Event(), clock=ManualClock(NOW))

    await member().run(stop_first)
    # A batch is one transaction: the first member finishes the one it holds, offsets committed.
    assert len(handled) >= 3 and handled == sent[:len(handled)]

    stop_second = asyncio.Event()
    second = asyncio.create_task(member().run(stop_second))
    await eventually(lambda: set(sent) <= set(handled), timeout=30, what="the other seven")
    stop_second.set()
    await second
    assert handled == sent  # nothing lost, nothing twice


async def test_a_record_that_fails_its_batch_at_commit_is_parked_alone_and_the_rest_take_effect(
    engine, producer, kafka_bootstrap
) -> None:
    """A failure no savepoint can contain (a deferred constraint, checked only at commit) fails the
    whole batch; its records then go one by one, so only the culprit is dead-lettered."""
    topic = await create_topic(kafka_bootstrap, partitions=1)
    lead = f"lead-{uuid.uuid4()}"
    table = f"deferred_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            f"CREATE TABLE {table} (id int, CONSTRAINT {table}_once UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)")

    async def handler(uow: UnitOfWork, received: Received[LeadQueued]) -> None:
        event = received.envelope
        if event.data["reason"] == "culprit":  # passes here, fails the transaction's commit
            await uow.conn.exec_driver_sql(f"INSERT INTO {table} VALUES (1), (1)")
        uow.emit(TOPIC_NOTIFICATIONS, new_event("lead.dequeued", service="notifier", lead_id=lead, time=NOW,
                                                cause=event, data=LeadDequeued(**event.data)))

    events = [new_event("lead.queued", service="router", lead_id=lead, time=NOW,
                        data=LeadQueued(lead_id=lead, tier="A", queue="q", reason=reason))
              for reason in ("before", "culprit", "after")]
    for event in events:
        await producer.send(topic, event.to_bytes(), key=lead.encode())
    await producer.flush()

    consumer = EventConsumer(Subscription(f"test-{uuid.uuid4().hex[:6]}", (topic,), {LeadQueued: handler}), service="notifier",
                             bootstrap=kafka_bootstrap, engine=engine, relay_wakeup=asyncio.Event(),
                             clock=ManualClock(NOW))
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    outbox = EVENTS["notifier"]

    async def rows() -> list:
        async with engine.connect() as conn:
            result = await conn.execute(select(outbox.c.event_type, outbox.c.payload)
                                        .where(outbox.c.key == lead).order_by(outbox.c.position))
            found = result.all()
        return found if len(found) >= 3 else []

    found = await eventually(rows, what="two effects and one dead letter")
    stop.set()
    await running
    effects = [CloudEvent.from_bytes(p).causationid for t, p in found if t == "lead.dequeued"]
    assert effects == [events[0].id, events[2].id]
    [letter] = [CloudEvent.from_bytes(p).data for t, p in found if t == "deadletter"]
    assert letter["offset"] == 1 and letter["error"].startswith("handler_error: ")


async def test_a_payload_that_does_not_fit_its_type_is_a_dead_letter_naming_the_field(
    engine, producer, kafka_bootstrap
) -> None:
    """Data is decoded into the payload class before any handler runs: a record whose data does not
    fit never reaches its handler, and its dead letter says which field. A type the subscription
    has no handler for is skipped, whatever its data."""
    topic = await create_topic(kafka_bootstrap, partitions=1)
    lead = f"lead-{uuid.uuid4()}"
    handled: list[LeadQueued] = []

    async def handler(uow: UnitOfWork, received: Received[LeadQueued]) -> None:
        handled.append(received.data)
        uow.emit(TOPIC_NOTIFICATIONS, new_event("lead.dequeued", service="notifier", lead_id=lead, time=NOW,
                                                cause=received.envelope, data=LeadDequeued(**received.envelope.data)))

    good = new_event("lead.queued", service="router", lead_id=lead, time=NOW,
                     data=LeadQueued(lead_id=lead, tier="A", queue="q", reason="good"))
    no_tier = CloudEvent(id=str(uuid.uuid4()), source="leadsla/router", type="lead.queued", subject=lead, time=NOW,
                         data={"lead_id": lead, "queue": "q", "reason": "no tier"})
    not_ours = CloudEvent(id=str(uuid.uuid4()), source="leadsla/router", type="lead.assigned", subject=lead,
                          time=NOW, data={"lead_id": lead})  # invalid too, but nobody here wants it
    after = new_event("lead.queued", service="router", lead_id=lead, time=NOW,
                      data=LeadQueued(lead_id=lead, tier="B", queue="q", reason="after"))
    for event in (good, no_tier, not_ours, after):
        await producer.send(topic, event.to_bytes(), key=lead.encode())
    await producer.flush()

    group = f"test-{uuid.uuid4().hex[:6]}"
    consumer = EventConsumer(Subscription(group, (topic,), {LeadQueued: handler}), service="notifier",
                             bootstrap=kafka_bootstrap, engine=engine, relay_wakeup=asyncio.Event(),
                             clock=ManualClock(NOW))
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    outbox = EVENTS["notifier"]

    async def rows() -> list:
        async with engine.connect() as conn:
            result = await conn.execute(select(outbox.c.event_type, outbox.c.payload)
                                        .where(outbox.c.key == lead).order_by(outbox.c.position))
            found = result.all()
        return found if len(found) >= 3 else []

    found = await eventually(rows, what="two effects and one dead letter")
    await eventually(lambda: consumer_done(engine, group, not_ours.id), what="the unhandled type tracked")
    stop.set()
    await running
    assert [type(p) for p in handled] == [LeadQueued, LeadQueued]
    assert [p.reason for p in handled] == ["good", "after"]
    [letter] = [CloudEvent.from_bytes(p).data for t, p in found if t == "deadletter"]
    assert letter["offset"] == 1
    assert letter["error"].startswith("invalid_data: lead.queued data invalid: tier: ")
    assert base64.b64decode(letter["original_bytes_b64"]) == no_tier.to_bytes()
    assert sorted(t for t, _ in found) == ["deadletter", "lead.dequeued", "lead.dequeued"]


async def consumer_done(engine, group: str, event_id: str) -> bool:
    processed = PROCESSED["notifier"]
    async with engine.connect() as conn:
        found = await conn.scalar(select(processed.c.event_id).where(processed.c.consumer == group,
                                                                     processed.c.event_id == event_id))
    return found is not None


async def test_a_batched_handler_gets_runs_of_consecutive_events_and_a_failing_run_goes_one_by_one(
    engine, producer, kafka_bootstrap
) -> None:
    topic = await create_topic(kafka_bootstrap, partitions=1)
    lead = f"lead-{uuid.uuid4()}"
    runs: list[list[str]] = []
    singles: list[str] = []

    async def run_handler(uow: UnitOfWork, run: list[Received[LeadQueued]]) -> None:
        runs.append([r.envelope.id for r in run])
        if any(r.data.reason == "poison" for r in run):
            raise BadEvent("reason: poison is not allowed")
        for r in run:
            uow.emit(TOPIC_NOTIFICATIONS, new_event("lead.dequeued", service="notifier", lead_id=lead, time=NOW,
                                                    cause=r.envelope, data=LeadDequeued(**r.envelope.data)))

    async def single(uow: UnitOfWork, received: Received[LeadDequeued]) -> None:
        singles.append(received.envelope.id)

    def queued(reason: str) -> CloudEvent:
        return new_event("lead.queued", service="router", lead_id=lead, time=NOW,
                         data=LeadQueued(lead_id=lead, tier="A", queue="q", reason=reason))

    q1, q2, q3, poison, q5 = (queued(r) for r in ("one", "two", "three", "poison", "five"))
    between = new_event("lead.dequeued", service="router", lead_id=lead, time=NOW,
                        data=LeadDequeued(lead_id=lead, tier="A", queue="q", reason="owner_available"))
    # All sent before the consumer starts: its first fetch holds them all, in this order.
    for event in (q1, q2, between, q3, q1, poison, q5):
        await producer.send_and_wait(topic, event.to_bytes(), key=lead.encode())

    sub = Subscription(f"test-{uuid.uuid4().hex[:6]}", (topic,), {LeadDequeued: single},
                       batched={LeadQueued: run_handler})
    consumer = EventConsumer(sub, service="notifier", bootstrap=kafka_bootstrap, engine=engine,
                             relay_wakeup=asyncio.Event(), clock=ManualClock(NOW))
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    outbox = EVENTS["notifier"]

    async def rows() -> list:
        async with engine.connect() as conn:
            # In store order: the relay marks rows published, which moves them in the heap.
            result = await conn.execute(select(outbox.c.event_type, outbox.c.payload)
                                        .where(outbox.c.key == lead).order_by(outbox.c.position))
            found = result.all()
        return found if len(found) >= 5 else []

    found = await eventually(rows, what="four effects and a dead letter")
    stop.set()
    await running

    # Optimistic first: the runs split by the other type, a repeated id left out; the failing
    # run rolls the batch back, and every event then goes alone (under its own savepoint).
    assert runs[:2] == [[q1.id, q2.id], [q3.id, poison.id, q5.id]]
    assert runs[2:] == [[q1.id], [q2.id], [q3.id], [poison.id], [q5.id]]
    assert set(singles) == {between.id}
    effects = [CloudEvent.from_bytes(p) for t, p in found if t == "lead.dequeued"]
    assert [e.causationid for e in effects] == [q1.id, q2.id, q3.id, q5.id]
    assert [t for t, _ in found].count("deadletter") == 1


async def test_a_clean_stop_commits_the_offsets_of_every_handled_record(engine, producer, kafka_bootstrap) -> None:
    """Commits go out one at a time while batches are handled; the batches handled while the last
    one was on its way are committed on the way out, so a restart redelivers nothing."""
    topic = await create_topic(kafka_bootstrap, partitions=2)
    group = f"test-{uuid.uuid4().hex[:6]}"
    handled: list[str] = []

    async def handler(uow: UnitOfWork, received: Received[LeadQueued]) -> None:
        handled.append(received.envelope.id)

    consumer = EventConsumer(Subscription(group, (topic,), {LeadQueued: handler}), service="notifier",
                             bootstrap=kafka_bootstrap, engine=engine, relay_wakeup=asyncio.Event(),
                             clock=ManualClock(NOW))
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(consumer.ready.wait(), 60)
    written: dict[TopicPartition, int] = {}  # partition -> the offset after its last record
    for burst in range(10):  # in bursts: many batches, some handled while a commit is on its way
        sending = []
        for i in range(10):
            lead = f"lead-{burst}-{i}-{uuid.uuid4()}"
            sending.append(await producer.send(topic, new_event(
                "lead.queued", service="router", lead_id=lead, time=NOW,
                data=LeadQueued(lead_id=lead, tier="A", queue="q", reason="no_one_eligible")).to_bytes(),
                key=lead.encode()))
        for stored in await asyncio.gather(*sending):
            tp = TopicPartition(topic, stored.partition)
            written[tp] = max(written.get(tp, 0), stored.offset + 1)
    await eventually(lambda: len(handled) >= 100 or None, what="every record handled")
    stop.set()
    await running

    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        assert {tp: await reader.committed(tp) for tp in written} == written
    finally:
        await reader.stop()


@contextlib.asynccontextmanager
async def _consumer_behind_a_lock(engine, producer, kafka_bootstrap, database_url, *, patience: float):
    """A consumer running with one record to handle, whose handler takes an advisory lock an
    operator's session holds, and whose statements time out after 0.2 s; yields (the name its
    connections go by, the record's event). The lock goes with the block."""
    topic = await create_topic(kafka_bootstrap, partitions=1)
    lead, lock_key = f"lead-{uuid.uuid4()}", uuid.uuid4().int % 1_000_000_000

    async def handler(uow: UnitOfWork, received: Received[LeadQueued]) -> None:
        await uow.conn.execute(select(func.pg_advisory_xact_lock(lock_key)))
        event = received.envelope
        uow.emit(TOPIC_NOTIFICATIONS, new_event("lead.dequeued", service="notifier", lead_id=lead, time=NOW,
                                                cause=event, data=LeadDequeued(**event.data)))

    event = new_event("lead.queued", service="router", lead_id=lead, time=NOW,
                      data=LeadQueued(lead_id=lead, tier="A", queue="q", reason="locked"))
    await producer.send_and_wait(topic, event.to_bytes(), key=lead.encode())
    name = f"locked{uuid.uuid4().hex[:8]}"
    timed = make_engine(database_url, service=name, statement_timeout=0.2)
    consumer = EventConsumer(Subscription(f"test-{uuid.uuid4().hex[:6]}", (topic,), {LeadQueued: handler}),
                             service="notifier", bootstrap=kafka_bootstrap, engine=timed,
                             relay_wakeup=asyncio.Event(), clock=ManualClock(NOW), busy_patience_seconds=patience)
    stop, running = asyncio.Event(), None
    try:
        async with engine.connect() as operator:
            await operator.execute(select(func.pg_advisory_lock(lock_key)))
            running = asyncio.create_task(consumer.run(stop))
            yield application_name(name), event
            await operator.execute(select(func.pg_advisory_unlock(lock_key)))
    finally:
        stop.set()
        if running is not None:
            await running
        await timed.dispose()


async def _timed_out_attempts(engine, application: str) -> int:
    """Attempts that timed out and still wait on a lock server-side: the client gave up on them,
    the server finds out when the lock comes free."""
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                                      "AND wait_event_type = 'Lock'"), {"name": application})


async def _at_least(count: int, found) -> bool:
    return await found >= count


async def _stored(engine, event: CloudEvent) -> list[str]:
    outbox = EVENTS["notifier"]
    async with engine.connect() as conn:
        return list((await conn.execute(select(outbox.c.event_type).where(outbox.c.key == event.subject)
                                        .order_by(outbox.c.position))).scalars())


async def test_a_record_blocked_by_a_lock_another_session_holds_waits_for_it_and_is_not_dead_lettered(
    engine, producer, kafka_bootstrap, database_url
) -> None:
    """The database answers, but the handler's statement keeps timing out behind a lock an
    operator's open transaction holds: the record waits (no dead letter, however many timeouts)
    and takes effect once the lock is gone."""
    async with _consumer_behind_a_lock(engine, producer, kafka_bootstrap, database_url, patience=300) as (
            application, event):
        # Six attempts were as many as a record got before it was dead-lettered.
        await eventually(lambda: _at_least(7, _timed_out_attempts(engine, application)), timeout=60,
                         what="seven timed-out attempts")
        assert await _stored(engine, event) == []
    assert await eventually(lambda: _stored(engine, event), what="the effect") == ["lead.dequeued"]


async def test_a_record_whose_statement_times_out_past_the_patience_is_dead_lettered_and_the_consumer_goes_on(
    engine, producer, kafka_bootstrap, database_url
) -> None:
    async with _consumer_behind_a_lock(engine, producer, kafka_bootstrap, database_url, patience=1.0) as (_, event):
        stored = await eventually(lambda: _stored(engine, event), timeout=60, what="a dead letter")
    assert stored == ["deadletter"]


async def test_a_consumer_behind_a_backlog_does_not_say_it_is_caught_up(engine, producer, kafka_bootstrap) -> None:
    """`caught_up_at` is when the consumer last knew it had handled everything on its partitions
    (intake beats to the SLA clock only while its raw-topic consumers are so): a backlog it is
    still working through, fetched in batches, keeps it where it was before the backlog came."""
    import time

    topic = await create_topic(kafka_bootstrap, partitions=1)
    lead = f"lead-{uuid.uuid4()}"
    gate, entered = asyncio.Event(), asyncio.Event()

    async def handler(uow: UnitOfWork, received: Received[LeadQueued]) -> None:
        entered.set()
        await gate.wait()  # a slow handler: the backlog stays a backlog until the gate opens

    consumer = EventConsumer(Subscription(f"test-{uuid.uuid4().hex[:6]}", (topic,), {LeadQueued: handler}),
                             service="notifier", bootstrap=kafka_bootstrap, engine=engine,
                             relay_wakeup=asyncio.Event(), clock=ManualClock(NOW))
    assert consumer.caught_up_at is None
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(lambda: consumer.caught_up_at is not None, what="an empty fetch: caught up")
        before = time.monotonic()
        for i in range(1500):  # more than one fetch holds (max_poll_records 1000)
            event = new_event("lead.queued", service="router", lead_id=lead, time=NOW,
                              data=LeadQueued(lead_id=lead, tier="A", queue="q", reason=f"r{i}"))
            await producer.send(topic, event.to_bytes(), key=lead.encode())
        await producer.flush()
        # While the handler is held on the backlog, the consumer does not claim to have caught up.
        await eventually(entered.is_set, what="the backlog's first batch in the handler")
        assert consumer.caught_up_at < before
        produced = time.monotonic()
        gate.set()
        await eventually(lambda: consumer.caught_up_at > produced, timeout=60,
                         what="caught up again once the backlog is handled")
    finally:
        gate.set()
        stop.set()
        await running
