"""The SLA clock's service layer: start timers, apply touches, fire what is due.
Timers live in Postgres, so a restart loses none and fires each once: the state change and
the event it emits commit in one transaction. The state (timers, leads) is a projection of the
clock's own events (projection.py): handlers load it through a `ClockStore` (adapters.py: Postgres,
or an in-memory fake in unit tests), decide (domain.py), then record events, and the same
projector that replay runs writes the tables. A handler of an input event expects the lead's
stream at the version it read, so two writers racing on one lead conflict and the loser is
retried from fresh state; the timer loop relies on its row locks instead (SKIP LOCKED)."""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import PrivateAttr

from shared import metrics, tracing
from shared.business_hours import BusinessCalendar, business_calendar
from shared.clock import is_time_zone
from shared.config import Config, SlaPolicy, is_history, metric_calendar, touch_time
from shared.events import (
    SLA_PAYLOADS,
    ActivityRecorded,
    CloudEvent,
    LeadAssigned,
    LeadQueued,
    LeadReassigned,
    LeadReceived,
    LeadUpdated,
    Received,
    deterministic_id,
    new_event,
    utc_iso,
)

from .domain import (
    LEAD_NOTED,
    OWNER_CHANGED,
    POLICY_CHANGED,
    TIMER_NOTED,
    Breached,
    Cancelled,
    ClockRules,
    LeadFacts,
    Met,
    OwnerChanged,
    Paused,
    Resumed,
    Settled,
    Started,
    Step,
    Timer,
    TimerRecord,
    Warned,
    breach_root_cause,
    cancel,
    catch_up,
    clock_start,
    follow_up,
    judge,
    judging_horizon,
    metric_on_reassign,
    metric_start_on,
    metric_zone,
    pause,
    replan,
    restart,
    resume,
    root_cause,
    select_policy,
    settle,
    start_timer,
    tick,
    touch,
    touch_counts,
)

if TYPE_CHECKING:
    from .adapters import ClockStore

# A stored row of the timers or leads table, columns as attributes (see adapters.ClockStore).
Row = Any

SERVICE = "sla_clock"
FIRST_RESPONSE, NEXT_ACTION, QUALIFICATION = "first_response", "next_action", "qualification"
# These start with the lead's clock; next_action starts at the first response instead.
CLOCK_METRICS = (FIRST_RESPONSE, QUALIFICATION)
# A disposition with this status takes the lead out of the funnel: every timer is cancelled.
DISQUALIFIED = "disqualified"
LIVE = ("open", "paused")


@dataclass(frozen=True)
class SlaDeps:
    """What the clock's event handlers are given besides the event, taken when the event is
    handled: the configuration and its version, the time, the lateness rules."""

    config: Config
    version: int
    now: datetime
    rules: ClockRules = ClockRules()


async def on_lead_received(store: ClockStore, received: Received[LeadReceived], deps: SlaDeps) -> None:
    event, lead = received.envelope, received.data
    config, version, now, rules = deps.config, deps.version, deps.now, deps.rules
    await store.expect_lead(lead.lead_id)
    facts = {"tier": lead.tier, "source": lead.source, "contactable": lead.contactable,
             "received_at": lead.received_at, "correlation_id": event.correlationid,
             "traceparent": event.traceparent, "timezone": _valid_zone(lead.contact.timezone)}
    # An assignment that overtook this event may have noted the lead with less to go on.
    row = await _note_lead(store, lead.lead_id, event, now, facts, **facts)
    if not lead.consent.contact:
        # Never consented to contact: the state a withdrawn consent leaves (`on_lead_updated`), so
        # nothing is timed, breached or escalated; what an overtaking assignment started ends.
        await _leave(store, config, row, "opted_out", max(event.time, row.assigned_at or event.time), event, now,
                     rules)
        return
    policy = select_policy(config, lead.tier, lead.source)
    if policy is not None:
        # The owner an overtaking assignment noted: a timer started now is theirs, not nobody's.
        await _start_all(store, config, version, row, policy, lead.received_at, row.owner_id, event, now, rules,
                         "received")


