"""Where the clock's handlers read their state and record their events: the `ClockStore` port,
its Postgres adapter (one unit of work: one transaction) and an in-memory fake for handler unit
tests. Both run the same contract suite (tests/sla_store_contract.py).

Reads return rows with the stored columns as attributes (the `timers` and `leads` tables).
`record` is the only write: it applies the events to the state (the projection) and queues them
for the event store, in the same transaction; sla.* events are published on the sla topic, the
clock's internal events stay in its store.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Text, cast, func, literal_column, select, tuple_

from shared.config import keeps_owner
from shared.db import any_text
from shared.events import TOPIC_SLA, CloudEvent
from shared.uow import UnitOfWork

from .domain import LEAD_NOTED, OWNER_CHANGED, LeadFacts, OwnerChanged
from .projection import LIVE, PROJECTION, TIMER_EVENTS, lead_rows, plain, timer_row
from .tables import leads, open_timer_counts, timers

# Where each event the clock records is published; the others stay in its store.
TOPICS = {kind: TOPIC_SLA for kind in TIMER_EVENTS}


def topic_of(event: CloudEvent) -> str | None:
    return TOPICS.get(event.type)


class ClockStore(Protocol):
    """The SLA clock's state, for one unit of work."""

    async def expect_lead(self, lead_id: str) -> None:
        """Decide from the lead's current state: if another writer records about the lead before
        this unit of work commits, the commit fails (ConcurrencyConflict) and the command is retried."""

    async def lead(self, lead_id: str) -> Any | None: ...

    async def leads(self, lead_ids: Iterable[str]) -> dict[str, Any]: ...

    async def timers(self, lead_id: str, states: tuple[str, ...] | None = None,
                     metric: str | None = None) -> list[Any]:
        """The lead's timers by metric, held for this unit of work (the timer loop skips them)."""

    async def timer(self, sla_id: str) -> Any: ...

    async def reasons(self, lead_id: str, metric: str) -> list[str | None]:
        """The end reason of each timer the lead ever had for the metric (None: not cancelled)."""

    async def due(self, horizon: datetime, limit: int) -> list[tuple[str, str]]:
        """Timers to look at by `horizon` (open ones, and missed follow-ups whose cadence ends by
        time), soonest first, skipping those another unit of
        work holds (so that replicas never fire one twice) and held for this one: (sla_id,
        version), the version changing with every write of the timer's row or of its lead's."""

    async def timers_by_id(self, sla_ids: Sequence[str]) -> dict[str, Any]:
        """The timers' rows by sla_id (of timers this unit of work holds: `due`)."""

    async def ahead(self, after: tuple[datetime, str] | None, until: datetime,
                    limit: int) -> list[tuple[Any, str]]:
        """Open timers by `until` with their versions (see `due`), in (next_fire_at, sla_id)
        order after `after`, read without a lock: to prepare what falls due next, never to decide."""

    async def next_due(self) -> datetime | None: ...

    async def open_counts(self) -> list[tuple[str, str, int]]: ...

    async def record(self, events: Sequence[CloudEvent]) -> None: ...

    def observe(self, metric: Callable[[], None]) -> None:
        """Count a metric once this unit of work has committed (never for a rolled-back one)."""


