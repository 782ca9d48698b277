"""The relay: publishes a service's event store to Kafka in position order and keeps the
position it has published up to (`<schema>.relay_position`).

One relay per service schema is active at a time (a session advisory lock, held on the relay's own
connection for as long as it lives), so a lead's events leave in the order they were appended even
when several replicas run. Appends
commit in position order (see eventstore), so the cursor never passes a row still to come. A
crash between the broker's ack and the position update re-sends those rows: consumers dedupe by
id.

The rows this process commits need not be read back: the unit of work hands them to the relay
(`RelayWakeup`) with the last position committed before them, and the relay sends them from
memory when nothing it has not seen lies between (it reads the store otherwise, and always while
any row is parked).

A row the broker refuses for good (larger than its record limit, say) is parked with the
error instead of being retried forever: it holds back only the later rows of its own key (one
lead's events stay in order), never other leads. (The relay sends record batches it builds
itself: a batch the broker refuses parks every row in it; a row too large is refused before it
is sent.) Parked rows show in `leadsla_outbox_parked`, in `/readyz` and in an alert; an
operator sends them again with `leadsla outbox retry`.
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
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from sqlalchemy import BigInteger, bindparam, case, delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import metrics
from .aio import run_loop
from .bus import MAX_REQUEST_BYTES
from .db import application_name
from .events import CONTENT_TYPE
from .eventstore import EVENTS, PARKED, RELAY, Appended, StoreRow
from .tracing import record_headers

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


@dataclass(eq=False)
class _Batch:
    """A record batch the relay builds for one topic partition; its future, once handed to the
    producer, is every one of its records' ack."""
    builder: BatchBuilder
    future: asyncio.Future | None = None


_PARTITIONER = DefaultPartitioner()  # the producer's own: a key's records land where `send` puts them


async def enqueue_in_order(producer: AIOKafkaProducer, rows, refused_keys: set[str]) -> list:
    """Hand stored rows to the producer in position order, without waiting for acks: per row, its
    batch (whose ack is the row's), the error, or held. A row refused on the way in, or whose key
    is in `refused_keys` (a parked row), holds back the later rows of its key, here and in later
    calls given the same set (one lead's events stay in order).

    The relay fills the producer's record batches itself, a partition's rows in order, as
    `producer.send` would (the same partitioner, size limit and one batch per partition waiting
    to go), without `send`'s per-record coroutine, partition lookup and future: those were most
    of its cost. A batch the broker refuses for good fails every row in it."""
    outcomes: list = []
    partitions: dict[str, list[int]] = {}
    filling: dict[tuple[str, int], _Batch] = {}
    for row in rows:
        if row.key in refused_keys:
            outcomes.append(_HELD)
            continue
        key = row.key.encode() if row.key else None  # an event of no lead (a dead letter without a key)
        headers = record_headers(row.payload, CONTENT_TYPE)
        try:
            if DefaultRecordBatchBuilder.estimate_size_in_bytes(key, row.payload, headers) > MAX_REQUEST_BYTES:
                raise MessageSizeTooLargeError(f"{len(row.payload)} bytes: larger than the largest request")
            topic_partitions = partitions.get(row.topic)
            if topic_partitions is None:
                topic_partitions = partitions[row.topic] = sorted(await producer.partitions_for(row.topic))
        except Exception as exc:
            if isinstance(exc, PERMANENT_SEND_ERRORS):
                refused_keys.add(row.key)
            outcomes.append(exc)
            continue
        tp = (row.topic, _PARTITIONER(key, topic_partitions, topic_partitions))
        batch = filling.get(tp)
        if batch is None:
            batch = filling[tp] = _Batch(producer.create_batch())
        if batch.builder.append(timestamp=None, key=key, value=row.payload, headers=headers) is None:  # full
            await _hand_over(producer, tp, batch)
            batch = filling[tp] = _Batch(producer.create_batch())
            batch.builder.append(timestamp=None, key=key, value=row.payload, headers=headers)  # a first always fits
        outcomes.append(batch)
    for tp, batch in filling.items():
        await _hand_over(producer, tp, batch)
    return outcomes


async def _hand_over(producer: AIOKafkaProducer, tp: tuple[str, int], batch: _Batch) -> None:
    batch.builder.close()
    batch.future = await producer.send_batch(batch.builder, tp[0], partition=tp[1])


