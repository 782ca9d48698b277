"""consumer_lag tells the truth when it matters most: while a consumer is stuck."""
from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from shared import metrics
from shared.clock import SystemClock
from shared.consumer import EventConsumer, Subscription
from shared.events import CloudEvent
from shared.uow import UnitOfWork
from tests.support import create_topic, eventually


def lag(topic: str, group: str) -> float | None:
    return REGISTRY.get_sample_value("leadsla_consumer_lag", {"topic": topic, "group": group})


async def test_lag_grows_while_the_consumer_is_stuck_and_falls_when_it_moves_again(
    engine, producer, kafka_bootstrap
) -> None:
    topic = await create_topic(kafka_bootstrap, 1)
    group = f"test-lag-{uuid.uuid4().hex[:6]}"
    unstuck = asyncio.Event()
    handled: list[str] = []

    async def handler(uow: UnitOfWork, event: CloudEvent) -> None:
        await unstuck.wait()  # e.g. a handler waiting on a lock that never comes
        handled.append(event.id)

    consumer = EventConsumer(Subscription(group, (topic,), {}, otherwise=handler), service="reporting", bootstrap=kafka_bootstrap,
                             engine=engine, relay_wakeup=asyncio.Event(), clock=SystemClock(), lag_interval=0.2)
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        events = [CloudEvent(id=str(uuid.uuid4()), source="test", type="test.lag", subject="l",
                             time=SystemClock().now()) for _ in range(6)]
        for event in events:
            await producer.send_and_wait(topic, event.to_bytes(), key=b"l")
        # Nothing is handled, nothing committed: the lag still reports all six records.
        await eventually(lambda: lag(topic, group) == 6, timeout=60, what="lag 6 while stuck")
        assert handled == []
        unstuck.set()
        await eventually(lambda: lag(topic, group) == 0, timeout=60, what="lag back to 0")
        assert len(handled) == 6
    finally:
        unstuck.set()
        stop.set()
        await running


async def test_a_backlog_sent_in_big_batches_is_all_counted_as_lag(engine, kafka_bootstrap) -> None:
    """A CRM back-fill produced with batching: the broker's end offset can stop at the last batch's
    start (3,000 records read as 2,961; one batch of them read as 1), so an SRE saw no backlog."""
    topic = await create_topic(kafka_bootstrap, 1)
    group = f"test-lag-{uuid.uuid4().hex[:6]}"
    unstuck = asyncio.Event()

    async def handler(uow: UnitOfWork, event: CloudEvent) -> None:
        await unstuck.wait()

    consumer = EventConsumer(Subscription(group, (topic,), {}, otherwise=handler), service="reporting",
                             bootstrap=kafka_bootstrap, engine=engine, relay_wakeup=asyncio.Event(),
                             clock=SystemClock(), lag_interval=0.2)
    batching = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=100, max_batch_size=1 << 20)
    await batching.start()
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        event = CloudEvent(id=str(uuid.uuid4()), source="test", type="test.lag", subject="l", time=SystemClock().now())
        sent = [await batching.send(topic, event.to_bytes(), key=b"l") for _ in range(3000)]
        await asyncio.gather(*sent)
        await eventually(lambda: lag(topic, group) == 3000, timeout=60,
                         what="lag 3000 while stuck")
    finally:
        unstuck.set()
        stop.set()
        await running
        await batching.stop()


async def test_a_topic_whose_partitions_went_to_another_member_stops_reporting_this_member_s_lag(engine) -> None:
    """After a rebalance took a topic's partitions away, its last figure stood for ever: a max over
    the group's members then showed lag nobody had. (An assignment without that topic stands in
    for the rebalance: two members of a group on one broker take a rejoin of several seconds.)"""
    group, topic = f"test-lag-{uuid.uuid4().hex[:6]}", f"gone-{uuid.uuid4().hex[:6]}"
    consumer = EventConsumer(Subscription(group, (topic,), {}), service="reporting", bootstrap="127.0.0.1:9",
                             engine=engine, relay_wakeup=asyncio.Event(), clock=SystemClock())

    class NoPartitions:
        def assignment(self) -> set:
            return set()

    metrics.consumer_lag.labels(topic, group).set(42)
    await consumer._report_lag(NoPartitions())  # type: ignore[arg-type]
    assert lag(topic, group) is None
