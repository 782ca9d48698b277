"""The outbox relay: publishes committed outbox rows to Kafka in id order and marks them sent.

One relay per service schema is active at a time (a transaction-scoped advisory lock), so a
lead's events leave in the order they were committed even when several replicas run. A crash
between the broker's ack and the `sent_at` update re-sends those rows: consumers dedupe by id.

A row the broker refuses for good (larger than its record limit, say) is parked with the
error instead of being retried forever: it holds back only the later rows of its own key
(one lead's events stay in order), never other leads. Parked rows show in
`leadsla_outbox_parked`, in `/readyz` and in an alert; an operator releases them with
`leadsla outbox retry`.
"""
from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from . import metrics
from .aio import next_backoff, sleep_unless_stopped
from .db import OUTBOX
from .events import CONTENT_TYPE

log = structlog.get_logger()

# Errors about the record itself: sending it again can never succeed.
PERMANENT_SEND_ERRORS = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TypeError,
    ValueError,
)


class _Held:
    """A row not sent this round because an earlier row of its key was refused."""


_HELD = _Held()


@dataclass(frozen=True)
class OutboxHealth:
    pending: int = 0
    parked: int = 0
    oldest_pending_seconds: float = 0.0


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
        stuck_after_seconds: float = 60.0,
    ) -> None:
        self._engine = engine
        self._schema = schema
        self._table = OUTBOX[schema]
        self._producer = producer
        self._wakeup = wakeup
        self._batch_size = batch_size
        self._idle_poll = idle_poll_seconds
        self.stuck_after_seconds = stuck_after_seconds
        # Stable across processes: every replica of a service contends for the same lock.
        self._lock_key = zlib.crc32(f"leadsla.outbox.{schema}".encode())
        self.health = OutboxHealth()
        self._health_read_at = 0.0

    def problem(self) -> str | None:
        """Why the relay is not keeping up, for `/readyz`; None when it is."""
        if self.health.oldest_pending_seconds > self.stuck_after_seconds:
            return (f"stuck: {self.health.pending} rows pending, oldest "
                    f"{self.health.oldest_pending_seconds:.0f}s")
        return None

    async def publish_batch(self) -> int:
        """Publish up to one batch; returns how many rows went out (or were parked)."""
        t = self._table
        parked = t.alias("parked")
        async with self._engine.begin() as conn:
            if not await conn.scalar(select(func.pg_try_advisory_xact_lock(self._lock_key))):
                return 0
            earlier_row_parked = exists().where(and_(
                parked.c.key == t.c.key, parked.c.id < t.c.id,
                parked.c.parked_at.is_not(None), parked.c.sent_at.is_(None)))
            rows = (
                await conn.execute(
                    select(t.c.id, t.c.topic, t.c.key, t.c.payload)
                    .where(t.c.sent_at.is_(None), t.c.parked_at.is_(None), ~earlier_row_parked)
                    .order_by(t.c.id)
                    .limit(self._batch_size)
                )
            ).all()
            if not rows:
                return 0
            outcomes = await self._send_in_order(rows)
            sent = [row.id for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
            refused = [(row, outcome) for row, outcome in zip(rows, outcomes, strict=True)
                       if isinstance(outcome, PERMANENT_SEND_ERRORS)]
            failed = [o for o in outcomes if isinstance(o, BaseException)
                      and not isinstance(o, PERMANENT_SEND_ERRORS)]
            if sent:
                await conn.execute(update(t).where(t.c.id.in_(sent)).values(sent_at=func.now()))
            for row, error in refused:
                await conn.execute(update(t).where(t.c.id == row.id).values(
                    parked_at=func.now(), error=f"{type(error).__name__}: {error}"[:2000]))
                log.error("outbox.parked", schema=self._schema, row_id=row.id, topic=row.topic,
                          size=len(row.payload), error=type(error).__name__)
        if failed:
            # Broker down or slow: whatever was acked is recorded; the rest goes again after a backoff.
            raise failed[0]
        return len(sent) + len(refused)

    async def _send_in_order(self, rows) -> list[BaseException | None | _Held]:
        """Hand the rows to the producer in id order, then wait for every ack. A row refused on the
        way in holds back the later rows of its key in this batch (they wait for the next round,
        behind the parked row)."""
        refused_keys: set[str] = set()
        outcomes: list = []
        for row in rows:
            if row.key in refused_keys:
                outcomes.append(_HELD)
                continue
            try:
                outcomes.append(await self._producer.send(
                    row.topic, value=row.payload, key=row.key.encode(), headers=[("content-type", CONTENT_TYPE)]))
            except Exception as exc:
                if isinstance(exc, PERMANENT_SEND_ERRORS):
                    refused_keys.add(row.key)
                outcomes.append(exc)
        acks = [o for o in outcomes if isinstance(o, asyncio.Future)]
        settled = iter(await asyncio.gather(*acks, return_exceptions=True))
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, asyncio.Future):  # acked (None) or the broker's error
                result = next(settled)
                outcomes[i] = result if isinstance(result, BaseException) else None
        return outcomes

    async def read_health(self) -> OutboxHealth:
        """Pending and parked rows counted from the table, so the figures hold whatever the
        relay's last send did."""
        t = self._table
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                select(
                    func.count().filter(t.c.parked_at.is_(None)),
                    func.count().filter(t.c.parked_at.is_not(None)),
                    func.extract("epoch", func.now() - func.min(t.c.created_at).filter(t.c.parked_at.is_(None))),
                ).where(t.c.sent_at.is_(None))
            )).one()
        self.health = OutboxHealth(pending=row[0] + row[1], parked=row[1], oldest_pending_seconds=float(row[2] or 0))
        metrics.outbox_pending.set(self.health.pending)
        metrics.outbox_parked.set(self.health.parked)
        metrics.outbox_oldest_pending_age.set(self.health.oldest_pending_seconds)
        return self.health

    async def _refresh_health(self, every: float = 1.0) -> None:
        if time.monotonic() - self._health_read_at < every:
            return
        self._health_read_at = time.monotonic()
        try:
            await self.read_health()
        except Exception as exc:  # the database being down shows in /readyz on its own
            log.debug("outbox.health_unreadable", error=type(exc).__name__)

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
                log.warning("outbox.publish_failed", schema=self._schema, error=type(exc).__name__,
                            retry_in=backoff)
                await self._refresh_health()
                await sleep_unless_stopped(stop, backoff)
                backoff = next_backoff(backoff, cap=5.0)
                continue
            await self._refresh_health()
            if sent < self._batch_size:
                await _wait_any(stop, self._wakeup, self._idle_poll)


async def _wait_any(stop: asyncio.Event, wakeup: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def release_parked(engine: AsyncEngine, schema: str) -> int:
    """Operator action: give every parked row of `schema` another try; returns how many."""
    t = OUTBOX[schema]
    async with engine.begin() as conn:
        result = await conn.execute(
            update(t).where(t.c.parked_at.is_not(None), t.c.sent_at.is_(None)).values(parked_at=None)
        )
    return result.rowcount
