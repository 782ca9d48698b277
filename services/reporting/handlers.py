"""Reporting's one handler: a run of events, kept in their leads' timelines, folded into the
leads' facts and their SLA timers. Short orchestration through a `ReadModelStore`; the rules are in
`domain.py`, the SQL in `adapters.py`."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from shared.business_hours import BusinessCalendar, business_calendar
from shared.config import TOUCH_SKEW, Config, SlaPolicy, metric_calendar
from shared.events import CloudEvent

from .domain import fold_events, is_touch

if TYPE_CHECKING:
    from .adapters import ReadModelStore

async def project(store: ReadModelStore, events: Sequence[CloudEvent], rules: PolicyRules,
                  touch_skew: timedelta = TOUCH_SKEW) -> int:
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
    changed_leads, changed_timers = fold_events(todo, rules, leads, timers, touch_skew)
    await store.save([leads[i] for i in changed_leads],
                     [t for own in timers.values() for sla_id, t in own.items() if sla_id in changed_timers])
    return len(todo)


class PolicyRules:
    """What reporting needs of the SLA policies: a timer's business calendar (called like a
    function, built once per calendar and zone), and whether an activity answers a lead's first
    response."""

    def __init__(self, config: Config | None) -> None:
        self._config = config
        self._calendars: dict[tuple[str | None, str | None, str | None, str | None], BusinessCalendar | None] = {}
        self._policies: dict[tuple[str, str], SlaPolicy | None] = {}

    def __call__(self, timer: dict[str, Any]) -> BusinessCalendar | None:
        key = (timer.get("policy_id"), timer.get("metric"), timer.get("calendar"), timer.get("timezone"))
        if key not in self._calendars:
            self._calendars[key] = _timer_calendar(self._config, *key)
        return self._calendars[key]

    def answers(self, lead: dict[str, Any], activity: dict[str, Any]) -> bool:
        """A first response under the lead's policy (the one the SLA clock judges it by: tier and
        source); any touch when no policy is known."""
        tier, source = lead.get("tier"), lead.get("source")
        if self._config is None or tier is None or source is None:
            return is_touch(activity)
        if (tier, source) not in self._policies:
            self._policies[(tier, source)] = self._config.sla_policy(tier, source)
        policy = self._policies[(tier, source)]
        if policy is None:
            return is_touch(activity)
        return policy.counts_as_touch("first_response", activity.get("type"), activity.get("outcome"),
                                      activity.get("actor"), lead.get("owner_id"))

    def team_of(self, owner_id: str) -> str | None:
        """The first team the configuration lists the owner in (the router's home team of an
        owner no rule picked)."""
        if self._config is None:
            return None
        return next((team.id for team in self._config.teams if owner_id in team.members), None)


def calendars(config: Config | None) -> PolicyRules:
    """The policies' calendars and touch rules, each built once."""
    return PolicyRules(config)


def _timer_calendar(config: Config | None, policy_id: str | None, metric: str | None, calendar: str | None,
                    timezone: str | None) -> BusinessCalendar | None:
    """Business time is measured on the calendar and in the zone the SLA clock timed the timer by
    (its sla.* events say); for a timer that does not say, the metric's calendar (else the
    policy's) in its own zone. An unknown policy falls back to wall time."""
    if config is None:
        return None
    if calendar is None:
        policy = config.sla_policy_by_id(policy_id)
        if policy is None:
            return None
        calendar = metric_calendar(policy, metric) if metric in policy.metrics else policy.calendar
    return business_calendar(config, calendar, timezone)
