"""Where reporting's read models live: the store interface the handler writes through, its
Postgres implementation, and an in-memory one for handler unit tests (both pass the same
contract suite, tests/contracts/reporting_store.py).

A lead's facts travel as the JSON-ish dict `domain.fold` works on (timestamps as RFC 3339
strings); a timer as the dict `domain.fold_timer` works on (timestamps as datetimes), which is
also its row."""
from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.events import CloudEvent, utc_iso

from .tables import lead_state, sla_timers, timeline

READ_MODELS_LOCK = "reporting.read_models"
TIMESTAMP_COLUMNS = ("received_at", "assigned_at", "first_response_at", "updated_at", "first_assigned_at",
                     "queued_at", "dequeued_at", "meeting_booked_at", "dispositioned_at")
PLAIN_COLUMNS = ("source", "tier", "status", "owner_id", "team_id", "sla", "profile", "assignment_no",
                 "first_owner_id", "first_assign_method", "reassignments", "first_touch_actor",
                 "disposition_status", "disposition_reason", "breached")
TIMER_COLUMNS = tuple(c.name for c in sla_timers.columns)


class ReadModelStore(Protocol):
    """Reporting's read models, within one transaction (the consumer's)."""

    async def add_to_timeline(self, lead_id: str, event: CloudEvent) -> bool:
        """Keep the event in the lead's timeline; False when it is there already (a redelivery),
        in which case nothing else may change."""
        ...

    async def lead(self, lead_id: str) -> dict[str, Any] | None:
        """The lead's facts, held until the transaction ends; None for a lead not seen yet."""
        ...

    async def timers(self, lead_id: str, *, sla_id: str | None = None,
                     metric: str | None = None) -> dict[str, dict[str, Any]]:
        """sla id -> timer row: the one timer `sla_id` names, or the lead's timers of `metric`."""
        ...

    async def save(self, lead: dict[str, Any], timers: list[dict[str, Any]]) -> None:
        """Write the lead's facts and the timers that changed (insert or replace)."""
        ...


def lead_values(lead: dict[str, Any]) -> dict[str, Any]:
    """The lead's facts as column values (without lead_id)."""
    values = {k: lead.get(k) for k in PLAIN_COLUMNS}
    values.update({k: _instant(lead.get(k)) for k in TIMESTAMP_COLUMNS})
    return values


def timer_values(timer: dict[str, Any]) -> dict[str, Any]:
    return {k: timer.get(k) for k in TIMER_COLUMNS}


def _instant(value: str | datetime | None) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else value or None


def as_wire(row: dict[str, Any]) -> dict[str, Any]:
    """Database row -> the JSON-ish shape `fold` works on (timestamps as RFC 3339 strings)."""
    return {k: utc_iso(v) if isinstance(v, datetime) else v for k, v in row.items()}


class PostgresReadModels:
    """The read models in reporting's schema, on the consumer's connection and transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add_to_timeline(self, lead_id: str, event: CloudEvent) -> bool:
        # Shared with every other live projection; a rebuild takes it exclusively (see replay.py).
        await self._conn.execute(select(func.pg_advisory_xact_lock_shared(func.hashtext(READ_MODELS_LOCK))))
        # Keyed by event id, so this holds even for a second consumer group or a processed id
        # already pruned by housekeeping: an event is folded at most once.
        inserted = await self._conn.execute(pg_insert(timeline).values(
            event_id=event.id, lead_id=lead_id, type=event.type, source=event.source, time=event.time,
            correlation_id=event.correlationid, causation_id=event.causationid, data=event.data,
        ).on_conflict_do_nothing().returning(timeline.c.event_id))
        return inserted.first() is not None

    async def lead(self, lead_id: str) -> dict[str, Any] | None:
        row = (await self._conn.execute(
            select(lead_state).where(lead_state.c.lead_id == lead_id).with_for_update()
        )).mappings().first()
        return as_wire(dict(row)) if row else None

    async def timers(self, lead_id: str, *, sla_id: str | None = None,
                     metric: str | None = None) -> dict[str, dict[str, Any]]:
        which = (sla_timers.c.sla_id == sla_id) if sla_id is not None else (
            (sla_timers.c.lead_id == lead_id) & (sla_timers.c.metric == metric))
        rows = (await self._conn.execute(select(sla_timers).where(which).with_for_update())).mappings().all()
        return {r["sla_id"]: dict(r) for r in rows}

    async def save(self, lead: dict[str, Any], timers: list[dict[str, Any]]) -> None:
        values = lead_values(lead)
        await self._conn.execute(pg_insert(lead_state).values(lead_id=lead["lead_id"], **values)
                                 .on_conflict_do_update(index_elements=[lead_state.c.lead_id], set_=values))
        for timer in timers:
            row = timer_values(timer)
            await self._conn.execute(pg_insert(sla_timers).values(**row)
                                     .on_conflict_do_update(index_elements=[sla_timers.c.sla_id], set_=row))


class InMemoryReadModels:
    """The same contract in dicts, for handler unit tests. Rows are stored as the Postgres store
    would return them (a lead's timestamps as RFC 3339 strings, copies on the way in and out), so
    a handler cannot pass with the fake and fail on Postgres by sharing a dict it mutates."""

    def __init__(self) -> None:
        self.timeline: dict[str, tuple[str, CloudEvent]] = {}  # event id -> (lead id, event)
        self.leads: dict[str, dict[str, Any]] = {}
        self.sla_timers: dict[str, dict[str, Any]] = {}

    async def add_to_timeline(self, lead_id: str, event: CloudEvent) -> bool:
        if event.id in self.timeline:
            return False
        self.timeline[event.id] = (lead_id, event)
        return True

    async def lead(self, lead_id: str) -> dict[str, Any] | None:
        found = self.leads.get(lead_id)
        return None if found is None else copy.deepcopy(found)

    async def timers(self, lead_id: str, *, sla_id: str | None = None,
                     metric: str | None = None) -> dict[str, dict[str, Any]]:
        if sla_id is not None:
            found = self.sla_timers.get(sla_id)
            return {} if found is None else {sla_id: dict(found)}
        return {k: dict(t) for k, t in self.sla_timers.items() if t["lead_id"] == lead_id and t["metric"] == metric}

    async def save(self, lead: dict[str, Any], timers: list[dict[str, Any]]) -> None:
        # Through the column mapping and back, as a row round trip through Postgres would go.
        self.leads[lead["lead_id"]] = as_wire({"lead_id": lead["lead_id"], **copy.deepcopy(lead_values(lead))})
        for timer in timers:
            self.sla_timers[timer["sla_id"]] = timer_values(timer)
