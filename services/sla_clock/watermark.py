"""How far the SLA clock has consumed its inputs: the watermark its timer loop judges by.

Each round: (1) read the producers' event stores (intake, router) for the oldest event their relays have
not published yet; (2) read every input partition to its end with our own fetches (no group; the
broker's high watermark can lag, so "at the end" is an empty fetch, issued after the store
check); (3) read the offsets the clock's consumer group has committed, which it does only after
the handled events are in Postgres. domain.py turns those facts into one instant: every event
stamped before it has been handled. See DESIGN.md "The clock judges only what it has seen".
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record import MemoryRecords
from sqlalchemy import column, func, select, table
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.aio import next_backoff, sleep_unless_stopped
from shared.clock import Clock
from shared.db import application_name
from shared.events import utc_iso
from shared.eventstore import EVENTS, RELAY

from .domain import (
    InputHold,
    Outage,
    PartitionMarks,
    add_marks,
    after_outages,
    blind_since,
    consume,
    held_watermark,
    inputs_seen_until,
    intake_outages,
    settled_watermark,
    upstream_settled,
)
from .tables import blind_outages

log = structlog.get_logger()

# The sessions Postgres is serving now (only the columns the watermark reads).
activity = table("pg_stat_activity", column("pid"), column("application_name"), column("xact_start"),
                 schema="pg_catalog")
# Intake's heartbeat runs (intake/tables.availability; services do not import each other).
availability = table("availability", column("first_beat"), column("last_beat"), schema="intake")

# Follow a busy partition for at most this many fetches per round; its end is confirmed later.
_FETCHES_PER_ROUND = 10
_PARTITION_FETCH_BYTES = 256 * 1024
_METADATA_REFRESH_SECONDS = 30.0
_SHRUNK_ROUNDS = 3
_OFFSET_OUT_OF_RANGE = 1
# Intake's heartbeat runs read: enough to see its last outage and the run before it.
_INTAKE_RUNS_READ = timedelta(hours=1)
# Rounds this far apart mean the clock could not read its inputs in between (an outage of its own).
_BLIND_AFTER = timedelta(seconds=3)


class InputWatermark:
    def __init__(
        self,
        *,
        bootstrap: str,
        engine: AsyncEngine,
        clock: Clock,
        group: str,
        topics: Sequence[str],
        producers: Sequence[str],
        commit_allowance: timedelta,
        interval: float,
        intake_gap: timedelta = timedelta(seconds=2),
        outage_grace: timedelta = timedelta(seconds=30),
    ) -> None:
        self._bootstrap = bootstrap
        self._engine = engine
        self._clock = clock
        self._group = group
        self._topics = tuple(topics)
        self._producers = tuple(producers)
        self._allowance = commit_allowance
        self._interval = interval
        self._marks: dict[TopicPartition, PartitionMarks] = {}
        self._next: dict[TopicPartition, int] = {}
        self._shrunk: dict[TopicPartition, int] = {}
        self._checks: list[tuple[datetime, datetime]] = []
        self._intake_gap, self._outage_grace = intake_gap, outage_grace
        self.seen: datetime | None = None  # every input stamped before it has been handled
        self.hold = InputHold()  # after outages of intake or of our own reading (see `round`)
        self.last_round: datetime | None = None  # when a round last completed
        self._blinds: list[Outage] = []  # the last hour's (as intake's runs are read)
        self._unsaved: list[Outage] = []  # blinds not yet in Postgres (the database away)
        self._restored = False  # the blinds an earlier process saved, read before the first round
        self.rounds = 0  # completed rounds, for operators (and tests) to see it is alive
        # Set whenever `judged_until` moves forward, so the timer loop judges at once.
        self.advanced = asyncio.Event()

    @property
    def judged_until(self) -> datetime | None:
        """How far the timer loop may judge: what the clock has seen, held after an outage (`hold`)."""
        return held_watermark(self.seen, self.hold)

    async def run(self, stop: asyncio.Event) -> None:
        client = AIOKafkaClient(bootstrap_servers=self._bootstrap)
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        backoff, started, refreshed = 0.2, False, 0.0
        try:
            while not stop.is_set():
                try:
                    if not self._restored:  # first, and without the broker (it may be the outage)
                        await self._restore()
                    if not started:
                        await client.bootstrap()
                        await admin.start()
                        started = True
                    if time.monotonic() - refreshed > _METADATA_REFRESH_SECONDS:
                        await client.set_topics(self._topics)
                        await client.force_metadata_update()
                        refreshed = time.monotonic()
                    await self.round(client, admin)
                    backoff = 0.2
                    await sleep_unless_stopped(stop, self._interval)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # broker or database away: the watermark stays, timers wait
                    log.warning("watermark.round_failed", error=f"{type(exc).__name__}: {exc}", retry_in=backoff)
                    await sleep_unless_stopped(stop, backoff)
                    backoff = next_backoff(backoff, cap=5.0)
        finally:
            if started:
                await admin.close()
            await client.close()

    async def round(self, client: AIOKafkaClient, admin: AIOKafkaAdminClient) -> None:
        checked_at = self._clock.now()
        check = (checked_at, upstream_settled(checked_at, await self._oldest_unpublished(), self._allowance))
        issued = self._clock.now()  # after the outbox check: what it saw sent is below our ends
        partitions = self._partitions(client)
        for tp, marks in (await self._read_to_end(client, partitions, issued)).items():
            self._marks[tp] = add_marks(self._marks.get(tp, PartitionMarks()), marks)
        committed = await admin.list_consumer_group_offsets(self._group, partitions=partitions)
        for tp in partitions:
            offset = committed[tp].offset if tp in committed else -1
            self._marks[tp] = consume(self._marks.get(tp, PartitionMarks()), max(offset, 0))
        broker_seen = inputs_seen_until({tp: self._marks[tp] for tp in partitions})
        self._checks.append(check)
        seen = settled_watermark(self._checks, broker_seen)
        # Checks the broker has passed are spent, except the one that set `seen`.
        self._checks = [c for c in self._checks if broker_seen is None or c[0] > broker_seen or c[1] == seen]
        # Outages: intake not accepting (its heartbeat; with "intake" among the producers), and
        # rounds of ours far apart (the broker or the database away, this process stalled). Read
        # before `seen` moves: with no await between the two, the timer loop never judges by a
        # `seen` past an outage without the hold that outage puts on it.
        intake = await self._intake_runs() if "intake" in self._producers else None
        before = self.judged_until
        if seen is not None and (self.seen is None or seen > self.seen):
            self.seen = seen
        now = self._clock.now()
        # Every outage of the last hour, not the latest only: a breach due in one and judged after
        # the next began (faults back to back) is the system's delay all the same.
        blind = blind_since(self.last_round, now, _BLIND_AFTER)
        if blind is not None:
            ended = Outage(blind.began, now)
            self._blinds.append(ended)
            self._unsaved.append(ended)
        self._blinds = [o for o in self._blinds if o.ended is not None and o.ended > now - _INTAKE_RUNS_READ]
        self.last_round = now
        hold = after_outages(self._blinds, now, self._outage_grace)
        if intake is not None:
            runs, db_now = intake
            hold &= after_outages(intake_outages(runs, db_now, self._intake_gap), db_now, self._outage_grace)
        self.hold = hold
        after = self.judged_until
        if after is not None and (before is None or after > before):
            self.advanced.set()
        self.rounds += 1
        if self._unsaved:  # after the hold is set (no await before it); kept for the next round if this fails
            await self._save_blinds(now)

    async def _restore(self) -> None:
        """The clock's own outages of the last hour, as an earlier process saved them, held at
        once: a clock restarted inside the grace after one still holds its deadlines, and the
        consumer, judging a touch read before the first round, knows of them."""
        now = self._clock.now()
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(blind_outages.c.began, blind_outages.c.ended)
                                      .where(blind_outages.c.ended > now - _INTAKE_RUNS_READ)
                                      .order_by(blind_outages.c.began))
            self._blinds = [Outage(began, ended) for began, ended in rows] + self._blinds
        self.hold = after_outages(self._blinds, now, self._outage_grace)
        self._restored = True

    async def _save_blinds(self, now: datetime) -> None:
        """Keep the clock's own outages past a restart: what it saw of a frozen broker otherwise
        died with it, and a clock killed inside the grace after one judged the breaches due in it
        as the owners' when it came back (when intake saw no outage of its own)."""
        async with self._engine.begin() as conn:
            await conn.execute(blind_outages.delete().where(blind_outages.c.ended <= now - _INTAKE_RUNS_READ))
            stmt = insert(blind_outages).values([{"began": o.began, "ended": o.ended} for o in self._unsaved])
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=[blind_outages.c.began], set_={"ended": func.greatest(blind_outages.c.ended,
                                                                                      stmt.excluded.ended)}))
        self._unsaved = []

    def outages(self, now: datetime) -> tuple[Outage, ...]:
        """The outages a breach judged at `now` is to know of: the hold's, and the time since the
        last round if that is long ago. After the database or the broker came back, the consumer
        may read a touch before this watermark completes a round (its backoff, a round hanging on
        a broker just thawed); judged with the hold alone, a deadline in the outage it has not yet
        learned of was the owner's miss (the chaos auditor, CI)."""
        blind = blind_since(self.last_round, now, _BLIND_AFTER)
        return self.hold.outages if blind is None else (*self.hold.outages, blind)

    async def _intake_runs(self) -> tuple[list[tuple[datetime, datetime]], datetime]:
        """Intake's recent heartbeat runs and the database's time (the beats' clock)."""
        async with self._engine.connect() as conn:
            now = await conn.scalar(select(func.clock_timestamp()))
            rows = await conn.execute(select(availability.c.first_beat, availability.c.last_beat)
                                      .where(availability.c.last_beat > now - _INTAKE_RUNS_READ))
            return [(first, last) for first, last in rows], now

    async def _oldest_unpublished(self) -> datetime | None:
        oldest: list[datetime] = []
        async with self._engine.connect() as conn:
            for schema in self._producers:
                t, relay = EVENTS[schema], RELAY[schema]
                published = select(func.coalesce(func.max(relay.c.published_position), 0)).scalar_subquery()
                # Parked rows are behind the relay's position: they wait for an operator, not for the
                # broker, and waiting for them would turn every later breach into system_delay.
                # Only our inputs: a dead letter not yet published is not something we wait for.
                recorded = await conn.scalar(
                    select(t.c.recorded_at).where(t.c.position > published, t.c.topic.in_(self._topics))
                    .order_by(t.c.position).limit(1))
                if recorded is not None:
                    oldest.append(recorded)
            # A producer transaction still open may hold events stamped since it began, invisible
            # until it commits (intake handling a batch slowly after an outage). The relay names
            # its own transactions apart: it stamps nothing.
            began = await conn.scalar(
                select(func.min(activity.c.xact_start)).where(
                    activity.c.application_name.in_([application_name(p) for p in self._producers]),
                    activity.c.xact_start.is_not(None), activity.c.pid != func.pg_backend_pid()))
            if began is not None:
                oldest.append(began)
        return min(oldest, default=None)

    def _partitions(self, client: AIOKafkaClient) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for topic in self._topics
                for p in sorted(client.cluster.partitions_for_topic(topic) or ())]

    async def _read_to_end(self, client: AIOKafkaClient, partitions: list[TopicPartition],
                           issued: datetime) -> dict[TopicPartition, list[tuple[int, datetime]]]:
        found: dict[TopicPartition, list[tuple[int, datetime]]] = {tp: [] for tp in partitions}
        open_ = set(partitions)
        for _ in range(_FETCHES_PER_ROUND):
            if not open_:
                break
            by_node: dict[int, list[TopicPartition]] = {}
            for tp in open_:
                by_node.setdefault(client.cluster.leader_for_partition(tp), []).append(tp)
            for node, tps in by_node.items():
                topics: dict[str, list[tuple[int, int, int]]] = {}
                for tp in tps:
                    topics.setdefault(tp.topic, []).append((tp.partition, self._next.get(tp, 0),
                                                            _PARTITION_FETCH_BYTES))
                # A short long-poll: an empty answer must be a real answer, not a timeout of ours.
                response = await client.send(node, FetchRequest(1, 1, 4 * 1024 * 1024, 0, list(topics.items())))
                for topic, parts in response.topics:
                    for partition, error_code, highwater, *rest in parts:
                        tp = TopicPartition(topic, partition)
                        if tp not in open_:
                            continue
                        if error_code == _OFFSET_OUT_OF_RANGE and highwater >= 0:
                            self._next[tp] = highwater  # retention removed where we were: go to the end
                            continue
                        if error_code != 0:
                            continue  # e.g. a leader moving: try again next round
                        if self._read_one(tp, highwater, MemoryRecords(rest[-1]), issued, found[tp]):
                            open_.discard(tp)
        return found

    def _read_one(self, tp: TopicPartition, highwater: int, records: MemoryRecords, issued: datetime,
                  found: list[tuple[int, datetime]]) -> bool:
        """Fold one partition's fetch answer into marks; True when it confirmed the end."""
        fetched_at = self._next.get(tp, 0)
        if highwater < fetched_at:
            # Either the broker's high watermark lags (it can, briefly) or the log is shorter than
            # where we were (a memory-only broker restarted). Confirm nothing; if it persists, start over.
            self._shrunk[tp] = self._shrunk.get(tp, 0) + 1
            if self._shrunk[tp] >= _SHRUNK_ROUNDS:
                self._next[tp] = highwater
                self._marks[tp] = PartitionMarks(self._marks.get(tp, PartitionMarks()).floor)
                self._shrunk.pop(tp)
            return True  # nothing more to learn from this partition in this round
        self._shrunk.pop(tp, None)
        last, latest_ms = None, -1
        while (batch := records.next_batch()) is not None:
            for record in batch:
                if record.offset < fetched_at:
                    continue  # a batch starting before our offset comes back whole
                last = record.offset
                # The newest stamp as milliseconds, made a time once: this loop sees every input record.
                latest_ms = max(latest_ms, record.timestamp)
        if last is None:
            if highwater > fetched_at:
                self._next[tp] = highwater  # nothing at our offset yet the end is further: jump
                return False
            found.append((fetched_at, issued))  # an empty fetch at the end: the end as of `issued`
            return True
        latest = datetime.fromtimestamp(latest_ms / 1000, tz=issued.tzinfo)
        found.append((last + 1, latest))  # consuming through `last` is reading an event stamped `latest`
        self._next[tp] = max(last + 1, highwater)
        return False


def lag_seconds(watermark: InputWatermark, now: datetime, since: datetime) -> float:
    """How far behind `now` the clock may judge (since `since`, the start, if never confirmed)."""
    return max((now - (watermark.judged_until or since)).total_seconds(), 0.0)


def describe(watermark: InputWatermark, now: datetime) -> dict[str, object]:
    """For /v1/watermark: where the clock stands, for an operator wondering why a breach waits."""
    judged, hold = watermark.judged_until, watermark.hold
    return {"seen_until": utc_iso(judged) if judged else None,
            "lag_seconds": round((now - judged).total_seconds(), 3) if judged else None,
            "inputs_seen_until": utc_iso(watermark.seen) if watermark.seen else None,
            # After an outage (intake down, the broker away), judging waits for senders' retries.
            "held_until": utc_iso(hold.until) if hold.until else None,
            "outages": [{"from": utc_iso(o.began), "to": utc_iso(o.ended) if o.ended else None}
                        for o in watermark.outages(now)],
            "rounds": watermark.rounds}