async def on_lead_assigned(store: ClockStore, received: Received[LeadAssigned], deps: SlaDeps) -> None:
    event, assigned = received.envelope, received.data
    config, version, now, rules = deps.config, deps.version, deps.now, deps.rules
    await store.expect_lead(assigned.lead_id)
    lead = await store.lead(assigned.lead_id)
    # Running timers (a queued lead's) go to the owner with sla_clock.owner_changed; with none to
    # hand over, the owner is one more fact in the lead's note (one stored event less per lead).
    handover = bool(await store.timers(assigned.lead_id, LIVE)) if lead is not None else False
    owner = {} if handover else {"owner_id": assigned.owner_id}
    # If the assignment overtook the lead on another topic (the router only assigns known leads),
    # note what the assignment tells us and start from there.
    await _note_lead(store, assigned.lead_id, event, now, {
        "tier": assigned.tier or "unknown", "source": "unknown", "contactable": True,
        "received_at": assigned.assigned_at, "correlation_id": event.correlationid, "traceparent": event.traceparent,
    }, team_id=assigned.team_id, assigned_at=(lead.assigned_at if lead and lead.assigned_at else assigned.assigned_at),
        **owner)
    if handover:
        await _set_owner(store, assigned.lead_id, assigned.owner_id, event, now)
    lead = await store.lead(assigned.lead_id)
    assert lead is not None
    policy = select_policy(config, lead.tier, lead.source)
    if policy is not None:
        await _start_all(store, config, version, lead, policy, assigned.assigned_at, assigned.owner_id, event, now,
                         rules, "assigned")


async def on_lead_queued(store: ClockStore, received: Received[LeadQueued], deps: SlaDeps) -> None:
    """No lead falls through: a lead nobody could take is timed from its receipt, owned by nobody,
    so its breach names the cause (no_owner, or capacity when every eligible owner was full)."""
    event, queued = received.envelope, received.data
    config, version, now, rules = deps.config, deps.version, deps.now, deps.rules
    await store.expect_lead(queued.lead_id)
    lead = await _note_lead(store, queued.lead_id, event, now, {
        "tier": queued.tier, "source": "unknown", "contactable": True, "received_at": event.time,
        "correlation_id": event.correlationid, "traceparent": event.traceparent,
    }, queued_reason=queued.reason)
    if lead.owner_id is not None:
        # Taken from its owner into the queue: they no longer have it, so a breach from here is
        # the queue's (no_owner, capacity), not theirs to be blamed and escalated for.
        await _set_owner(store, queued.lead_id, None, event, now)
        lead = await store.lead(queued.lead_id)
    policy = select_policy(config, lead.tier, lead.source)
    if policy is not None and lead.owner_id is None:
        await _start_all(store, config, version, lead, policy, lead.received_at, None, event, now, rules, None)


async def on_lead_reassigned(store: ClockStore, received: Received[LeadReassigned], deps: SlaDeps) -> None:
    """The new owner takes over the running timers; with on_reassign: reset, from scratch."""
    event, moved = received.envelope, received.data
    config, now, rules = deps.config, deps.now, deps.rules
    await store.expect_lead(moved.lead_id)
    lead = await store.lead(moved.lead_id)
    if lead is None:
        return
    await _set_owner(store, lead.lead_id, moved.to_owner_id, event, now)
    policy = select_policy(config, lead.tier, lead.source)
    if policy is None:
        return
    for row in await store.timers(lead.lead_id, LIVE):
        if metric_on_reassign(policy, row.metric) != "reset":
            continue
        # A reset reads the calendar in the new owner's zone, if the metric follows the owner.
        zone = _zone(config, policy, row.metric, lead, moved.to_owner_id)
        timer = _timer(row)
        step = restart(replace(timer, owner_id=moved.to_owner_id), policy, event.time,
                       business_calendar(config, row.calendar, zone))
        await _apply(store, config, lead, row, step, event, now, rules, timezone=zone)