async def settle(outcomes: list) -> list[BaseException | None | _Held]:
    """Wait for every ack of `enqueue_in_order`'s outcomes: per row, None (acked), the error, or held."""
    # Awaited one by one: most are done when reached (no suspension), and a batch's rows share one.
    results: list[BaseException | None | _Held] = []
    for outcome in outcomes:
        if isinstance(outcome, _Batch):
            try:
                await outcome.future
                outcome = None  # acked
            except Exception as exc:  # the broker's error for this record's batch
                outcome = exc
        results.append(outcome)
    return results


async def send_in_order(producer: AIOKafkaProducer, rows, held_keys: set[str]) -> list[BaseException | None | _Held]:
    """`enqueue_in_order`, then wait for every ack."""
    return await settle(await enqueue_in_order(producer, rows, set(held_keys)))


class RelayWakeup(asyncio.Event):
    """The relay's wake-up, which also carries the rows this process committed (see
    `OutboxRelay._handed`). What the relay has not taken is bounded: past `keep_rows` rows it
    forgets them and reads the store (a standby replica's relay, a relay stuck on the broker)."""

    def __init__(self, keep_rows: int = 10_000) -> None:
        super().__init__()
        self.appends: list[Appended] = []
        self._keep_rows = keep_rows
        self._rows = 0

    def committed(self, appended: Appended) -> None:
        if self._rows + len(appended.rows) > self._keep_rows:
            self.forget()
        self.appends.append(appended)
        self._rows += len(appended.rows)
        self.set()

    def taken(self, count: int) -> None:
        """The first `count` appends are the relay's now."""
        self._rows -= sum(len(a.rows) for a in self.appends[:count])
        del self.appends[:count]

    def forget(self) -> None:
        self.appends.clear()
        self._rows = 0


@dataclass
class _InFlight:
    """A batch handed to the producer whose acks are still to come."""
    rows: list
    sent: list
    outcomes: list


