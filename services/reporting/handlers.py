"""Reporting's one handler: an event, kept in the lead's timeline, folded into the lead's facts
and its SLA timers. Short orchestration through a `ReadModelStore`; the rules are in
`domain.py`, the SQL in `adapters.py`."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.business_hours import BusinessCalendar
from shared.config import Config
from shared.events import CloudEvent

from .domain import project_event, timers_touched_by

if TYPE_CHECKING:
    from .adapters import ReadModelStore

CalendarOf = Callable[[str | None], BusinessCalendar | None]


async def project(store: ReadModelStore, event: CloudEvent, calendar_of: CalendarOf) -> bool:
    """Fold one event into the read models; False when it changed nothing (no lead, or seen before)."""
    lead_id = event.subject or event.data.get("lead_id")
    if not lead_id or not await store.add_to_timeline(lead_id, event):
        return False
    lead = await store.lead(lead_id) or {"lead_id": lead_id}
    timers = await _timers(store, lead_id, event)
    new, changed = project_event(lead, timers, event, calendar_of)
    await store.save(new, changed)
    return True


async def _timers(store: ReadModelStore, lead_id: str, event: CloudEvent) -> dict[str, dict]:
    match timers_touched_by(event):
        case "one":
            return await store.timers(lead_id, sla_id=event.data["sla_id"])
        case "first_response":
            return await store.timers(lead_id, metric="first_response")
        case _:
            return {}


def calendars(config: Config | None) -> CalendarOf:
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