async def on_activity(store: ClockStore, received: Received[ActivityRecorded], deps: SlaDeps) -> None:
    event, activity = received.envelope, received.data
    config, now, rules = deps.config, deps.now, deps.rules
    # Dated by intake's acceptance (the event's time), so a touch that reached us late still counts
    # from when it was made; the sender's own occurred_at only within a bounded skew before that.
    at = touch_time(activity.occurred_at, event.time, now, rules.touch_skew)
    await store.expect_lead(activity.lead_id)
    lead = await store.lead(activity.lead_id)
    if lead is None or lead.closed_reason is not None:
        return
    policy = select_policy(config, lead.tier, lead.source)
    if policy is None:
        return
    rows = await store.timers(lead.lead_id, None)

    if activity.type in ("pause", "resume"):
        for row in rows:
            timer = _timer(row)
            step = (pause(timer, at) if activity.type == "pause"
                    else resume(timer, at, business_calendar(config, row.calendar, row.timezone)))
            await _apply(store, config, lead, row, step, event, now, rules)
        return
    leaving = "opted_out" if activity.type == "opt_out" else DISQUALIFIED if activity.disqualifies else None
    if leaving is not None:
        await _leave(store, config, lead, leaving, at, event, now, rules)
        return

    def counts(metric: str) -> bool:
        return touch_counts(policy, metric, activity.type, activity.outcome, activity.actor, lead.owner_id)

    # History is judged on the sender's own time, not on `touch_time`, which brings an old date
    # forward to within the skew of its acceptance and so into a clock that started minutes ago.
    if is_history(activity.occurred_at, lead.received_at):
        return  # a touch from before the lead came: it answers nothing the clock times
    first = counts(FIRST_RESPONSE)
    ends_cadence = activity.is_disposition or (activity.type == "meeting" and activity.outcome == "booked")
    first_ever = first and lead.first_touch_at is None
    # The lead is paused if any of its timers is (a response while paused meets its timer, which
    # then no longer says so): a cadence that starts now starts paused too.
    paused = any(row.state == "paused" for row in rows)
    if first and (lead.first_touch_at is None or at < lead.first_touch_at):
        await _note_lead(store, lead.lead_id, event, now, None, first_touch_at=at)
    for row in rows:
        if row.metric not in policy.metrics:
            continue  # decided under a policy the lead's tier no longer selects
        timer = _timer(row)
        if is_history(activity.occurred_at, timer.started_at):
            continue  # made before this timer's clock began (a follow-up step, a reset): not its touch
        if row.metric == FIRST_RESPONSE and first:
            step = touch(timer, at)
            if first_ever and (timer.state == "breached" or step.timer.state == "breached"):
                # A late first response is a response time too: Grafana shows the real distribution.
                store.observe(partial(metrics.time_to_first_response.labels(timer.tier, "breached").observe,
                                      max((at - timer.started_at).total_seconds(), 0)))
        elif row.metric == QUALIFICATION and activity.is_disposition:
            step = touch(timer, at)
        elif row.metric == NEXT_ACTION and (ends_cadence or counts(NEXT_ACTION)):
            step = follow_up(timer, policy, at, lead.first_touch_at or at,
                             business_calendar(config, row.calendar, row.timezone), ends_cadence=ends_cadence)
        else:
            continue
        await _apply(store, config, lead, row, step, event, now, rules)
    if first_ever and rows and NEXT_ACTION in policy.metrics and not ends_cadence:
        # The cadence of follow-ups starts at the first response, unless that response already
        # ends it (a booked meeting, a disposition): no buyer is left to chase.
        cadence = await _start_one(store, config, rows[0].policy_version, lead, policy, NEXT_ACTION, at,
                                   lead.owner_id, event, now)
        if cadence is not None and paused:
            await _apply(store, config, lead, cadence, pause(_timer(cadence), at), event, now, rules)


async def on_lead_updated(store: ClockStore, received: Received[LeadUpdated], deps: SlaDeps) -> None:
    """A lead changed (PATCH, a repeat with higher intent, an opt-out): a withdrawn consent ends
    its timers as an opt-out does; a new tier that selects another policy re-plans them."""
    event, updated = received.envelope, received.data
    config, version, now, rules = deps.config, deps.version, deps.now, deps.rules
    await store.expect_lead(updated.lead_id)
    lead = await store.lead(updated.lead_id)
    if lead is None:
        return  # lead.received precedes it on the same partition: a lead we never timed
    at = min(event.time, now)
    if updated.withdraws_consent:
        await _leave(store, config, lead, "opted_out", at, event, now, rules)
        return
    before = select_policy(config, lead.tier, lead.source)
    lead = await _note_lead(store, lead.lead_id, event, now, None, tier=updated.tier, contactable=updated.contactable)
    policy = select_policy(config, lead.tier, lead.source)
    if lead.closed_reason is not None or (before and before.id) == (policy and policy.id):
        return  # out of the funnel, or the same policy: the timers stand as they are
    current = [r for r in await store.timers(lead.lead_id, None) if r.reason != POLICY_CHANGED]
    starts = {metric: clock_start(policy, metric, received_at=lead.received_at,
                                  # assigned before assigned_at was kept: receipt, never a later start
                                  assigned_at=lead.assigned_at or (lead.received_at if lead.owner_id else None),
                                  first_touch_at=lead.first_touch_at,
                                  unowned_timed=lead.owner_id is None and lead.queued_reason is not None)
              for metric in (policy.metrics if policy else {})}
    ended, successors = replan([_timer(r) for r in current], policy, at, starts)
    lead_paused = any(r.state == "paused" for r in current)  # the lead is, if any of its timers is
    rows = {r.sla_id: r for r in current}
    for timer, step in ended:
        await _apply(store, config, lead, rows[timer.sla_id], step, event, now, rules)
    for successor in successors:
        assert policy is not None
        row = await _start_one(store, config, version, lead, policy, successor.metric, successor.start, lead.owner_id,
                               event, now, step=successor.step, paused_seconds=successor.paused_seconds,
                               paused_since=successor.paused_since, paused_until=at)
        if row is None:
            continue
        step = catch_up(_timer(row), at)
        if lead_paused and step.timer.state == "open":  # a paused lead stays paused, new metrics too
            paused = pause(step.timer, at)
            step = Step(paused.timer, (*step.outcomes, *paused.outcomes))
        await _apply(store, config, lead, row, step, event, now, rules)