def _refusal(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        schema: str,
        producer: AIOKafkaProducer,
        wakeup: asyncio.Event,
        *,
        batch_size: int = 2000,
        # Batches per transaction (pipelined); a crash re-sends at most this many (consumers dedupe).
        window: int = 8,
        idle_poll_seconds: float = 0.5,
        stuck_after_seconds: float = 60.0,
    ) -> None:
        self._engine = engine
        self._schema = schema
        self._table = EVENTS[schema]
        self._producer = producer
        self._wakeup = wakeup
        self._batch_size = batch_size
        self._window = window
        self._idle_poll = idle_poll_seconds
        self.stuck_after_seconds = stuck_after_seconds
        # Stable across processes: every replica of a service contends for the same lock.
        self._lock_key = zlib.crc32(f"leadsla.outbox.{schema}".encode())
        self.health = OutboxHealth()
        self._health_read_at = 0.0
        self._first_read, self._next_read = self._reads()
        parked = PARKED[schema]
        self._take_lock = select(case((func.pg_try_advisory_lock(self._lock_key), func.set_config(
            "application_name", f"{application_name(schema)}-relay", False))),
            ~exists(select(parked.c.position)))
        self._conn: AsyncConnection | None = None  # holds the lock while this relay is the active one
        # While the lock is held: the position read up to (None: read the published one from the
        # store), and whether the store has no parked row (rows handed over are sent only then).
        self._cursor: int | None = None
        self._none_parked = False
        self.handed_rows = 0  # rows sent as handed over, never read back (a figure for tests)
        relay = RELAY[schema]
        position = bindparam("position", type_=BigInteger)
        self._move = pg_insert(relay).values(id=1, published_position=position).on_conflict_do_update(
            index_elements=[relay.c.id], set_={"published_position": position, "updated_at": func.now()})

    def problem(self) -> str | None:
        """Why the relay is not keeping up, for `/readyz`; None when it is."""
        if self.health.oldest_pending_seconds > self.stuck_after_seconds:
            return (f"stuck: {self.health.pending} rows pending, oldest "
                    f"{self.health.oldest_pending_seconds:.0f}s")
        return None

    async def publish_batch(self) -> int:
        """Publish the store's next rows after the published position; returns how many went
        out (or were parked). Up to `window` batches go in one round, pipelined: the next batch is
        read and handed to the producer while the acks of the one before are on their way, so the
        producer never waits for the database nor the database for the broker. A next batch is
        read when the last one was full, or when a commit woke the relay since the last read (rows
        committed meanwhile go out at once, not after this round's end). The position moves once,
        at the end of the round.

        Every statement runs on the relay's own connection, outside any transaction: each read is
        one round trip, and the position's move another. What a crash can leave behind is a round
        published (or parked) and its position not moved: those rows go again (consumers dedupe by
        id; a parked row is parked again, no more than once)."""
        conn = await self._connection()
        if conn is None:
            if isinstance(self._wakeup, RelayWakeup):
                self._wakeup.forget()  # the active relay reads them from the store
            return 0  # another replica's relay holds the lock
        try:
            return await self._publish_round(conn)
        except Exception:
            await self.close()  # a connection in doubt goes, and the lock with it
            raise

    async def _connection(self) -> AsyncConnection | None:
        """The relay's connection, holding the relay's lock; None when another relay holds it."""
        if self._conn is None:
            conn = await self._engine.connect()
            try:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                # The lock, and only with it the connection's name: the SLA clock's watermark waits
                # for a producer's open transactions (they may hold stamped events), and the relay's
                # statements stamp nothing. A connection without the lock goes back to the pool as it was.
                named, self._none_parked = (await conn.execute(self._take_lock)).one()
                if named is None:
                    await conn.close()
                    return None
            except BaseException:
                await conn.invalidate()
                raise
            self._conn = conn
        return self._conn

    async def __aenter__(self) -> OutboxRelay:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Let the lock go: the connection is closed, not pooled (it holds the lock and its name)."""
        conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            await conn.invalidate()

    async def _publish_round(self, conn: AsyncConnection) -> int:
        rows = await self._read(conn, after=self._cursor)
        if not rows:
            return 0
        refused_keys: set[str] = set()  # keys with a parked row: their later rows are held
        in_flight: _InFlight | None = None
        published, published_to, batches, last = 0, 0, 0, 0
        while rows or in_flight:
            current = None
            if rows:
                batches += 1
                refused_keys |= {r.key for r in rows if r.held}
                sent = [r for r in rows if r.topic is not None]
                current = _InFlight(rows, sent, await enqueue_in_order(self._producer, sent, refused_keys))
                full, last, rows = len(rows) >= self._batch_size, rows[-1].position, []
                if batches < self._window and (full or self._woken()):
                    rows = await self._read(conn, after=last)
            if in_flight:
                await self._settle(conn, in_flight, refused_keys, also_pending=current)
                published += len(in_flight.rows)
                published_to = in_flight.rows[-1].position
            in_flight = current
            if not rows and batches < self._window and self._woken():
                rows = await self._read(conn, after=last)
        if published:
            await conn.execute(self._move, {"position": published_to})
        self._cursor = published_to
        return published

    def _woken(self) -> bool:
        """Whether a commit woke the relay since the last read (cleared: the read that follows
        sees that commit; a later one sets it again)."""
        if not self._wakeup.is_set():
            return False
        self._wakeup.clear()
        return True

    async def _read(self, conn, *, after: int | None) -> list:
        """The next rows after `after` (None: after the published position), each saying whether
        its key has a parked row: the rows handed over if they follow on, else from the store (one
        round trip)."""
        if after is None:
            return (await conn.execute(self._first_read)).all()
        handed = self._handed(after)
        if handed:
            self.handed_rows += len(handed)
            return handed
        return (await conn.execute(self._next_read, {"after": after})).all()

    def _handed(self, after: int) -> list[StoreRow]:
        """The rows this process committed after position `after`, when they follow on from it:
        an append whose rows came after `after` and that saw nothing committed past `after`
        before them (the appends of a schema commit in position order, so nothing can commit
        between later). Empty when the store must be read (a gap: another process's rows, or
        an append not handed over yet; a parked row, whose key's later rows must be held)."""
        if not isinstance(self._wakeup, RelayWakeup) or not self._none_parked:
            return []
        appends = self._wakeup.appends
        appends.sort(key=lambda a: a.rows[0].position)  # two commits' callbacks may run out of order
        rows: list[StoreRow] = []
        taken = 0
        for appended in appends:
            if appended.rows[-1].position <= after:
                taken += 1  # already read from the store
                continue
            if appended.committed_before > after or len(rows) >= self._batch_size:
                break
            rows += [r for r in appended.rows if r.position > after]
            after = appended.rows[-1].position
            taken += 1
        self._wakeup.taken(taken)
        return rows

    def _reads(self):
        """The two reads' statements (built once: building one cost more than running it)."""
        t, parked, relay = self._table, PARKED[self._schema], RELAY[self._schema]
        query = (select(t.c.position, t.c.topic, t.c.key, t.c.payload,
                        exists().where(parked.c.key == t.c.key).label("held"))
                 .order_by(t.c.position).limit(self._batch_size))
        published = select(relay.c.published_position).where(relay.c.id == 1).scalar_subquery()
        return (query.where(t.c.position > func.coalesce(published, 0)),
                query.where(t.c.position > bindparam("after", type_=BigInteger)))

    async def _settle(self, conn, batch: _InFlight, refused_keys: set[str], *, also_pending: _InFlight | None) -> None:
        """Wait for a batch's acks and park what the broker refused for good; raise when the broker
        failed (the position stays: the acked rows go again and consumers dedupe by id)."""
        outcomes = await settle(batch.outcomes)
        failed = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, PERMANENT_SEND_ERRORS)]
        if failed:
            if also_pending is not None:  # let the next batch's sends finish before giving up on both
                await settle(also_pending.outcomes)
            raise failed[0]
        to_park = []
        for row, outcome in zip(batch.sent, outcomes, strict=True):
            if isinstance(outcome, PERMANENT_SEND_ERRORS):
                refused_keys.add(row.key)
                to_park.append({"position": row.position, "key": row.key, "error": _refusal(outcome)})
                log.error("outbox.parked", schema=self._schema, position=row.position, topic=row.topic,
                          size=len(row.payload), error=type(outcome).__name__)
            elif outcome is _HELD:
                to_park.append({"position": row.position, "key": row.key, "error": None})
        if to_park:
            self._none_parked = False
            await conn.execute(pg_insert(PARKED[self._schema]).values(to_park).on_conflict_do_nothing())

    async def read_health(self) -> OutboxHealth:
        """Unpublished and parked rows counted from the store, so the figures hold whatever the
        relay's last send did."""
        t, parked, relay = self._table, PARKED[self._schema], RELAY[self._schema]
        async with self._engine.connect() as conn:
            position = select(func.coalesce(func.max(relay.c.published_position), 0)).scalar_subquery()
            pending = (await conn.execute(
                select(func.count(), func.extract("epoch", func.now() - func.min(t.c.recorded_at)))
                .where(t.c.position > position, t.c.topic.is_not(None))
            )).one()
            parked_count = await conn.scalar(select(func.count()).select_from(parked)) or 0
        self._none_parked = self._none_parked or parked_count == 0  # an operator released the last
        self.health = OutboxHealth(pending=pending[0] + parked_count, parked=parked_count,
                                   oldest_pending_seconds=float(pending[1] or 0))
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
        async def publish_round() -> float | None:
            sent = await self.publish_batch()
            await self._refresh_health()
            return 0 if sent >= self._batch_size * self._window else None  # a full window: more is waiting

        try:
            await run_loop("outbox", publish_round, stop, idle=self._idle_poll, wakeup=self._wakeup,
                           after_failure=self._refresh_health, schema=self._schema)
        finally:
            await self.close()


