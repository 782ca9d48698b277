"""Reporting's one handler: a run of events, kept in their leads' timelines, folded into the
leads' facts and their SLA timers. Short orchestration through a `ReadModelStore`; the rules are in
`domain.py`, the SQL in `adapters.py`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shared.business_hours import BusinessCalendar
from shared.config import Config
from shared.events import CloudEvent

from .domain import fold_events

if TYPE_CHECKING:
    from .adapters import ReadModelStore

CalendarOf = Callable[[str | None], BusinessCalendar | None]


async def project(store: ReadModelStore, events: Sequence[CloudEvent], calendar_of: CalendarOf) -> int:
    """Fold a run of events, in order, into the read models: kept in their leads' timelines, then
    the leads and their timers read once, folded in memory and written once. Returns how many
    changed something (an event without a lead, or seen before, changes nothing)."""
    entries = []
    for event in events:
        lead_id = event.subject or event.data.get("lead_id")
        if lead_id:
            entries.append((lead_id, event if event.subject else event.model_copy(update={"subject": lead_id})))
    fresh = await store.add_to_timeline(entries)
    todo = [event for _, event in entries if event.id in fresh]
    if not todo:
        return 0
    lead_ids = {event.subject for event in todo}
    leads, timers = await store.leads(lead_ids), await store.timers(lead_ids)
    changed_leads, changed_timers = fold_events(todo, calendar_of, leads, timers)
    await store.save([leads[i] for i in changed_leads],
                     [t for own in timers.values() for sla_id, t in own.items() if sla_id in changed_timers])
    return len(todo)


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