async def fire_due(store: ClockStore, config: Config, now: datetime, *, seen: datetime | None,
                   rules: ClockRules = ClockRules(), limit: int = 200, ready: Ready | None = None) -> int:
    """Emit every warning and breach due by what the clock has seen (`seen`: its inputs are consumed
    up to there; see domain.judge); rows are locked so replicas never double-fire. A breach drafted
    ahead (`ready`, see prepare_due) from the rows as they still are is only stamped."""
    horizon = judging_horizon(now, seen, rules.confirm_wait)
    due = await store.due(horizon, limit)
    drafts = {sla_id: draft for sla_id, version in due
              if ready is not None and (draft := ready.take(sla_id, version, config)) is not None}
    rows = await store.timers_by_id([sla_id for sla_id, _ in due if sla_id not in drafts])
    by_id = await store.leads({r.lead_id for r in rows.values()})
    # Set-based: the whole batch's events are recorded at once, one upsert for all its timers.
    events: list[CloudEvent] = []
    for sla_id, _ in due:
        draft = drafts.get(sla_id)
        if draft is not None:
            events.append(_stamp(draft, now, rules, store.observe))
            continue
        row = rows[sla_id]
        lead, timer = by_id.get(row.lead_id), _timer(row)
        with tracing.use(lead.traceparent if lead is not None else None):  # the lead's trace, not a new one
            events += _outcomes(config, lead, row, judge(timer, now, seen, rules.confirm_wait), None, now, rules,
                                store.observe, before=timer)
    await store.record(events)
    return len(due)


@dataclass(frozen=True)
class _Drafted:
    version: str  # of the timer's and its lead's rows it was drafted from (see ClockStore.due)
    due_at: datetime
    config: Config
    draft: BreachDraft


