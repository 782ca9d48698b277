"""Where reporting's read models live: the store interface the handler writes through, its
Postgres implementation, and an in-memory one for handler unit tests (both pass the same
contract suite, tests/contracts/reporting_store.py).

A lead's facts travel as the JSON-ish dict `domain.fold` works on (timestamps as RFC 3339
strings); a timer as the dict `domain.fold_timer` works on (timestamps as datetimes), which is
also its row."""
from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, Protocol

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql.dml import Insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db import any_text, insert_rows, json_rows, xact_lock_shared_waiting
from shared.events import CloudEvent, utc_iso

from .tables import lead_state, sla_timers, timeline

READ_MODELS_LOCK = "reporting.read_models"
# How long a live projection waits for a rebuild to end (`leadsla replay reporting`).
REBUILD_WAIT_SECONDS = 24 * 3600
TIMESTAMP_COLUMNS = ("received_at", "assigned_at", "first_response_at", "updated_at", "first_assigned_at",
                     "queued_at", "dequeued_at", "meeting_booked_at", "dispositioned_at")
PLAIN_COLUMNS = ("source", "tier", "status", "owner_id", "team_id", "sla", "profile", "assignment_no",
                 "first_owner_id", "first_assign_method", "reassignments", "first_touch_actor",
                 "disposition_status", "disposition_reason", "breached", "first_team_id")
# Plain str (SQLAlchemy's names are a str subclass, which the JSON of a statement's rows refuses as keys).
LEAD_COLUMNS = tuple(str(c.name) for c in lead_state.columns)
TIMER_COLUMNS = tuple(str(c.name) for c in sla_timers.columns)


