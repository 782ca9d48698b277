"""The relay publishes what the store committed, in position order, exactly once per row."""
from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from sqlalchemy import delete, func, select

from shared.events import TOPIC_ROUTING, CloudEvent, LeadQueued, new_event
from shared.eventstore import EVENTS, PARKED, RELAY
from shared.outbox import OutboxRelay, RelayWakeup
from shared.uow import UnitOfWork
from tests.support import TopicReader

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def queued(lead_id: str, n: int):
    return new_event("lead.queued", service="router", lead_id=lead_id, time=NOW,
                     data=LeadQueued(lead_id=lead_id, tier="A", queue=f"q{n}", reason="test"))


async def test_committed_events_are_published_in_order_and_rolled_back_ones_never(
    engine, producer, kafka_bootstrap
) -> None:
    lead = f"lead-{uuid.uuid4()}"
    async with (TopicReader(kafka_bootstrap, TOPIC_ROUTING) as reader,
                OutboxRelay(engine, "router", producer, asyncio.Event()) as relay):
        for n in range(5):
            async with UnitOfWork(engine, "router") as uow:
                uow.emit(TOPIC_ROUTING, queued(lead, n))
                await uow.commit()
        async with UnitOfWork(engine, "router") as uow:
            uow.emit(TOPIC_ROUTING, queued(lead, 99))  # never committed

        while await relay.publish_batch():
            pass
        events = await reader.wait_for(lambda es: len([e for e in es if e.subject == lead]) >= 5,
                                       what="five published events")

    mine = [e for e in events if e.subject == lead]
    assert [e.data["queue"] for e in mine] == ["q0", "q1", "q2", "q3", "q4"]
    assert all(r.key == lead.encode() for r in reader.records if r.key == lead.encode())
    store, relay_row = EVENTS["router"], RELAY["router"]
    async with engine.connect() as conn:
        last = await conn.scalar(select(func.max(store.c.position)).where(store.c.key == lead))
        published = await conn.scalar(select(relay_row.c.published_position))
        stored = await conn.scalar(select(func.count()).select_from(store).where(store.c.key == lead))
    assert published >= last  # the relay's position passed every row of the lead
    assert stored == 5  # published rows stay in the store


async def test_racing_relays_publish_each_row_once(engine, producer, kafka_bootstrap) -> None:
    lead = f"lead-{uuid.uuid4()}"
    async with TopicReader(kafka_bootstrap, TOPIC_ROUTING) as reader:
        async with UnitOfWork(engine, "router") as uow:
            for n in range(50):
                uow.emit(TOPIC_ROUTING, queued(lead, n))
            await uow.commit()
        relays = [OutboxRelay(engine, "router", producer, asyncio.Event(), batch_size=7) for _ in range(3)]

        async def drain(relay: OutboxRelay) -> None:
            for _ in range(40):
                await relay.publish_batch()

        try:
            await asyncio.gather(*(drain(r) for r in relays))
        finally:
            for relay in relays:
                await relay.close()
        await reader.wait_for(lambda es: len([e for e in es if e.subject == lead]) >= 50, what="50 events")
        # Give any duplicate a chance to show up: read until the topic end is reached once more.
        await reader.poll()

    queues = [e.data["queue"] for e in reader.events(lead)]
    assert queues == [f"q{n}" for n in range(50)]


async def test_pipelined_batches_keep_each_leads_order_and_a_refused_row_holds_its_lead_across_batches(
    engine, producer, kafka_bootstrap
) -> None:
    huge, other = f"lead-{uuid.uuid4()}", f"lead-{uuid.uuid4()}"
    async with (TopicReader(kafka_bootstrap, TOPIC_ROUTING) as reader,
                OutboxRelay(engine, "router", producer, asyncio.Event(), batch_size=3, window=3) as relay):
        async with UnitOfWork(engine, "router") as uow:
            uow.emit(TOPIC_ROUTING, queued(huge, 0).model_copy(update={"data": {**queued(huge, 0).data,
                                                                             "reason": "x" * 1_200_000}}))
            for n in range(1, 12):  # batches of 3: the huge lead's later rows fall in later batches
                uow.emit(TOPIC_ROUTING, queued(huge if n % 4 == 0 else other, n))
            await uow.commit()

        while await relay.publish_batch():
            pass
        events = await reader.wait_for(lambda es: len([e for e in es if e.subject == other]) >= 8,
                                       what="the other lead's eight events")
        await reader.poll()

    assert [e.data["queue"] for e in events if e.subject == other] == [f"q{n}" for n in range(1, 12) if n % 4]
    assert reader.events(huge) == []  # every later row of the refused lead waits behind it
    parked = PARKED["router"]
    async with engine.connect() as conn:
        held = (await conn.execute(select(parked.c.error).where(parked.c.key == huge)
                                   .order_by(parked.c.position))).scalars().all()
    assert len(held) == 3 and "TooLarge" in held[0] and held[1:] == [None, None]
    async with engine.begin() as conn:  # leave no parked rows behind for other tests' health figures
        await conn.execute(delete(parked).where(parked.c.key == huge))


