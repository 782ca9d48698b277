"""Helpers for tests that talk to the real broker and database."""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import select

from shared.events import CloudEvent, Received
from shared.eventstore import EVENTS

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T] | T], *, timeout: float = 30, what: str = "condition"
) -> T:
    """Poll `probe` (plain or async) until it returns something truthy; fail with `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def assign_all(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of `topic` to a started consumer (no group join); returns them."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - a topic just created or not seen yet
        partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    return tps


class TopicReader:
    """Reads a topic from given offsets with hand-assigned partitions (no group join delay)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self._consumer.start()
        tps = await assign_all(self._consumer, self.topic)
        # Start at the current end: a test sees only what happens after it starts reading.
        for tp, offset in (await self._consumer.end_offsets(tps)).items():
            self._consumer.seek(tp, offset)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._consumer is not None
        await self._consumer.stop()

    async def poll(self) -> list:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=100)
        for records in batch.values():
            self.records.extend(records)
        return self.records

    def events(self, subject: str | None = None) -> list[CloudEvent]:
        parsed = [CloudEvent.from_bytes(r.value) for r in self.records]
        return [e for e in parsed if subject is None or e.subject == subject]

    async def wait_for(self, predicate: Callable[[list[CloudEvent]], bool], timeout: float = 30,
                       what: str = "events") -> list[CloudEvent]:
        async def probe() -> list[CloudEvent] | None:
            await self.poll()
            events = self.events()
            return events if predicate(events) else None

        return await eventually(probe, timeout=timeout, what=what)


async def stored_events(engine, schema: str, key: str, *, published_only: bool = False) -> list[CloudEvent]:
    """The events a service stored for one lead (record key), in store order; `published_only`:
    without the service's internal events (those kept in its store only)."""
    table = EVENTS[schema]
    query = select(table.c.payload).where(table.c.key == key).order_by(table.c.position)
    if published_only:
        query = query.where(table.c.topic.is_not(None))
    async with engine.connect() as conn:
        rows = await conn.execute(query)
        return [CloudEvent.from_bytes(r.payload) for r in rows]


async def published_events(engine, schema: str, key: str) -> list[CloudEvent]:
    """The events a service stored for one lead that go to Kafka (not those kept in the store
    only), in store order."""
    table = EVENTS[schema]
    async with engine.connect() as conn:
        rows = await conn.execute(select(table.c.payload).where(table.c.key == key, table.c.topic.is_not(None))
                                  .order_by(table.c.position))
        return [CloudEvent.from_bytes(r.payload) for r in rows]


async def create_topic(bootstrap: str, partitions: int) -> str:
    """A fresh topic of this test's own."""
    topic = f"test.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def start_group_at_end(bootstrap: str, group: str, topic: str) -> None:
    """Commit `group`'s offsets at `topic`'s current end: a consumer of the group then reads only
    what is published from now on, not what earlier tests left on a shared topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic)
        await consumer.commit(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def handle_event(handlers, uow, event: CloudEvent, deps) -> None:
    """Give `event` to the handler its payload class is mapped to, decoded as the consumer does."""
    received = Received.of(event)
    await handlers[type(received.data)](uow, received, deps)


def service_apps(engine, producer, settings, config_yaml: str, *, key_limits: bool = False) -> dict:
    """Every service's own app (bootstrap + create_app) on one engine, in-process, under one
    configuration: {name: (app, spec)}. `key_limits`: as `leadsla serve` wires each (the spec's)."""
    import importlib

    from services import SERVICE_NAMES
    from shared.clock import SystemClock
    from shared.config import parse_config
    from shared.config_store import ConfigHolder, VersionedConfig
    from shared.http import create_app
    from shared.runtime import ServiceContext, wire

    built = {}
    for name in SERVICE_NAMES:
        ctx = ServiceContext(name=name, settings=settings, engine=engine, producer=producer, clock=SystemClock(),
                             config=ConfigHolder(engine, VersionedConfig(1, parse_config(config_yaml))),
                             relay_wakeup=asyncio.Event())
        spec = wire(ctx, importlib.import_module(f"services.{name}.bootstrap").bootstrap)
        built[name] = (create_app(ctx, spec.routers, spec.on_invalid_request,
                                  key_limits=key_limits and spec.key_limits), spec)
    return built


# What the SLA clock's watermark tests give a transaction in flight (sla_commit_allowance_seconds).
WATERMARK_ALLOWANCE = timedelta(milliseconds=200)


@contextlib.asynccontextmanager
async def running_watermark(kafka_bootstrap: str, engine, topics: list[str],
                            group: str | None = None, clock=None) -> AsyncIterator:
    """The SLA clock's input watermark over `topics`, for intake's store, running in rounds every
    50 ms until the block ends (by `clock`, the system's by default)."""
    from services.sla_clock.watermark import InputWatermark
    from shared.clock import SystemClock

    watermark = InputWatermark(bootstrap=kafka_bootstrap, engine=engine, clock=clock or SystemClock(),
                               group=group or f"wm-{uuid.uuid4().hex[:8]}", topics=topics, producers=["intake"],
                               commit_allowance=WATERMARK_ALLOWANCE, interval=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(watermark.run(stop))
    try:
        yield watermark
    finally:
        stop.set()
        await running
