"""Projects every event into the timeline, the lead's facts and its SLA timers, inside the
consumer's transaction (the event id is recorded in `processed_events` and the timeline in that
same transaction, so a redelivered event changes nothing). The rules are in `domain.py`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.business_hours import BusinessCalendar
from shared.config import Config
from shared.events import PAYLOADS, CloudEvent, Received, utc_iso
from shared.uow import UnitOfWork

from .domain import project_event, timers_touched_by
from .tables import lead_state, sla_timers, timeline

READ_MODELS_LOCK = "reporting.read_models"
TIMESTAMP_COLUMNS = ("received_at", "assigned_at", "first_response_at", "updated_at", "first_assigned_at",
                     "queued_at", "dequeued_at", "meeting_booked_at", "dispositioned_at")
PLAIN_COLUMNS = ("source", "tier", "status", "owner_id", "team_id", "sla", "profile", "assignment_no",
                 "first_owner_id", "first_assign_method", "reassignments", "first_touch_actor",
                 "disposition_status", "disposition_reason", "breached")
TIMER_COLUMNS = tuple(c.name for c in sla_timers.columns)


@dataclass(frozen=True)
class ReportingDeps:
    config: Config | None


async def on_event(uow: UnitOfWork, received: Received[Any], deps: ReportingDeps) -> None:
    """Every contract type is projected the same way: into the timeline, then folded (the fold
    picks its projector by payload class, see `domain.PROJECTORS`)."""
    await project(uow.conn, received.envelope, deps.config)


# Reporting keeps every event its topics carry; types outside the contract go to the timeline
# through the subscription's fallback (see bootstrap).
HANDLERS = {cls: on_event for cls in PAYLOADS.values()}


async def project(conn: AsyncConnection, event: CloudEvent, config: Config | None) -> None:
    lead_id = event.subject or event.data.get("lead_id")
    if not lead_id:
        return
    # Shared with every other live projection; a rebuild takes it exclusively (see replay.py).
    await conn.execute(select(func.pg_advisory_xact_lock_shared(func.hashtext(READ_MODELS_LOCK))))
    # The timeline is keyed by event id, so this holds even for a second consumer group or a
    # processed id already pruned by housekeeping: an event is folded at most once.
    if await record_in_timeline(conn, lead_id, event):
        await apply(conn, lead_id, event, config)


async def record_in_timeline(conn: AsyncConnection, lead_id: str, event: CloudEvent) -> bool:
    """True when the event is new to the timeline."""
    inserted = await conn.execute(pg_insert(timeline).values(
        event_id=event.id, lead_id=lead_id, type=event.type, source=event.source, time=event.time,
        correlation_id=event.correlationid, causation_id=event.causationid, data=event.data,
    ).on_conflict_do_nothing().returning(timeline.c.event_id))
    return inserted.first() is not None


async def apply(conn: AsyncConnection, lead_id: str, event: CloudEvent, config: Config | None) -> None:
    """Fold one event into the read models derived from the timeline."""
    row = (await conn.execute(
        select(lead_state).where(lead_state.c.lead_id == lead_id).with_for_update()
    )).mappings().first()
    current = _as_wire(dict(row)) if row else {"lead_id": lead_id}
    needed = timers_touched_by(event)
    timers: dict[str, dict[str, Any]] = {}
    if needed is not None:
        which = (sla_timers.c.sla_id == event.data["sla_id"]) if needed == "one" else (
            (sla_timers.c.lead_id == lead_id) & (sla_timers.c.metric == "first_response"))
        rows = (await conn.execute(select(sla_timers).where(which).with_for_update())).mappings().all()
        timers = {r["sla_id"]: dict(r) for r in rows}
    new, changed = project_event(current, timers, event, calendars(config))
    values = lead_values(new)
    await conn.execute(pg_insert(lead_state).values(lead_id=lead_id, **values)
                       .on_conflict_do_update(index_elements=[lead_state.c.lead_id], set_=values))
    for timer in changed:
        row_values = timer_values(timer)
        await conn.execute(pg_insert(sla_timers).values(**row_values)
                           .on_conflict_do_update(index_elements=[sla_timers.c.sla_id], set_=row_values))


def lead_values(lead: dict[str, Any]) -> dict[str, Any]:
    """The lead's facts as column values (without lead_id)."""
    values = {k: lead.get(k) for k in PLAIN_COLUMNS}
    values.update({k: _instant(lead.get(k)) for k in TIMESTAMP_COLUMNS})
    return values


def timer_values(timer: dict[str, Any]) -> dict[str, Any]:
    return {k: timer.get(k) for k in TIMER_COLUMNS}


def calendars(config: Config | None) -> Callable[[str | None], BusinessCalendar | None]:
    """policy id -> its business calendar, built once per policy."""
    cache: dict[str | None, BusinessCalendar | None] = {}

    def calendar_of(policy_id: str | None) -> BusinessCalendar | None:
        if policy_id not in cache:
            cache[policy_id] = _policy_calendar(config, policy_id)
        return cache[policy_id]

    return calendar_of


def _policy_calendar(config: Config | None, policy_id: str | None) -> BusinessCalendar | None:
    """Business time is measured on the policy's calendar; an unknown policy falls back to wall time."""
    if config is None:
        return None
    policy = next((p for p in config.sla_policies if p.id == policy_id), None)
    return BusinessCalendar(config.calendar(policy.calendar)) if policy else None


def _instant(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _as_wire(row: dict[str, Any]) -> dict[str, Any]:
    """Database row -> the JSON-ish shape `fold` works on (timestamps as RFC 3339 strings)."""
    return {k: utc_iso(v) if isinstance(v, datetime) else v for k, v in row.items()}
