"""The outbox relay: publishes committed outbox rows to Kafka in id order and marks them sent.

One relay per service schema is active at a time (a transaction-scoped advisory lock), so a
lead's events leave in the order they were committed even when several replicas run. A crash
between the broker's ack and the `sent_at` update re-sends those rows: consumers dedupe by id.
"""
from __future__ import annotations

import asyncio
import zlib

import structlog
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from . import metrics
from .aio import sleep_unless_stopped
from .db import OUTBOX
from .events import CONTENT_TYPE

log = structlog.get_logger()


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        schema: str,
        producer: AIOKafkaProducer,
        wakeup: asyncio.Event,
        *,
        batch_size: int = 500,
        idle_poll_seconds: float = 0.5,
    ) -> None:
        self._engine = engine
        self._table = OUTBOX[schema]
        self._producer = producer
        self._wakeup = wakeup
        self._batch_size = batch_size
        self._idle_poll = idle_poll_seconds
        # Stable across processes: every replica of a service contends for the same lock.
        self._lock_key = zlib.crc32(f"leadsla.outbox.{schema}".encode())

    async def publish_batch(self) -> int:
        """Publish up to one batch; returns how many rows went out."""
        t = self._table
        async with self._engine.begin() as conn:
            if not await conn.scalar(select(func.pg_try_advisory_xact_lock(self._lock_key))):
                return 0
            rows = (
                await conn.execute(
                    select(t.c.id, t.c.topic, t.c.key, t.c.payload)
                    .where(t.c.sent_at.is_(None))
                    .order_by(t.c.id)
                    .limit(self._batch_size)
                )
            ).all()
            if not rows:
                metrics.outbox_pending.set(0)
                return 0
            acks = [
                await self._producer.send(
                    row.topic,
                    value=row.payload,
                    key=row.key.encode(),
                    headers=[("content-type", CONTENT_TYPE)],
                )
                for row in rows
            ]
            await asyncio.gather(*acks)
            await conn.execute(
                update(t).where(t.c.id.in_([r.id for r in rows])).values(sent_at=func.now())
            )
            pending = await conn.scalar(select(func.count()).select_from(t).where(t.c.sent_at.is_(None)))
        metrics.outbox_pending.set(pending or 0)
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            # Cleared before reading so a commit landing mid-batch still wakes the next round.
            self._wakeup.clear()
            try:
                sent = await self.publish_batch()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database down: the rows wait, nothing is lost
                log.warning("outbox.publish_failed", error=str(exc), retry_in=backoff)
                await sleep_unless_stopped(stop, backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if sent < self._batch_size:
                await _wait_any(stop, self._wakeup, self._idle_poll)


async def _wait_any(stop: asyncio.Event, wakeup: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