async def release_parked(engine: AsyncEngine, schema: str, producer: AIOKafkaProducer) -> int:
    """Operator action: send every parked row of `schema` again, in position order; rows that go
    out leave the parked table. Returns how many went out (the broker may refuse some again)."""
    t, parked = EVENTS[schema], PARKED[schema]
    async with engine.begin() as conn:
        rows = (await conn.execute(
            select(t.c.position, t.c.topic, t.c.key, t.c.payload)
            .join(parked, parked.c.position == t.c.position).order_by(t.c.position))).all()
        outcomes = await send_in_order(producer, rows, held_keys=set())
        failed = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, PERMANENT_SEND_ERRORS)]
        if failed:
            raise failed[0]  # the broker is away: nothing changes, try again later
        sent = [row.position for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, PERMANENT_SEND_ERRORS):
                await conn.execute(update(parked).where(parked.c.position == row.position)
                                   .values(error=_refusal(outcome), parked_at=func.now()))
        if sent:
            await conn.execute(delete(parked).where(parked.c.position.in_(sent)))
    return len(sent)


async def skip_parked(engine: AsyncEngine, schema: str, positions: list[int]) -> int:
    """Operator action: give up publishing these refused rows (they stay in the store); the rows
    held behind them go with the next `release_parked`. Returns how many were skipped."""
    parked = PARKED[schema]
    async with engine.begin() as conn:
        result = await conn.execute(delete(parked).where(parked.c.position.in_(positions), parked.c.error.is_not(None)))
    return result.rowcount
