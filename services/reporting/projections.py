"""Projects every event into the timeline, the lead's facts and its SLA timers, inside the
consumer's transaction (the event id is recorded in `processed_events` and the timeline in that
same transaction, so a redelivered event changes nothing). The rules are in `domain.py`."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from leadsla.shared.business_hours import BusinessCalendar
from leadsla.shared.config import Config
from leadsla.shared.events import CloudEvent, utc_iso

from .domain import fold, fold_timer, is_touch, with_response
from .tables import lead_state, sla_timers, timeline

TIMESTAMP_COLUMNS = ("received_at", "assigned_at", "first_response_at", "updated_at", "first_assigned_at",
                     "queued_at", "dequeued_at", "meeting_booked_at", "dispositioned_at")
PLAIN_COLUMNS = ("source", "tier", "status", "owner_id", "team_id", "sla", "profile", "assignment_no",
                 "first_owner_id", "first_assign_method", "reassignments", "first_touch_actor",
                 "disposition_status", "disposition_reason", "breached")
TIMER_COLUMNS = tuple(c.name for c in sla_timers.columns)


async def project(conn: AsyncConnection, event: CloudEvent, config: Config | None) -> None:
    lead_id = event.subject or event.data.get("lead_id")
    if not lead_id:
        return
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
    """Fold one event into the read models derived from the timeline (live and in a rebuild)."""
    row = (await conn.execute(
        select(lead_state).where(lead_state.c.lead_id == lead_id).with_for_update()
    )).mappings().first()
    current = _as_wire(dict(row)) if row else {"lead_id": lead_id}
    new = fold(current, event)
    values = {k: new.get(k) for k in PLAIN_COLUMNS}
    values.update({k: _instant(new.get(k)) for k in TIMESTAMP_COLUMNS})
    await conn.execute(pg_insert(lead_state).values(lead_id=lead_id, **values)
                       .on_conflict_do_update(index_elements=[lead_state.c.lead_id], set_=values))
    first_touch = _instant(new.get("first_response_at"))

    if event.type.startswith("sla.") and event.data.get("sla_id") and event.data.get("metric"):
        timer = (await conn.execute(
            select(sla_timers).where(sla_timers.c.sla_id == event.data["sla_id"]).with_for_update()
        )).mappings().first()
        await _save_timer(conn, fold_timer(dict(timer) if timer else None, event), first_touch, config)
    elif event.type == "activity.recorded" and is_touch(event.data):
        # A late touch still answers the lead: it sets TTFR on a timer that already breached.
        timers = (await conn.execute(select(sla_timers).where(
            sla_timers.c.lead_id == lead_id, sla_timers.c.metric == "first_response").with_for_update()
        )).mappings().all()
        for timer in timers:
            await _save_timer(conn, dict(timer), first_touch, config)


async def _save_timer(conn: AsyncConnection, timer: dict[str, Any], first_touch: datetime | None,
                      config: Config | None) -> None:
    timer = with_response(timer, first_touch, _policy_calendar(config, timer.get("policy_id")))
    values = {k: timer.get(k) for k in TIMER_COLUMNS}
    await conn.execute(pg_insert(sla_timers).values(**values)
                       .on_conflict_do_update(index_elements=[sla_timers.c.sla_id], set_=values))


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