class Ready:
    """Breaches drafted ahead of their deadlines (prepare_due), each with the version of the rows
    and the configuration it was drafted from: its event is a function of those (and of the
    moment, which `_stamp` adds), so fire_due takes a draft only while they are unchanged (a
    touch, a pause, a new owner or a new lead fact since: it builds the breach afresh). In memory
    only: nothing is lost with it, a restarted clock builds its breaches at the deadline."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.drafts: dict[str, _Drafted] = {}
        # (next_fire_at, sla_id) of the last timer read ahead: the next read goes on from there.
        self.read_to: tuple[datetime, str] | None = None

    def take(self, sla_id: str, version: str, config: Config) -> BreachDraft | None:
        drafted = self.drafts.pop(sla_id, None)
        if drafted is None or drafted.version != version or drafted.config is not config:
            return None
        return drafted.draft

    def forget(self, horizon: datetime) -> None:
        """Drop the drafts due by `horizon` that a round did not take: their timers changed, or
        another replica fired them."""
        self.drafts = {k: d for k, d in self.drafts.items() if d.due_at > horizon}

    def room(self) -> int:
        return max(self.capacity - len(self.drafts), 0)


async def prepare_due(store: ClockStore, config: Config, ready: Ready, since: datetime, until: datetime,
                      limit: int) -> int:
    """Draft the breaches of open timers due from `since` to `until` (a read ahead of the deadline,
    no lock taken), `limit` timers at a time after those read before; how many timers it read. One
    due before `since` is built when it falls due: drafting it would cost as much, and hold up the
    rounds firing what is due meanwhile."""
    after = max(ready.read_to or (since, ""), (since, ""))
    ahead = await store.ahead(after, until, min(limit, ready.room()))
    # Read after the versions: a lead written in between is newer than its version says (not taken).
    by_id = await store.leads({row.lead_id for row, _ in ahead})
    for row, version in ahead:
        if row.next_fire_at != row.due_at:
            continue  # a warning comes first: it and the breach are decided when due
        lead, timer = by_id.get(row.lead_id), _timer(row)
        with tracing.use(lead.traceparent if lead is not None else None):
            draft = _draft_breach(config, lead, row, tick(timer, timer.due_at), None, timer)
        ready.drafts[row.sla_id] = _Drafted(version, row.due_at, config, draft)
    if ahead:
        last = ahead[-1][0]
        ready.read_to = (last.next_fire_at, last.sla_id)
    return len(ahead)


async def next_due(store: ClockStore) -> datetime | None:
    return await store.next_due()


async def open_timer_counts(store: ClockStore) -> list[tuple[str, str, int]]:
    return await store.open_counts()


async def _start_all(
    store: ClockStore, config: Config, version: int, lead: Row, policy: SlaPolicy, start: datetime,
    owner_id: str | None, cause: CloudEvent, now: datetime, rules: ClockRules, start_on: str | None,
) -> None:
    """Start the metrics that start on `start_on` (None: all of them, as for a queued lead)."""
    if lead.closed_reason is not None:
        return  # opted out or disqualified: nothing more to time
    for metric in CLOCK_METRICS:
        if metric in policy.metrics and start_on in (None, metric_start_on(policy, metric)):
            await _start_one(store, config, version, lead, policy, metric, start, owner_id, cause, now)
    if lead.first_touch_at is None:
        return
    # The touch arrived before the clock started.
    at = max(lead.first_touch_at, start)
    row = (await store.timers(lead.lead_id, ("open",), FIRST_RESPONSE)) or None
    if row is not None:
        await _apply(store, config, lead, row[0], touch(_timer(row[0]), at), cause, now, rules)
    if NEXT_ACTION in policy.metrics:
        await _start_one(store, config, version, lead, policy, NEXT_ACTION, at, owner_id, cause, now)


async def _start_one(
    store: ClockStore, config: Config, version: int, lead: Row, policy: SlaPolicy, metric: str, start: datetime,
    owner_id: str | None, cause: CloudEvent, now: datetime, *, step: int = 1, paused_seconds: float = 0.0,
    paused_since: datetime | None = None, paused_until: datetime | None = None,
) -> Row | None:
    """Start the lead's timer for the metric, unless one already runs (or ran); the stored row.
    `paused_since`..`paused_until`: a pause its predecessor was in, counted in this timer's calendar."""
    earlier = await store.reasons(lead.lead_id, metric)
    if any(reason != POLICY_CHANGED for reason in earlier):
        return None
    # The first timer of a metric keeps its historic id; a successor after a tier change is numbered.
    sla_id = deterministic_id("sla", lead.lead_id, metric, *([str(len(earlier))] if earlier else []))
    name, zone = metric_calendar(policy, metric), _zone(config, policy, metric, lead, owner_id)
    calendar = business_calendar(config, name, zone)
    if paused_since is not None and paused_until is not None:
        paused_seconds += calendar.elapsed(paused_since, max(paused_until, paused_since))
    timer = start_timer(sla_id, lead.lead_id, metric, policy, version, owner_id, lead.tier, start, calendar, step,
                        paused_seconds, cadence_start=lead.first_touch_at)
    state = {"calendar": name, "timezone": zone, "closed_at": None, "root_cause": None, "reason": None,
             **_columns(timer)}
    # A concurrent start of the same timer makes this command conflict at commit (the lead's
    # stream moved): it is retried and then finds the timer started.
    await store.record([_event("sla.started", timer, cause, lead.correlation_id, now, state=state)])
    return await store.timer(sla_id)


async def _leave(store: ClockStore, config: Config, lead: Row, reason: str, at: datetime, cause: CloudEvent,
                 now: datetime, rules: ClockRules) -> None:
    """The lead left the funnel (opted out, disqualified): every timer ends, none starts again."""
    await _note_lead(store, lead.lead_id, cause, now, None, closed_reason=lead.closed_reason or reason)
    for row in await store.timers(lead.lead_id, (*LIVE, "breached")):
        timer = _timer(row)
        await _apply(store, config, lead, row, settle(timer) if row.state == "breached" else cancel(timer, reason, at),
                     cause, now, rules)


def _columns(timer: Timer) -> dict:
    return {"policy_id": timer.policy_id, "policy_version": timer.policy_version, "tier": timer.tier,
            "owner_id": timer.owner_id, "started_at": timer.started_at, "due_at": timer.due_at,
            "warnings": list(timer.warnings), "warned": list(timer.warned),
            "state": timer.state, "next_fire_at": timer.next_fire_at, "target_seconds": timer.target_seconds,
            "paused_at": timer.paused_at, "paused_seconds": timer.paused_seconds, "step": timer.step,
            "exhausts_at": timer.exhausts_at}


# The stored columns a step leaves as they were unless one of its outcomes sets them.
_KEPT = ("calendar", "timezone", "closed_at", "root_cause", "reason")


async def _apply(
    store: ClockStore, config: Config, lead: Row | None, row: Row, step: Step, cause: CloudEvent | None,
    now: datetime, rules: ClockRules, *, timezone: str | None = None,
) -> None:
    """Record the step's outcomes, which carry the timer's new state; `lead` is the caller's row for it."""
    await store.record(_outcomes(config, lead, row, step, cause, now, rules, store.observe, timezone=timezone))