class PostgresClockStore:
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def expect_lead(self, lead_id: str) -> None:
        await self.uow.load_version(lead_id)

    async def lead(self, lead_id: str) -> Any | None:
        return (await self.uow.conn.execute(select(leads).where(leads.c.lead_id == lead_id))).first()

    async def leads(self, lead_ids: Iterable[str]) -> dict[str, Any]:
        ids = list(lead_ids)
        if not ids:
            return {}
        rows = await self.uow.conn.execute(select(leads).where(leads.c.lead_id.in_(ids)))
        return {row.lead_id: row for row in rows}

    async def timers(self, lead_id: str, states: tuple[str, ...] | None = None,
                     metric: str | None = None) -> list[Any]:
        query = select(timers).where(timers.c.lead_id == lead_id)
        if states is not None:
            query = query.where(timers.c.state.in_(states))
        if metric is not None:
            query = query.where(timers.c.metric == metric)
        return list((await self.uow.conn.execute(query.order_by(timers.c.metric).with_for_update())).all())

    async def timer(self, sla_id: str) -> Any:
        return (await self.uow.conn.execute(select(timers).where(timers.c.sla_id == sla_id))).one()

    async def reasons(self, lead_id: str, metric: str) -> list[str | None]:
        rows = await self.uow.conn.execute(
            select(timers.c.reason).where(timers.c.lead_id == lead_id, timers.c.metric == metric))
        return [r.reason for r in rows]

    async def due(self, horizon: datetime, limit: int) -> list[tuple[str, str]]:
        return list((await self.uow.conn.execute(
            select(timers.c.sla_id, _VERSION).select_from(_WITH_LEAD)
            .where(timers.c.next_fire_at <= horizon)  # open, or a missed follow-up (Timer.next_fire_at)
            .order_by(timers.c.next_fire_at).limit(limit).with_for_update(skip_locked=True, of=timers)
        )).all())  # rows unpack like tuples (Result.tuples() is deprecated and warns on every call)

    async def timers_by_id(self, sla_ids: Sequence[str]) -> dict[str, Any]:
        if not sla_ids:
            return {}
        rows = await self.uow.conn.execute(select(timers).where(timers.c.sla_id == any_text(sla_ids)))
        return {row.sla_id: row for row in rows}

    async def ahead(self, after: tuple[datetime, str] | None, until: datetime,
                    limit: int) -> list[tuple[Any, str]]:
        query = (select(timers, _VERSION).select_from(_WITH_LEAD)
                 .where(timers.c.state == "open", timers.c.next_fire_at <= until))
        if after is not None:
            query = query.where(tuple_(timers.c.next_fire_at, timers.c.sla_id) > tuple_(*after))
        rows = await self.uow.conn.execute(query.order_by(timers.c.next_fire_at, timers.c.sla_id).limit(limit))
        return [(row, row.version) for row in rows]

    async def next_due(self) -> datetime | None:
        return await self.uow.conn.scalar(select(func.min(timers.c.next_fire_at)))

    async def open_counts(self) -> list[tuple[str, str, int]]:
        # Kept by the projection as it writes timers: a few rows, however many timers are open.
        rows = await self.uow.conn.execute(
            select(open_timer_counts.c.metric, open_timer_counts.c.tier, open_timer_counts.c.open)
            .order_by(open_timer_counts.c.metric, open_timer_counts.c.tier))
        return [(r[0], r[1], r[2]) for r in rows]

    def observe(self, metric: Callable[[], None]) -> None:
        self.uow.after_commit(metric)

    async def record(self, events: Sequence[CloudEvent]) -> None:
        # UnitOfWork.record, for a batch: the projection writes it with one statement per table.
        if not events:
            return
        await PROJECTION.apply(self.uow.conn, events)
        for event in events:
            self.uow.emit(topic_of(event), event)


# A row's xmin names the transaction that wrote this version of it: a write by any later one gives another.
_VERSION = (cast(literal_column("sla_clock.timers.xmin"), Text) + ":"
            + func.coalesce(cast(literal_column("sla_clock.leads.xmin"), Text), "")).label("version")
_WITH_LEAD = timers.outerjoin(leads, leads.c.lead_id == timers.c.lead_id)


