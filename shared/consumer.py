"""The consumer loop: a Kafka consumer group with manual commits and per-event idempotency.

For every fetched batch, in one Postgres transaction: record the batch's (consumer, event id)
pairs in `processed_events` (the ones already there are skipped), run each new event's handler
under a savepoint, write the outbox rows. Postgres commits first, Kafka offsets after, so a crash
in between only redelivers records whose ids are already recorded. A record that can never be
processed goes to `leads.deadletter` (through the outbox, in the same transaction) with its
bytes and the reason; the consumer goes on. A database outage is waited out, never dead-lettered.

Dispatch is by payload class: a record's `data` is decoded into its type's payload class once,
here at the edge, before the transaction; one whose data does not fit is a dead letter naming
the field, and a type the subscription has no handler for is tracked and skipped.
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from . import metrics, tracing
from .aio import next_backoff, sleep_unless_stopped
from .clock import Clock
from .db import (
    PROCESSED,
    database_outage,
    is_database_unavailable,
    is_timeout,
    keep_dead_letter,
)
from .events import (
    TOPIC_DEADLETTER,
    BadEvent,
    CloudEvent,
    Received,
    dead_letter,
    decode_payload,
    deterministic_id,
    new_event,
    payload_class,
)
from .eventstore import ConcurrencyConflict
from .replay import Projection
from .uow import UnitOfWork

log = structlog.get_logger()

CONFLICT_RETRIES = 5
# How old the broker's last answer about a partition may be, before the fetch that finds the
# consumer at its end, and still tell where that end is: an idle partition is answered every
# fetch wait (50 to 500 ms); a broker frozen or gone answers none.
ANSWER_SLACK_MS = 1000

# One signature for every handler a subscription dispatches to: the unit of work, and the event
# with its payload already decoded into the class the handler is registered under.
Handler = Callable[[UnitOfWork, Received[Any]], Awaitable[None]]
Handlers = Mapping[type[BaseModel], Handler]
# A handler given a run of consecutive events of its class at once (fewer statements per event).
BatchHandler = Callable[[UnitOfWork, list[Received[Any]]], Awaitable[None]]
# For the types a subscription has no payload handler for (reporting keeps them in its timeline).
Fallback = Callable[[UnitOfWork, CloudEvent], Awaitable[None]]
# A fetched record: its envelope, its typed event when a handler wants it, or why it cannot be
# processed (kind, reason). An envelope without a typed event is tracked and skipped.
Decoded = tuple[ConsumerRecord, CloudEvent | None, Received[Any] | None, tuple[str, str] | None]
T = TypeVar("T")
D = TypeVar("D")
Decoder = Callable[[ConsumerRecord], CloudEvent]
PayloadOf = Callable[[CloudEvent], type[BaseModel] | None]


def _broker_answered(consumer: AIOKafkaConsumer, *, since_ms: float) -> bool:
    """Whether the broker told this consumer where each of its partitions ends since `since_ms`
    (epoch ms). A fetch that comes back empty because the broker did not answer (frozen, gone)
    shows nothing: taken for "at the end", it had intake vouch to the SLA clock through a frozen
    broker, and the outage the clock saw died with it when it restarted (the long chaos run)."""
    return all((consumer.last_poll_timestamp(tp) or 0) >= since_ms for tp in consumer.assignment())


def record_position(record: ConsumerRecord) -> str:
    # The timestamp keeps positions unique when a memory-only broker restarts its offsets at 0.
    return f"{record.topic}:{record.partition}:{record.offset}:{record.timestamp}"


def decode_cloudevent(record: ConsumerRecord) -> CloudEvent:
    return CloudEvent.from_bytes(record.value)


def contract_payload(event: CloudEvent) -> type[BaseModel] | None:
    """The payload class of a contract event, by its type (`shared.events.PAYLOADS`)."""
    return payload_class(event.type)


def bind(handlers: Mapping[type[BaseModel], Callable[[UnitOfWork, Received[Any], D], Awaitable[None]]],
         deps: Callable[[], D]) -> dict[type[BaseModel], Handler]:
    """A service's handlers, each taking (uow, event, deps), as subscription handlers: `deps()` is
    called for each event, so a handler sees the configuration and the time of that event."""
    wrapped: dict[Any, Handler] = {}  # one wrapper per handler: a batched one's runs span classes

    def bound(handler: Callable[[UnitOfWork, Received[Any], D], Awaitable[None]]) -> Handler:
        if handler not in wrapped:
            async def handle(uow: UnitOfWork, event: Received[Any]) -> None:
                await handler(uow, event, deps())
            wrapped[handler] = handle
        return wrapped[handler]
    return {cls: bound(handler) for cls, handler in handlers.items()}


class _Interrupted(Exception):
    """A shutdown arrived while the database was unavailable."""


class _NeedsIsolation(Exception):
    """A handler failed in a batch run without savepoints: run the batch again with them."""


@dataclass(frozen=True)
class Subscription:
    """What a service consumes: a consumer group over topics, and a handler per payload class.

    `payload_of` picks an event's payload class (by default its contract type); an event whose
    class has a handler is decoded into it before any handler runs, and is a dead letter naming
    the field when its data does not fit. Other events are tracked and skipped, or given to
    `otherwise` when there is one."""

    group: str
    topics: tuple[str, ...]
    handlers: Handlers
    decode: Decoder = decode_cloudevent
    payload_of: PayloadOf = contract_payload
    otherwise: Fallback | None = field(default=None)
    # Payload classes handled a run at a time: in a batch's first, optimistic run, consecutive
    # new events of classes with the same batch handler go to it together. When the batch runs
    # again with savepoints (a failure), each event goes alone to its class's handler in
    # `handlers` if it has one (intake's counts a refused record there), else to the batch
    # handler as a run of one; the two must have the same effects.
    batched: Mapping[type[BaseModel], BatchHandler] = field(default_factory=dict)
    # How long the broker may hold a fetch that finds nothing. Tansu answers a held fetch only
    # when this wait runs out, even when records arrived meanwhile, so a latency-bound
    # subscription takes less, at the cost of more empty fetches when idle.
    fetch_max_wait_ms: int = 50
    # False: the handlers keep their own record of the events they have handled, keyed by event
    # id in the same transaction (reporting's timeline), so a batch's ids get no rows in
    # processed_events (a statement a batch and a row an event less); an id repeated within a
    # batch still goes to the handlers once.
    records_processed: bool = True

    def typed(self, event: CloudEvent) -> Received[Any] | None:
        """`event` with its payload decoded, or None when no handler here wants it; raises
        `BadEvent` naming the field when it is wanted and its data does not fit."""
        cls = self.payload_of(event)
        if cls is None or (cls not in self.handlers and cls not in self.batched):
            return None
        return Received(event, decode_payload(event, cls))  # type: ignore[arg-type]

    async def dispatch(self, uow: UnitOfWork, event: CloudEvent, typed: Received[Any] | None) -> None:
        if typed is not None and type(typed.data) in self.handlers:
            await self.handlers[type(typed.data)](uow, typed)
        elif typed is not None:
            await self.batched[type(typed.data)](uow, [typed])
        elif self.otherwise is not None:
            await self.otherwise(uow, event)


class EventConsumer:
    def __init__(
        self,
        subscription: Subscription,
        *,
        service: str,
        bootstrap: str,
        engine: AsyncEngine,
        relay_wakeup: asyncio.Event,
        clock: Clock,
        session_timeout_ms: int = 6000,
        lag_interval: float = 5.0,
        projection: Projection | None = None,
        busy_patience_seconds: float = 300.0,
    ) -> None:
        self.sub = subscription
        self._busy_patience = busy_patience_seconds
        self._projection = projection
        self._service = service
        self._bootstrap = bootstrap
        self._engine = engine
        self._relay_wakeup = relay_wakeup
        self._clock = clock
        self._processed = PROCESSED[service]
        # A batch's ids in one statement that compiles once whatever the batch's size (a
        # multi-row VALUES compiled anew for every batch), as one text[] that Postgres reads
        # without parsing (as a JSON document, every row was lexed and unescaped).
        self._track = text(
            f"INSERT INTO {service}.processed_events (consumer, event_id) "
            "SELECT :consumer, id FROM unnest(CAST(:ids AS text[])) AS id "
            "ON CONFLICT DO NOTHING RETURNING event_id")
        self._session_timeout_ms = session_timeout_ms
        self._lag_interval = lag_interval
        self.ready = asyncio.Event()
        # When (time.monotonic()) this consumer last knew it had handled every record on its
        # partitions: the start of a fetch that came back empty, or of one whose records it handled
        # up to the partitions' high watermarks, with every partition's end freshly told by the
        # broker (`_broker_answered`). None until it has fetched since starting.
        self.caught_up_at: float | None = None
        # Per partition, the offset after the last record fetched: a floor for its end that the
        # lag reads beside the broker's figures, which can stop at a producer's last batch.
        self._fetched_to: dict[TopicPartition, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            *self.sub.topics,
            bootstrap_servers=self._bootstrap,
            group_id=self.sub.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A consumer that is behind takes up to this many records in one transaction: its
            # statements and commit are per batch, so a bigger batch is less work per record.
            # One that keeps up gets what arrived since its last fetch, far fewer.
            max_poll_records=1000,
            # The broker holds an empty fetch this long: the client's 500 ms default added half a
            # second to every hop of a quiet pipeline (lead -> assignment -> timer).
            fetch_max_wait_ms=self.sub.fetch_max_wait_ms,
            # A member that died without leaving is noticed within the session timeout; shorter
            # than the client's default so a restarted service gets its partitions back sooner.
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(self._session_timeout_ms // 5, 100),
            rebalance_timeout_ms=max(self._session_timeout_ms, 1000),
        )
        await consumer.start()
        self.ready.set()
        watching = asyncio.create_task(self._watch_lag(consumer, stop))
        # The offsets of the batches handled, committed to Kafka while the next ones are handled:
        # the broker round trip is off the records' path. One commit at a time, of the newest
        # offsets: the commit in flight drains `to_commit`, so the batches handled while it is on
        # its way go together in its next round, and awaiting it on the way out commits them. Postgres
        # already holds the batches (and their processed ids), so a crash before a commit only
        # redelivers records that are skipped.
        to_commit: dict[TopicPartition, OffsetAndMetadata] = {}
        committing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                fetched_at, asked_ms = time.monotonic(), time.time() * 1000
                batch = await consumer.getmany(timeout_ms=300)
                for tp, fetched in batch.items():
                    self._fetched_to[tp] = fetched[-1].offset + 1
                # Commit exactly what was handled: a bare commit() would also commit the records
                # fetched but left unhandled when a shutdown arrives mid-batch, losing them.
                done: dict[TopicPartition, OffsetAndMetadata] = {}
                # Partitions interleaved by record time (each partition's order kept): a consumer of
                # several topics sees one lead's lead.received before the lead.assigned it caused.
                records = list(heapq.merge(*batch.values(), key=lambda record: record.timestamp))
                handled = await self._process_batch(records, stop) if records else 0
                for record in records[:handled]:
                    done[TopicPartition(record.topic, record.partition)] = OffsetAndMetadata(record.offset + 1, "")
                if handled == len(records) and all((consumer.highwater(tp) or 0) <= next_offset.offset
                                                   for tp, next_offset in done.items()) \
                        and _broker_answered(consumer, since_ms=asked_ms - ANSWER_SLACK_MS):
                    self.caught_up_at = fetched_at
                to_commit.update(done)
                if to_commit and (committing is None or committing.done()):
                    committing = asyncio.create_task(self._commit(consumer, to_commit))
        finally:
            self.ready.clear()
            watching.cancel()
            if committing is not None:
                await committing  # the last batches' offsets, before leaving the group
            # Leaving the group on the way out spares the others a session timeout.
            await consumer.stop()

    async def _commit(self, consumer: AIOKafkaConsumer, pending: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Commit `pending` (emptied as it is taken) until nothing is left in it: commits go out
        in order, so an older one never lands last."""
        while pending:
            offsets = dict(pending)
            pending.clear()
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError, KafkaError) as exc:
                # A rebalance took the partitions away mid-batch. Their new owner re-reads from the
                # last committed offset; the ids recorded in processed_events make that replay a no-op.
                log.info("consumer.commit_skipped", group=self.sub.group, reason=type(exc).__name__)

    async def _watch_lag(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """Lag measured beside the loop, not in it: a consumer stuck on one record, or assigned
        partitions that get no records, still shows how far behind it is."""
        while not stop.is_set():
            try:
                await self._report_lag(consumer)
            except Exception as exc:  # a rebalance or a broker hiccup: measure again next time
                log.info("consumer.lag_unknown", group=self.sub.group, reason=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._lag_interval)

    async def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        assigned = list(consumer.assignment())
        ends = await consumer.end_offsets(assigned) if assigned else {}
        lag: dict[str, int] = {}
        for tp in assigned:
            # The group's committed offset is what has been handled: the loop commits after each batch.
            handled = await consumer.committed(tp) or 0
            # A broker's end offset can stand at the start of a producer's last batch (the embedded
            # one's does): 2,961 of 3,000 records, or 1 of a back-fill sent as one batch, read as no
            # lag. Whatever the broker said last, or the fetches showed, is there.
            end = max(ends[tp], consumer.highwater(tp) or 0, self._fetched_to.get(tp, 0))
            lag[tp.topic] = lag.get(tp.topic, 0) + max(end - handled, 0)
        for topic, behind in lag.items():
            metrics.consumer_lag.labels(topic, self.sub.group).set(behind)
        # A topic whose partitions a rebalance gave to another member: its last figure would stand
        # for ever (and a max over members report lag nobody has).
        for topic in set(self.sub.topics) - set(lag):
            with contextlib.suppress(KeyError):
                metrics.consumer_lag.remove(topic, self.sub.group)

    async def _process_batch(self, records: list[ConsumerRecord], stop: asyncio.Event) -> int:
        """Handle a fetched batch in one transaction; returns how many records (a prefix) are done.

        One commit per batch instead of per record is where the consumer's throughput comes from.
        The batch runs first without savepoints; if a handler fails, it runs again with each
        event's handler under a savepoint, so the failing one is rolled back alone and
        dead-lettered in the same transaction. If the batch transaction itself fails for another
        reason than an outage, the records go again one by one, each in its own transaction, and
        a record whose own transaction fails is parked."""
        decoded = [(record, *self._decode(record)) for record in records]
        try:
            try:
                # Optimistic first: no savepoint per event (two round trips each). A handler that
                # fails rolls the whole batch back, which then runs again with savepoints.
                await self._in_one_transaction(decoded, stop, isolate=len(decoded) == 1)
            except _NeedsIsolation:
                await self._in_one_transaction(decoded, stop, isolate=True)
            return len(records)
        except _Interrupted:
            return 0
        except Exception as exc:
            log.warning("consumer.batch_failed", group=self.sub.group, error=type(exc).__name__,
                        records=len(records), then="one by one")
        for done, item in enumerate(decoded):
            if stop.is_set():
                return done
            try:
                try:
                    await self._in_one_transaction([item], stop)
                except _Interrupted:
                    raise
                except Exception as exc:  # a bug: park the record, keep the partition moving
                    log.error("consumer.handler_failed", group=self.sub.group, error=type(exc).__name__)
                    await self._park(item[0], "handler_error", f"{type(exc).__name__}: {exc}", stop)
            except _Interrupted:
                return done  # stopping mid-outage: this record is redelivered to the next owner
        return len(records)

    async def _in_one_transaction(self, decoded: list[Decoded], stop: asyncio.Event, *, isolate: bool = True) -> None:
        letters = await self._retrying(lambda: self._handle_batch(decoded, isolate), stop)
        for record, kind, _ in letters:
            log.warning("consumer.deadlettered", group=self.sub.group, position=record_position(record), kind=kind)
            metrics.deadletter.labels(record.topic, kind).inc()

    def _decode(self, record: ConsumerRecord) -> tuple[CloudEvent | None, Received[Any] | None,
                                                       tuple[str, str] | None]:
        try:
            event = self.sub.decode(record)
        except BadEvent as exc:
            return None, None, ("undecodable", str(exc))
        except Exception as exc:  # any input can break a decoder; none may stop the partition
            return None, None, ("undecodable", f"{type(exc).__name__}: {exc}")
        try:
            return event, self.sub.typed(event), None
        except BadEvent as exc:  # the envelope is fine, its data does not fit its type
            return None, None, ("invalid_data", str(exc))
        except Exception as exc:
            return None, None, ("invalid_data", f"{type(exc).__name__}: {exc}")

    async def _handle_batch(self, decoded: list[Decoded], isolate: bool) -> list[tuple[ConsumerRecord, str, str]]:
        """One transaction: the batch's tracking ids, each new event's handler (under a savepoint
        when `isolate`), the dead letters. Returns the dead letters (record, kind, reason) it wrote."""
        letters: list[tuple[ConsumerRecord, str, str]] = []
        async with UnitOfWork(self._engine, self._service, self._relay_wakeup, self._projection) as uow:
            ids = list(dict.fromkeys(event.id for _, event, _, _ in decoded if event is not None))
            new: set[str] = set()
            if ids and self.sub.records_processed:
                inserted = await uow.conn.execute(self._track, {"consumer": self.sub.group, "ids": ids})
                new = set(inserted.scalars())
            elif ids:
                new = set(ids)
            run: list[Received[Any]] = []  # consecutive events for one batched handler
            for record, event, typed, failure in decoded:
                if failure is not None:
                    letters.append((record, *failure))
                    continue
                assert event is not None
                if event.id not in new:
                    continue  # seen before (or twice in this batch): its effects are already there
                new.discard(event.id)
                if typed is None and self.sub.otherwise is None:
                    continue  # a type this subscription does not handle: tracked, nothing to do
                if not isolate:
                    batch_handler = self.sub.batched.get(type(typed.data)) if typed is not None else None
                    if run and self.sub.batched[type(run[0].data)] is not batch_handler:
                        await self._optimistic(self.sub.batched[type(run[0].data)](uow, run))
                        run = []
                    if typed is not None and batch_handler is not None:
                        run.append(typed)
                    else:
                        await self._optimistic(self.sub.dispatch(uow, event, typed))
                    continue
                mark = uow.mark()
                savepoint = await uow.conn.begin_nested()
                try:
                    with tracing.handling(event, record.headers):
                        await self.sub.dispatch(uow, event, typed)
                    await savepoint.commit()
                except Exception as exc:
                    if is_database_unavailable(exc) or isinstance(exc, ConcurrencyConflict):
                        raise  # the whole batch waits for the database, or runs again from fresh state
                    await savepoint.rollback()
                    uow.drop_since(mark)
                    if isinstance(exc, BadEvent):
                        letters.append((record, "invalid_data", str(exc)))
                    else:
                        log.error("consumer.handler_failed", group=self.sub.group, event_id=event.id,
                                  error=type(exc).__name__)
                        letters.append((record, "handler_error", f"{type(exc).__name__}: {exc}"))
            if run:
                await self._optimistic(self.sub.batched[type(run[0].data)](uow, run))
            for record, kind, reason in letters:
                await self._write_deadletter(uow, record, kind, reason)
            await uow.commit()
        return letters

    @staticmethod
    async def _optimistic(handled: Awaitable[None]) -> None:
        """A handler run without a savepoint: a failure of its own sends the batch to isolation."""
        try:
            await handled
        except Exception as exc:
            if is_database_unavailable(exc) or isinstance(exc, ConcurrencyConflict):
                raise  # the whole batch waits for the database, or runs again from fresh state
            raise _NeedsIsolation from exc

    async def _park(self, record: ConsumerRecord, kind: str, reason: str, stop: asyncio.Event) -> None:
        await self._retrying(lambda: self._deadletter(record, kind, reason), stop)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
        """Run `attempt` until it stops failing because the database is unavailable (or a stream
        moved under it): an outage delays a record, it never turns a good record into a dead
        letter. An error that looks like an outage while the database answers is this record's
        own and goes on as such; but a statement timeout only after `busy_patience_seconds`:
        while the database answers, a statement that keeps timing out most likely waits on a lock
        another session holds (an operator's open transaction, say), which no record is to blame for."""
        delay, tries, conflicts = 0.0, 0, 0
        first_failure: float | None = None
        busy = False
        while True:
            try:
                result = await attempt()
                database_outage.up()
                return result
            except ConcurrencyConflict:
                # Another writer appended to one of the batch's streams first: run the handlers
                # again from fresh state.
                conflicts += 1
                if conflicts >= CONFLICT_RETRIES:
                    raise
                continue
            except Exception as exc:
                if not is_database_unavailable(exc):
                    raise
                if stop.is_set():
                    raise _Interrupted from exc
                tries += 1
                first_failure = first_failure or time.monotonic()
                if tries < 3 or not await self._database_answers():
                    database_outage.down(exc)
                elif not is_timeout(exc) or time.monotonic() - first_failure > self._busy_patience:
                    raise  # the database answers: the failure is this record's own
                elif not busy:  # answering, yet the statement timed out: blocked or busy, waited out
                    busy = True
                    log.warning("consumer.database_busy", group=self.sub.group,
                                waiting_up_to_seconds=self._busy_patience)
                delay = next_backoff(delay, first=0.1, cap=5.0)
                await sleep_unless_stopped(stop, delay)

    async def _database_answers(self) -> bool:
        try:
            async with self._engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("SELECT 1")), 3.0)
            return True
        except Exception:
            return False

    async def _first_time(self, uow: UnitOfWork, event_id: str) -> bool:
        inserted = await uow.conn.execute(
            pg_insert(self._processed)
            .values(consumer=self.sub.group, event_id=event_id)
            .on_conflict_do_nothing()
            .returning(self._processed.c.event_id)
        )
        return inserted.first() is not None

    async def _deadletter(self, record: ConsumerRecord, kind: str, reason: str) -> None:
        """`kind` is a bounded metric label; `reason` is the full text, kept in the event."""
        async with UnitOfWork(self._engine, self._service, self._relay_wakeup, self._projection) as uow:
            if not await self._write_deadletter(uow, record, kind, reason):
                return
            await uow.commit()
        log.warning("consumer.deadlettered", group=self.sub.group, position=record_position(record), kind=kind)
        metrics.deadletter.labels(record.topic, kind).inc()

    async def _write_deadletter(self, uow: UnitOfWork, record: ConsumerRecord, kind: str, reason: str) -> bool:
        """Keep the record whole in Postgres and emit its bounded dead letter; False if done before."""
        position = record_position(record)
        original = record.value or b""
        letter_id = deterministic_id("deadletter", self._service, position)
        if not await self._first_time(uow, "deadletter:" + position):
            return False
        key = record.key.decode(errors="replace") if record.key else None
        error = f"{kind}: {reason}"[:2000]
        await keep_dead_letter(uow.conn, letter_id=letter_id, service=self._service, topic=record.topic,
                               partition=record.partition, offset=record.offset, key=key, original=original,
                               error=error)
        uow.emit(
            TOPIC_DEADLETTER,
            new_event(
                "deadletter",
                service=self._service,
                lead_id=key[:200] if key else None,  # a raw topic's key is the lead's id, if any
                time=self._clock.now(),
                data=dead_letter(topic=record.topic, partition=record.partition, offset=record.offset,
                                 key=key[:200] if key else None, original=original, error=error,
                                 service=self._service, letter_id=letter_id),
            ),
        )
        return True