def _outcomes(
    config: Config, lead: Row | None, row: Row, step: Step, cause: CloudEvent | None, now: datetime,
    rules: ClockRules, observe: Callable[[Callable[[], None]], None], *, timezone: str | None = None,
    before: Timer | None = None,
) -> list[CloudEvent]:
    """The sla.* events of a step, each carrying the timer as the whole step leaves it (so that the
    last one recorded is the row's state); `timezone`: the zone its calendar is now read in;
    `before`: the row's timer, when the caller has it already. Metrics go to `observe`, counted
    once the step has committed."""
    if not step.outcomes:
        return []
    timer, before = step.timer, before or _timer(row)
    if isinstance(step.outcomes[0], Breached):  # a breach is always its step's only outcome
        return [_stamp(_draft_breach(config, lead, row, step, cause, before, timezone=timezone), now, rules, observe)]
    correlation = lead.correlation_id if lead else None
    state = {name: getattr(row, name) for name in _KEPT}
    state.update(_columns(timer))
    if timezone is not None:
        state["timezone"] = timezone
    # Each event carries the timer as its own transition left it: a follow-up met (step 1) and the
    # next one started (step 2) in one step were both sent with step 2's record.
    events: list[tuple[str, Timer, dict, dict]] = []
    for outcome in step.outcomes:
        if isinstance(outcome, Warned):
            events.append(("sla.warning", timer, {"percent": outcome.percent}, dict(state)))
            observe(metrics.sla_warnings.labels(timer.metric, timer.tier).inc)
        elif isinstance(outcome, Met):
            met = {**state, **_columns(replace(before, state="met")), "closed_at": outcome.at}
            state.update(closed_at=outcome.at)
            events.append(("sla.met", before, {"met_at": outcome.at}, met))
            observe(metrics.sla_met.labels(timer.metric, timer.tier).inc)
            if timer.metric == FIRST_RESPONSE:
                observe(partial(metrics.time_to_first_response.labels(timer.tier, "met").observe,
                                max((outcome.at - before.started_at).total_seconds(), 0)))
        elif isinstance(outcome, Paused):
            events.append(("sla.paused", timer, {"at": outcome.at, "paused_at": outcome.at}, dict(state)))
        elif isinstance(outcome, Resumed):
            events.append(("sla.resumed", timer, {"at": outcome.at, "resumed_at": outcome.at}, dict(state)))
        elif isinstance(outcome, Cancelled):
            cancelled: dict[str, object] = {"reason": outcome.reason}
            if before.state == "breached":  # a missed follow-up's cadence ended: the miss stands,
                cancelled["breached_at"] = before.due_at  # closed when the clock judged it
                state.update(reason=outcome.reason)
            else:
                state.update(closed_at=now, reason=outcome.reason)
            events.append(("sla.cancelled", timer, cancelled, dict(state)))
        elif isinstance(outcome, Settled):
            events.append((TIMER_NOTED, timer, {}, dict(state)))
        elif isinstance(outcome, Started):
            state.update(closed_at=None, root_cause=None)
            events.append(("sla.started", timer, {"at": outcome.at}, dict(state)))
    return [_noted(subject, cause, now, record) if kind == TIMER_NOTED
            else _event(kind, subject, cause, correlation, now, state=record, **extra)
            for kind, subject, extra, record in events]


class _Stamped(CloudEvent):
    """A breach's event as `_stamp` makes it: its bytes spliced from the draft's, which were
    serialised once, ahead (to_bytes gives the same bytes as serialising it again)."""

    _raw: bytes | None = PrivateAttr(default=None)

    def to_bytes(self) -> bytes:
        raw = self.__pydantic_private__["_raw"]  # type: ignore[index]  # not `self._raw`: a slow path in pydantic
        return raw if raw is not None else super().to_bytes()


# Marks where a draft's serialised event takes what `_stamp` adds; per process, so no value can be one.
_MARK = f"\ue000{uuid.uuid4().hex}"
_CLOSED_AT, _ROOT_CAUSE = (f"{_MARK}:{name}".encode() for name in ("closed_at", "root_cause"))
_MARKED = re.compile(b'"(' + re.escape(_MARK.encode()) + b':[a-z_]+)"')