class Record:
    """A row of the fake: the stored columns as attributes, like a SQLAlchemy Row."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"Record({self.__dict__!r})"


_TIMER_COLUMNS = tuple(c.name for c in timers.columns)
_LEAD_COLUMNS = tuple(c.name for c in leads.columns)


class InMemoryClockStore:
    """The fake: the same state from the same events, in dicts. `recorded`: (topic, event) in order;
    `expected`: the leads a handler decided about."""

    def __init__(self) -> None:
        self.timer_rows: dict[str, dict[str, Any]] = {}
        self.lead_rows: dict[str, dict[str, Any]] = {}
        self.recorded: list[tuple[str | None, CloudEvent]] = []
        self.expected: list[str] = []
        self.observed: list[Callable[[], None]] = []  # metrics a commit would count
        self.writes: dict[tuple[str, str], int] = {}  # rows' versions: ("timer" | "lead", id) -> writes
        # lead id -> its timers' ids: a run's lookups by lead read a lead's few timers, not every
        # timer of the run (which made a run's handling quadratic in its length).
        self._lead_timers: dict[str, dict[str, None]] = {}  # (ordered as timer_rows)
        self._appliers = {**dict.fromkeys(TIMER_EVENTS, self._timer_changed), LEAD_NOTED: self._lead_noted,
                          OWNER_CHANGED: self._owner_changed}  # what each recorded event changes

    def put_timer(self, row: dict[str, Any]) -> None:
        self.timer_rows[row["sla_id"]] = row
        self._lead_timers.setdefault(row["lead_id"], {})[row["sla_id"]] = None

    def _of_lead(self, lead_id: str) -> list[dict[str, Any]]:
        return [self.timer_rows[i] for i in self._lead_timers.get(lead_id, ())]

    def observe(self, metric: Callable[[], None]) -> None:
        self.observed.append(metric)

    async def expect_lead(self, lead_id: str) -> None:
        self.expected.append(lead_id)

    async def lead(self, lead_id: str) -> Any | None:
        row = self.lead_rows.get(lead_id)
        return Record(row) if row is not None else None

    async def leads(self, lead_ids: Iterable[str]) -> dict[str, Any]:
        return {i: Record(self.lead_rows[i]) for i in lead_ids if i in self.lead_rows}

    async def timers(self, lead_id: str, states: tuple[str, ...] | None = None,
                     metric: str | None = None) -> list[Any]:
        rows = [r for r in self._of_lead(lead_id)
                if (states is None or r["state"] in states) and (metric is None or r["metric"] == metric)]
        return [Record(r) for r in sorted(rows, key=lambda r: r["metric"])]

    async def timer(self, sla_id: str) -> Any:
        return Record(self.timer_rows[sla_id])

    async def reasons(self, lead_id: str, metric: str) -> list[str | None]:
        return [r["reason"] for r in self._of_lead(lead_id) if r["metric"] == metric]

    async def due(self, horizon: datetime, limit: int) -> list[tuple[str, str]]:
        rows = [r for r in self.timer_rows.values()
                if r["next_fire_at"] is not None and r["next_fire_at"] <= horizon]
        return [(r["sla_id"], self._version(r)) for r in sorted(rows, key=lambda r: r["next_fire_at"])[:limit]]

    async def timers_by_id(self, sla_ids: Sequence[str]) -> dict[str, Any]:
        return {i: Record(self.timer_rows[i]) for i in sla_ids}

    async def ahead(self, after: tuple[datetime, str] | None, until: datetime,
                    limit: int) -> list[tuple[Any, str]]:
        rows = sorted(((r["next_fire_at"], r["sla_id"]), r) for r in self.timer_rows.values()
                      if r["state"] == "open" and r["next_fire_at"] is not None and r["next_fire_at"] <= until)
        return [(Record(r), self._version(r)) for key, r in rows if after is None or key > after][:limit]

    def _version(self, timer: dict[str, Any]) -> str:
        lead = self.writes.get(("lead", timer["lead_id"])) if timer["lead_id"] in self.lead_rows else ""
        return f"{self.writes.get(('timer', timer['sla_id']))}:{lead}"

    async def next_due(self) -> datetime | None:
        return min((r["next_fire_at"] for r in self.timer_rows.values() if r["next_fire_at"] is not None),
                   default=None)

    async def open_counts(self) -> list[tuple[str, str, int]]:
        counts: dict[tuple[str, str], int] = {}
        for r in self.timer_rows.values():
            if r["state"] == "open":
                counts[(r["metric"], r["tier"])] = counts.get((r["metric"], r["tier"]), 0) + 1
        return [(metric, tier, n) for (metric, tier), n in sorted(counts.items())]

    async def record(self, events: Sequence[CloudEvent]) -> None:
        for event in events:
            applier = self._appliers.get(event.type)
            if applier is not None:
                applier(event)
            self.recorded.append((topic_of(event), event))

    def _timer_changed(self, event: CloudEvent) -> None:
        row = timer_row(event)
        if row is not None:
            self.put_timer({c: row.get(c) for c in _TIMER_COLUMNS})
            self._wrote("timer", row["sla_id"])

    def _wrote(self, table: str, key: str) -> None:
        self.writes[(table, key)] = self.writes.get((table, key), 0) + 1

    def _lead_noted(self, event: CloudEvent) -> None:
        facts = LeadFacts.unwire(event.data)
        self.lead_rows[facts["lead_id"]] = {c: facts.get(c) for c in _LEAD_COLUMNS}
        self._wrote("lead", facts["lead_id"])

    def _owner_changed(self, event: CloudEvent) -> None:
        change = OwnerChanged.model_validate(event.data)
        if change.lead_id in self.lead_rows:
            self.lead_rows[change.lead_id]["owner_id"] = change.owner_id
            self._wrote("lead", change.lead_id)
        for r in self._of_lead(change.lead_id):
            if r["state"] in LIVE and not keeps_owner(r["state"], r["due_at"], change.as_of):
                r["owner_id"] = change.owner_id
                self._wrote("timer", r["sla_id"])


class RunClockStore(InMemoryClockStore):
    """A consumer's run of events decided in memory and written at once: seeded with the stored
    rows of the run's leads (their timers locked, as `PostgresClockStore.timers` locks them) and
    their stream versions, in three statements; kept current as the handlers record by the same
    fold as the fake (the contract suite holds it to the Postgres store); `flush` then writes all
    the run recorded through the projection (one upsert per table) and queues it for the store."""

    def __init__(self, uow: UnitOfWork) -> None:
        super().__init__()
        self.uow = uow

    @classmethod
    async def load(cls, uow: UnitOfWork, lead_ids: Iterable[str]) -> RunClockStore:
        store, ids = cls(uow), list(dict.fromkeys(lead_ids))
        await uow.load_versions(ids)
        store.lead_rows.update(await lead_rows(uow.conn, ids))
        # In key order: two transactions locking some of the same timers never wait in a circle.
        for row in await uow.conn.execute(select(timers).where(timers.c.lead_id == any_text(ids))
                                          .order_by(timers.c.sla_id).with_for_update()):
            store.put_timer(plain(row))
        return store

    async def expect_lead(self, lead_id: str) -> None:
        await self.uow.load_version(lead_id)  # read by `load`: no statement

    def observe(self, metric: Callable[[], None]) -> None:
        self.uow.after_commit(metric)

    async def flush(self) -> None:
        await PostgresClockStore(self.uow).record([event for _, event in self.recorded])