async def test_record_batches_the_relay_builds_keep_each_leads_order_and_partition(
    engine, producer, kafka_bootstrap
) -> None:
    """The relay fills the producer's record batches itself: many batches per partition in one
    round, each lead's events in order, and on the partition `producer.send` picks for its key
    (the operator's `leadsla outbox retry` sends that way), headers included."""
    leads = [f"lead-{uuid.uuid4()}" for _ in range(20)]
    async with (TopicReader(kafka_bootstrap, TOPIC_ROUTING) as reader,
                OutboxRelay(engine, "router", producer, asyncio.Event()) as relay):
        async with UnitOfWork(engine, "router") as uow:
            for n in range(400):  # about 300 kB: well past one 16 kB batch per partition
                lead = leads[n % len(leads)]
                uow.emit(TOPIC_ROUTING, queued(lead, n).model_copy(update={"data": {
                    **queued(lead, n).data, "reason": f"{n:04d}" + "x" * 600}}))
            await uow.commit()
        while await relay.publish_batch():
            pass
        plain = {lead: await (await producer.send(TOPIC_ROUTING, queued(lead, -1).to_bytes(), key=lead.encode()))
                 for lead in leads}
        await reader.wait_for(lambda es: len([e for e in es if e.subject in plain]) >= 420, what="420 events")

    for lead in leads:
        records = [r for r in reader.records if r.key == lead.encode()]
        queues = [CloudEvent.from_bytes(r.value).data["queue"] for r in records]
        assert queues == [f"q{n}" for n in range(400) if leads[n % len(leads)] == lead] + ["q-1"]
        assert {r.partition for r in records} == {plain[lead].partition}
        assert all(dict(r.headers)["content-type"] == b"application/cloudevents+json" for r in records[:-1])


async def test_one_relay_publishes_while_it_lives_and_another_takes_over_when_it_is_gone(
    engine, producer, kafka_bootstrap
) -> None:
    """The relay's lock is held on its own connection between rounds: a second relay (another
    replica) publishes nothing until the first one is gone, then everything that was waiting."""
    lead = f"lead-{uuid.uuid4()}"

    async def commit_one(n: int) -> None:
        async with UnitOfWork(engine, "router") as uow:
            uow.emit(TOPIC_ROUTING, queued(lead, n))
            await uow.commit()

    async with (TopicReader(kafka_bootstrap, TOPIC_ROUTING) as reader,
                OutboxRelay(engine, "router", producer, asyncio.Event()) as first,
                OutboxRelay(engine, "router", producer, asyncio.Event()) as second):
        await commit_one(0)
        while await first.publish_batch():
            pass
        await commit_one(1)
        assert await second.publish_batch() == 0  # the first still holds the lock
        await first.close()
        assert await second.publish_batch() >= 1
        await reader.wait_for(lambda es: len([e for e in es if e.subject == lead]) >= 2, what="both events")
    assert [e.data["queue"] for e in reader.events(lead)] == ["q0", "q1"]


async def test_rows_handed_over_at_commit_go_out_in_order_with_foreign_and_concurrent_commits(
    engine, producer, kafka_bootstrap
) -> None:
    """What this process commits is handed to its relay, which sends it without reading it back
    when nothing unseen lies between; a commit from elsewhere (a unit of work without the hand-over),
    a rollback and commits racing each other make it read the store. Every committed event goes out
    once, each lead's in order."""
    wakeup = RelayWakeup()
    leads = [f"lead-{uuid.uuid4()}" for _ in range(4)]
    sent: dict[str, list[int]] = {lead: [] for lead in leads}

    async def commit(lead: str, n: int, *, handed: bool = True) -> None:
        async with UnitOfWork(engine, "router", wakeup if handed else asyncio.Event()) as uow:
            uow.emit(TOPIC_ROUTING, queued(lead, n))
            await uow.commit()
        sent[lead].append(n)

    async with (TopicReader(kafka_bootstrap, TOPIC_ROUTING) as reader,
                OutboxRelay(engine, "router", producer, wakeup) as relay):
        await commit(leads[0], 0)
        while await relay.publish_batch():  # the first round reads the store (nothing seen yet)
            pass
        for n in range(1, 4):  # one after the other: handed over
            await commit(leads[0], n)
            assert await relay.publish_batch() == 1
        assert relay.handed_rows == 3
        await commit(leads[1], 0, handed=False)  # another process's commit: a gap to read
        await commit(leads[0], 4)
        async with UnitOfWork(engine, "router", wakeup) as rolled_back:
            rolled_back.emit(TOPIC_ROUTING, queued(leads[0], 99))
        while await relay.publish_batch():
            pass
        for n in range(5, 15):  # four leads committing at once
            await asyncio.gather(*(commit(lead, n) for lead in leads[1:]), commit(leads[0], n))
            await relay.publish_batch()
        while await relay.publish_batch():
            pass
        await reader.wait_for(lambda es: all(len(reader.events(lead)) >= len(sent[lead]) for lead in leads),
                              what="every committed event")
        await reader.poll()
    for lead in leads:
        assert [int(e.data["queue"][1:]) for e in reader.events(lead)] == sent[lead]
    assert relay.handed_rows > 3  # the racing commits were handed over too, not all read back
    assert not wakeup.appends  # nothing left behind