@dataclass(frozen=True)
class BreachDraft:
    """A breach's event built but for what depends on the moment it leaves: its time, the timer's
    closed_at, and its root cause (system_delay once it leaves `tolerance` late; `person_cause`
    before that). `_stamp` finishes it, in microseconds."""

    event: _Stamped  # time, closed_at and root_cause to be stamped
    person_cause: str
    noticed: datetime  # when the clock could first know: the breach's lateness counts from here
    metric: str
    tier: str
    # The event serialised: up to its time, then alternately what follows and a mark's name.
    pieces: tuple[bytes, ...]


def _draft_breach(config: Config, lead: Row | None, row: Row, step: Step, cause: CloudEvent | None,
                  before: Timer, *, timezone: str | None = None) -> BreachDraft:
    outcome = step.outcomes[0]
    assert isinstance(outcome, Breached) and len(step.outcomes) == 1
    state = {name: getattr(row, name) for name in _KEPT}
    state.update(_columns(step.timer), closed_at=None, root_cause=None)
    if timezone is not None:
        state["timezone"] = timezone
    # Stamped with the deadline for now; `_stamp` sets the moment (the keys keep their places).
    event = _event("sla.breached", before, cause, lead.correlation_id if lead else None, before.due_at,
                   state=state, breached_at=outcome.at, root_cause=None)
    data, closed_at, root_cause = event.data, _CLOSED_AT.decode(), _ROOT_CAUSE.decode()
    marked = {**data, "root_cause": root_cause,
              "timer": {**data["timer"], "closed_at": closed_at, "root_cause": root_cause}}
    # The envelope's time comes before `data`: its first occurrence.
    head, _, rest = event.model_copy(update={"data": marked}).to_bytes().partition(_time_field(event.time))
    return BreachDraft(_Stamped.model_validate(dict(event)), _root_cause(before, lead, config),
                       outcome.noticed or before.due_at, step.timer.metric, step.timer.tier,
                       (head, *_MARKED.split(rest)))


def _time_field(at: datetime) -> bytes:
    return b'"time":"' + utc_iso(at).encode() + b'"'


def _stamp(draft: BreachDraft, now: datetime, rules: ClockRules,
           observe: Callable[[Callable[[], None]], None]) -> CloudEvent:
    """The breach's event as it leaves at `now`: the same as built at `now` from the start."""
    cause_code = breach_root_cause(draft.person_cause, draft.noticed, now, rules.tolerance, rules.input_outages)
    observe(_breaches(draft.metric, draft.tier, cause_code).inc)
    observe(partial(metrics.sla_breach_lag.observe, max((now - draft.noticed).total_seconds(), 0)))
    at = utc_iso(now)
    data = draft.event.data
    stamped = {**data, "root_cause": cause_code, "timer": {**data["timer"], "closed_at": at, "root_cause": cause_code}}
    event = draft.event.model_copy(update={"time": now, "data": stamped})
    values = {_CLOSED_AT: orjson.dumps(at), _ROOT_CAUSE: orjson.dumps(cause_code)}
    head, *rest = draft.pieces
    event.__pydantic_private__["_raw"] = b"".join(  # type: ignore[index]
        (head, _time_field(now), *(values[p] if i % 2 else p for i, p in enumerate(rest))))
    return event


@cache
def _breaches(metric: str, tier: str, cause: str) -> Any:
    """The breach counter's child for these labels, looked up once (a burst counts thousands)."""
    return metrics.sla_breaches.labels(metric, tier, cause)


def _root_cause(timer: Timer, lead: Row | None, config: Config) -> str:
    owner_calendar = None
    if timer.owner_id:
        owner = config.owner(timer.owner_id)
        hours = config.owner_hours(owner) if owner is not None else None
        if hours is not None:
            owner_calendar = BusinessCalendar(hours)
    return root_cause(owner_id=timer.owner_id, contactable=bool(lead.contactable) if lead else True,
                      owner_calendar=owner_calendar, due_at=timer.due_at,
                      queued_reason=lead.queued_reason if lead else None)


def _noted(timer: Timer, cause: CloudEvent | None, now: datetime, state: dict) -> CloudEvent:
    """sla_clock.timer_noted: the timer's new record, kept in the store only (no news to publish)."""
    return new_event(TIMER_NOTED, service=SERVICE, lead_id=timer.lead_id, time=now, cause=cause,
                     # Named by what caused it: handled again, the same event.
                     event_id=deterministic_id(timer.sla_id, TIMER_NOTED, cause.id if cause else utc_iso(now)),
                     data={"lead_id": timer.lead_id, "sla_id": timer.sla_id, "metric": timer.metric,
                           "timer": TimerRecord.wire(**state)})