class ReadModelStore(Protocol):
    """Reporting's read models, within one transaction (the consumer's). Everything goes a run of
    events at a time: one statement per table for a whole fetched batch, not per event."""

    async def add_to_timeline(self, entries: Sequence[tuple[str, CloudEvent]]) -> set[str]:
        """Keep each (lead id, event) in its lead's timeline; the ids of the events that were not
        there yet (a redelivered one is, and nothing else may change for it)."""
        ...

    async def leads(self, lead_ids: Collection[str]) -> dict[str, dict[str, Any]]:
        """lead id -> the lead's facts, held until the transaction ends; leads not seen yet are
        absent."""
        ...

    async def timers(self, lead_ids: Collection[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """lead id -> sla id -> timer row: every timer of those leads, held likewise."""
        ...

    async def save(self, leads: Iterable[dict[str, Any]], timers: Iterable[dict[str, Any]]) -> None:
        """Write the leads' facts and the timers that changed (insert or replace)."""
        ...


def lead_row(lead: dict[str, Any]) -> list[Any]:
    """The lead's facts as column values, in LEAD_COLUMNS order (a rebuild COPYs thousands)."""
    row = list(_lead_columns({**_NO_FACTS, **lead}))
    for i in _INSTANT_INDEXES:
        value = row[i]
        if value.__class__ is str:  # the fold keeps instants as RFC 3339 strings
            row[i] = datetime.fromisoformat(value) if value else None
    return row


def lead_values(lead: dict[str, Any]) -> dict[str, Any]:
    """The lead's facts as column values, by column name."""
    return dict(zip(LEAD_COLUMNS, lead_row(lead), strict=True))


def timer_row(timer: dict[str, Any]) -> tuple[Any, ...]:
    """The timer as column values, in TIMER_COLUMNS order."""
    return _timer_columns({**_NO_TIMER, **timer})  # type: ignore[no-any-return]


def timer_values(timer: dict[str, Any]) -> dict[str, Any]:
    return dict(zip(TIMER_COLUMNS, timer_row(timer), strict=True))


# Absent facts are NULL; the getters pick a row's values in one call.
_NO_FACTS, _NO_TIMER = dict.fromkeys(LEAD_COLUMNS), dict.fromkeys(TIMER_COLUMNS)
_lead_columns, _timer_columns = itemgetter(*LEAD_COLUMNS), itemgetter(*TIMER_COLUMNS)
_INSTANT_INDEXES = tuple(i for i, name in enumerate(LEAD_COLUMNS) if name in TIMESTAMP_COLUMNS)


def as_wire(row: dict[str, Any]) -> dict[str, Any]:
    """Database row -> the JSON-ish shape `fold` works on (timestamps as RFC 3339 strings)."""
    return {k: utc_iso(v) if isinstance(v, datetime) else v for k, v in row.items()}


class PostgresReadModels:
    """The read models in reporting's schema, on the consumer's connection and transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add_to_timeline(self, entries: Sequence[tuple[str, CloudEvent]]) -> set[str]:
        if not entries:
            return set()
        # Shared with every other live projection; a rebuild takes it exclusively (see replay.py)
        # for as long as it runs, which may be longer than the statement timeout.
        await xact_lock_shared_waiting(self._conn, READ_MODELS_LOCK, up_to=REBUILD_WAIT_SECONDS)
        # Keyed by event id, so this holds even for a second consumer group or a processed id
        # already pruned by housekeeping: an event is folded at most once.
        inserted = await self._conn.execute(_KEEP_IN_TIMELINE, {"rows": json_rows([
            {"event_id": event.id, "lead_id": lead_id, "type": event.type, "source": event.source,
             "time": event.time, "correlation_id": event.correlationid, "causation_id": event.causationid,
             "data": event.data} for lead_id, event in entries])})
        return set(inserted.scalars())

    async def leads(self, lead_ids: Collection[str]) -> dict[str, dict[str, Any]]:
        # In id order: two projectors locking overlapping leads cannot deadlock.
        rows = (await self._conn.execute(
            select(lead_state).where(lead_state.c.lead_id == any_text(sorted(lead_ids)))
            .order_by(lead_state.c.lead_id).with_for_update()
        )).mappings().all()
        return {r["lead_id"]: as_wire(dict(r)) for r in rows}

    async def timers(self, lead_ids: Collection[str]) -> dict[str, dict[str, dict[str, Any]]]:
        rows = (await self._conn.execute(
            select(sla_timers).where(sla_timers.c.lead_id == any_text(sorted(lead_ids)))
            .order_by(sla_timers.c.sla_id).with_for_update()
        )).mappings().all()
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for r in rows:
            found.setdefault(r["lead_id"], {})[r["sla_id"]] = dict(r)
        return found

    async def save(self, leads: Iterable[dict[str, Any]], timers: Iterable[dict[str, Any]]) -> None:
        lead_rows = [lead_values(lead) for lead in leads]
        if lead_rows:
            await self._conn.execute(_SAVE_LEADS, {"rows": json_rows(lead_rows)})
        timer_rows = [timer_values(timer) for timer in timers]
        if timer_rows:
            await self._conn.execute(_SAVE_TIMERS, {"rows": json_rows(timer_rows)})


# A run's rows in one statement each that compiles once whatever the run's length (a multi-row
# VALUES compiled anew for every run was a third of the consumer's CPU; an executemany runs a
# statement per row).
_KEEP_IN_TIMELINE = (insert_rows(timeline, ("event_id", "lead_id", "type", "source", "time", "correlation_id",
                                            "causation_id", "data"))
                     .on_conflict_do_nothing().returning(timeline.c.event_id))


def _upsert(table: Table, key: str, updated: Iterable[str]) -> Insert:
    statement = insert_rows(table, [c.name for c in table.columns])
    return statement.on_conflict_do_update(index_elements=[table.c[key]],
                                           set_={name: statement.excluded[name] for name in updated})


_SAVE_LEADS = _upsert(lead_state, "lead_id", (*PLAIN_COLUMNS, *TIMESTAMP_COLUMNS))
_SAVE_TIMERS = _upsert(sla_timers, "sla_id", (name for name in TIMER_COLUMNS if name != "sla_id"))


class InMemoryReadModels:
    """The same contract in dicts, for handler unit tests. Rows are stored as the Postgres store
    would return them (a lead's timestamps as RFC 3339 strings, copies on the way in and out), so
    a handler cannot pass with the fake and fail on Postgres by sharing a dict it mutates."""

    def __init__(self) -> None:
        self.timeline: dict[str, tuple[str, CloudEvent]] = {}  # event id -> (lead id, event)
        self.leads_by_id: dict[str, dict[str, Any]] = {}
        self.sla_timers: dict[str, dict[str, Any]] = {}

    async def add_to_timeline(self, entries: Sequence[tuple[str, CloudEvent]]) -> set[str]:
        kept = set()
        for lead_id, event in entries:
            if event.id not in self.timeline:
                self.timeline[event.id] = (lead_id, event)
                kept.add(event.id)
        return kept

    async def leads(self, lead_ids: Collection[str]) -> dict[str, dict[str, Any]]:
        return {i: copy.deepcopy(self.leads_by_id[i]) for i in lead_ids if i in self.leads_by_id}

    async def timers(self, lead_ids: Collection[str]) -> dict[str, dict[str, dict[str, Any]]]:
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for sla_id, timer in self.sla_timers.items():
            if timer["lead_id"] in lead_ids:
                found.setdefault(timer["lead_id"], {})[sla_id] = dict(timer)
        return found

    async def save(self, leads: Iterable[dict[str, Any]], timers: Iterable[dict[str, Any]]) -> None:
        # Through the column mapping and back, as a row round trip through Postgres would go.
        for lead in leads:
            self.leads_by_id[lead["lead_id"]] = as_wire(copy.deepcopy(lead_values(lead)))
        for timer in timers:
            self.sla_timers[timer["sla_id"]] = timer_values(timer)