def _event(kind: str, timer: Timer, cause: CloudEvent | None, correlation_id: str | None, now: datetime,
           *, state: dict, at: datetime | None = None, **extra: object) -> CloudEvent:
    # Derived from the timer: the same transition always carries the same id. A run of the timer
    # (a cadence step, a reset) is named by its start; pauses and resumes by their moment.
    suffix = kind if "percent" not in extra else f"{kind}.{extra['percent']}"
    suffix += f"@{utc_iso(timer.started_at)}"
    if at is not None:
        suffix += f"@{utc_iso(at)}"
    if timer.metric == NEXT_ACTION:
        extra["step"] = timer.step
    return new_event(
        kind, service=SERVICE, lead_id=timer.lead_id, time=now, cause=cause, correlation_id=correlation_id,
        event_id=deterministic_id(timer.sla_id, suffix),
        # Built from the timer's typed fields: in wire form directly, without validating again.
        data=SLA_PAYLOADS[kind.removeprefix("sla.")].wire(
            lead_id=timer.lead_id, sla_id=timer.sla_id, metric=timer.metric, policy_id=timer.policy_id,
            policy_version=timer.policy_version, owner_id=timer.owner_id, started_at=timer.started_at,
            due_at=timer.due_at, tier=timer.tier, timer=TimerRecord.wire(**state), **extra),
    )


def _timer(row: Row) -> Timer:
    return Timer(
        sla_id=row.sla_id, lead_id=row.lead_id, metric=row.metric, policy_id=row.policy_id,
        policy_version=row.policy_version, owner_id=row.owner_id, tier=row.tier, started_at=row.started_at,
        due_at=row.due_at, warnings=tuple((int(p), datetime.fromisoformat(at)) for p, at in row.warnings),
        warned=tuple(int(p) for p in row.warned), state=row.state, target_seconds=row.target_seconds,
        paused_at=row.paused_at, paused_seconds=row.paused_seconds, step=row.step, exhausts_at=row.exhausts_at,
    )


def _zone(config: Config, policy: SlaPolicy, metric: str, lead: Row, owner_id: str | None) -> str | None:
    def calendar_zone(name: str | None) -> str | None:
        return config.calendar(name).timezone if name else None

    owner = config.owner(owner_id) if owner_id else None
    owner_hours = config.owner_hours(owner) if owner else None
    team = next((t for t in config.teams if t.id == lead.team_id), None)
    return metric_zone(policy, metric, owner_zone=owner_hours.timezone if owner_hours else None,
                       lead_zone=lead.timezone, team_zone=calendar_zone(team.calendar if team else None))


def _valid_zone(name: str | None) -> str | None:
    """contact.timezone is kept as sent: use it only if it is a real IANA zone."""
    return name if name and is_time_zone(name) else None


async def _note_lead(store: ClockStore, lead_id: str, cause: CloudEvent, now: datetime,
                     defaults: dict | None, **changes: object) -> Row | None:
    """Note new facts about a lead (sla_clock.lead_noted, the whole record); `defaults`: the record
    of a lead not known yet (None: note nothing about an unknown lead). The lead's row after it."""
    row = await store.lead(lead_id)
    if row is None and defaults is None:
        return None
    current = dict(row._mapping) if row is not None else {"lead_id": lead_id, **defaults}  # type: ignore[arg-type]
    if row is not None and all(current[k] == v for k, v in changes.items()):
        return row  # nothing new
    # The row's stored values and the handlers' typed ones: in wire form directly, without validating again.
    facts = LeadFacts.wire(**{**current, **changes})
    await store.record([new_event(LEAD_NOTED, service=SERVICE, lead_id=lead_id, time=now, cause=cause,
                                  event_id=deterministic_id(cause.id, LEAD_NOTED, lead_id), data=facts)])
    return await store.lead(lead_id)


async def _set_owner(store: ClockStore, lead_id: str, owner_id: str | None, cause: CloudEvent,
                     now: datetime) -> None:
    """The lead and its running timers go to `owner_id` (sla_clock.owner_changed; None: to nobody),
    but a timer already past its deadline when the change was made (`cause`'s time) stays with
    the owner who missed it, until the clock judges it."""
    await store.record([new_event(OWNER_CHANGED, service=SERVICE, lead_id=lead_id, time=now, cause=cause,
                                  event_id=deterministic_id(cause.id, OWNER_CHANGED, lead_id),
                                  data=OwnerChanged.wire(lead_id=lead_id, owner_id=owner_id, as_of=cause.time))])


# What the clock does with each payload class it consumes (bound to a store and SlaDeps in bootstrap).
HANDLERS = {
    LeadReceived: on_lead_received,
    LeadAssigned: on_lead_assigned,
    ActivityRecorded: on_activity,
    LeadQueued: on_lead_queued,
    LeadReassigned: on_lead_reassigned,
    LeadUpdated: on_lead_updated,
}
