"""The SLA clock's service layer: start timers, apply touches, fire what is due.
Timers live in Postgres, so a restart loses none and fires each once: the state change and
the event it emits commit in one transaction."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from leadsla.shared import metrics
from leadsla.shared.business_hours import BusinessCalendar
from leadsla.shared.config import Config, SlaPolicy
from leadsla.shared.events import (
    TOPIC_SLA,
    ActivityRecorded,
    CloudEvent,
    LeadAssigned,
    LeadReceived,
    SlaEventData,
    deterministic_id,
    new_event,
)
from leadsla.shared.uow import UnitOfWork

from .domain import (
    Breached,
    ClockRules,
    Met,
    Step,
    Timer,
    Warned,
    breach_root_cause,
    compute_deadline,
    judge,
    judging_horizon,
    root_cause,
    select_policy,
    touch,
    touch_time,
    warning_schedule,
)
from .tables import leads, timers

SERVICE = "sla_clock"
METRIC = "first_response"


async def on_lead_received(uow: UnitOfWork, config: Config, version: int, event: CloudEvent,
                           now: datetime, rules: ClockRules = ClockRules()) -> None:
    lead = event.data_as(LeadReceived)
    facts = {"tier": lead.tier, "source": lead.source, "contactable": lead.contactable,
             "received_at": lead.received_at, "correlation_id": event.correlationid}
    # Upsert: an assignment that overtook this event may have created the row with less to go on.
    row = (await uow.conn.execute(
        pg_insert(leads).values(lead_id=lead.lead_id, **facts)
        .on_conflict_do_update(index_elements=[leads.c.lead_id], set_=facts).returning(leads)
    )).one()
    policy = select_policy(config, lead.tier, lead.source)
    if policy is not None and policy.start_on == "received":
        await _start(uow, config, version, row, policy, lead.received_at, None, event, now, rules)


async def on_lead_assigned(uow: UnitOfWork, config: Config, version: int, event: CloudEvent,
                           now: datetime, rules: ClockRules = ClockRules()) -> None:
    assigned = event.data_as(LeadAssigned)
    lead = await _lead(uow, assigned.lead_id)
    if lead is None:
        # The assignment overtook the lead on another topic; the router only assigns known leads,
        # so record what the assignment tells us and start from there.
        await uow.conn.execute(pg_insert(leads).values(
            lead_id=assigned.lead_id, tier=assigned.tier or "unknown", source="unknown", contactable=True,
            received_at=assigned.assigned_at, correlation_id=event.correlationid,
        ).on_conflict_do_nothing())
        lead = await _lead(uow, assigned.lead_id)
    assert lead is not None
    await uow.conn.execute(update(leads).where(leads.c.lead_id == lead.lead_id).values(owner_id=assigned.owner_id))
    await uow.conn.execute(
        update(timers).where(timers.c.lead_id == lead.lead_id, timers.c.state == "open")
        .values(owner_id=assigned.owner_id)
    )
    policy = select_policy(config, lead.tier, lead.source)
    if policy is not None and policy.start_on == "assigned":
        await _start(uow, config, version, lead, policy, assigned.assigned_at, assigned.owner_id, event, now,
                     rules)


async def on_activity(uow: UnitOfWork, config: Config, event: CloudEvent, now: datetime,
                      rules: ClockRules = ClockRules()) -> None:
    activity = event.data_as(ActivityRecorded)
    # Dated by intake's acceptance (the event's time), so a touch that reached us late still counts
    # from when it was made; the sender's own occurred_at only within a bounded skew before that.
    at = touch_time(activity.occurred_at, event.time, now, rules.touch_skew)
    lead = await _lead(uow, activity.lead_id)
    if lead is None:
        return
    policy = select_policy(config, lead.tier, lead.source)
    if policy is None or activity.type not in policy.qualifying_touches:
        return
    if lead.first_touch_at is None or at < lead.first_touch_at:
        await uow.conn.execute(update(leads).where(leads.c.lead_id == lead.lead_id).values(first_touch_at=at))
    row = await _open_timer(uow, lead.lead_id)
    if row is not None:
        await _apply(uow, config, lead, row, touch(_timer(row), at), event, now, rules)


async def fire_due(uow: UnitOfWork, config: Config, now: datetime, *, seen: datetime | None,
                   rules: ClockRules = ClockRules(), limit: int = 200) -> int:
    """Emit every warning and breach due by what the clock has seen (`seen`: its inputs are consumed
    up to there; see domain.judge); rows are locked so replicas never double-fire."""
    horizon = judging_horizon(now, seen, rules.tolerance)
    rows = (await uow.conn.execute(
        select(timers).where(timers.c.state == "open", timers.c.next_fire_at <= horizon)
        .order_by(timers.c.next_fire_at).limit(limit).with_for_update(skip_locked=True)
    )).all()
    by_id = {lead.lead_id: lead for lead in (await uow.conn.execute(
        select(leads).where(leads.c.lead_id.in_([r.lead_id for r in rows]))
    )).all()} if rows else {}
    for row in rows:
        await _apply(uow, config, by_id.get(row.lead_id), row, judge(_timer(row), now, seen, rules.tolerance),
                     None, now, rules)
    return len(rows)


async def next_due(uow: UnitOfWork) -> datetime | None:
    return await uow.conn.scalar(select(func.min(timers.c.next_fire_at)).where(timers.c.state == "open"))


async def open_timer_counts(uow: UnitOfWork) -> list[tuple[str, str, int]]:
    rows = await uow.conn.execute(
        select(timers.c.metric, timers.c.tier, func.count()).where(timers.c.state == "open")
        .group_by(timers.c.metric, timers.c.tier)
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def _start(
    uow: UnitOfWork, config: Config, version: int, lead: Row, policy: SlaPolicy, start: datetime,
    owner_id: str | None, cause: CloudEvent, now: datetime, rules: ClockRules,
) -> None:
    lead_id = lead.lead_id
    calendar = BusinessCalendar(config.calendar(policy.calendar))
    target = policy.metrics[METRIC]
    sla_id = deterministic_id("sla", lead_id, METRIC)
    timer = Timer(
        sla_id=sla_id, lead_id=lead_id, metric=METRIC, policy_id=policy.id, policy_version=version,
        owner_id=owner_id, tier=lead.tier, started_at=start,
        due_at=compute_deadline(start, target.target, calendar),
        warnings=warning_schedule(start, target.target, target.warn_at, calendar),
    )
    inserted = await uow.conn.execute(pg_insert(timers).values(
        sla_id=sla_id, lead_id=lead_id, metric=METRIC, policy_id=policy.id, policy_version=version,
        calendar=policy.calendar, owner_id=owner_id, tier=lead.tier, started_at=start, due_at=timer.due_at,
        warnings=[[pct, at.isoformat()] for pct, at in timer.warnings], warned=[], state="open",
        next_fire_at=timer.next_fire_at,
    ).on_conflict_do_nothing().returning(timers.c.sla_id))
    if inserted.first() is None:
        return  # this lead's timer already runs
    uow.emit(TOPIC_SLA, _event("sla.started", timer, cause, lead.correlation_id, now))
    if lead.first_touch_at is not None:  # the touch arrived before the clock started
        row = await _open_timer(uow, lead_id)
        assert row is not None
        await _apply(uow, config, lead, row, touch(_timer(row), max(lead.first_touch_at, start)), cause, now,
                     rules)


async def _apply(
    uow: UnitOfWork, config: Config, lead: Row | None, row: Row, step: Step, cause: CloudEvent | None,
    now: datetime, rules: ClockRules,
) -> None:
    """Store the timer's new state and emit its outcomes; `lead` is the caller's row for it."""
    if not step.outcomes:
        return
    timer = step.timer
    correlation = lead.correlation_id if lead else None
    values: dict = {"state": timer.state, "warned": list(timer.warned), "next_fire_at": timer.next_fire_at}
    for outcome in step.outcomes:
        if isinstance(outcome, Warned):
            uow.emit(TOPIC_SLA, _event("sla.warning", timer, cause, correlation, now, percent=outcome.percent))
            metrics.sla_warnings.labels(timer.metric, timer.tier).inc()
        elif isinstance(outcome, Breached):
            cause_code = breach_root_cause(_root_cause(timer, lead, config), timer.due_at, now, rules.tolerance)
            values.update(closed_at=now, root_cause=cause_code)
            uow.emit(TOPIC_SLA, _event("sla.breached", timer, cause, correlation, now,
                                       breached_at=outcome.at, root_cause=cause_code))
            metrics.sla_breaches.labels(timer.metric, timer.tier, cause_code).inc()
            metrics.sla_breach_lag.observe(max((now - timer.due_at).total_seconds(), 0))
        elif isinstance(outcome, Met):
            values.update(closed_at=outcome.at)
            uow.emit(TOPIC_SLA, _event("sla.met", timer, cause, correlation, now, met_at=outcome.at))
            metrics.sla_met.labels(timer.metric, timer.tier).inc()
            metrics.time_to_first_response.labels(timer.tier).observe(
                max((outcome.at - timer.started_at).total_seconds(), 0))
    await uow.conn.execute(update(timers).where(timers.c.sla_id == row.sla_id).values(**values))


def _root_cause(timer: Timer, lead: Row | None, config: Config) -> str:
    owner_calendar = None
    if timer.owner_id:
        owner = config.owner(timer.owner_id)
        if owner is not None and owner.calendar:
            owner_calendar = BusinessCalendar(config.calendar(owner.calendar))
    return root_cause(owner_id=timer.owner_id, contactable=bool(lead.contactable) if lead else True,
                      owner_calendar=owner_calendar, due_at=timer.due_at)


def _event(kind: str, timer: Timer, cause: CloudEvent | None, correlation_id: str | None, now: datetime,
           **extra: object) -> CloudEvent:
    suffix = kind if "percent" not in extra else f"{kind}.{extra['percent']}"
    return new_event(
        kind, service=SERVICE, lead_id=timer.lead_id, time=now, cause=cause, correlation_id=correlation_id,
        # Derived from the timer: the same transition always carries the same id.
        event_id=deterministic_id(timer.sla_id, suffix),
        data=SlaEventData(lead_id=timer.lead_id, sla_id=timer.sla_id, metric=timer.metric,
                          policy_id=timer.policy_id, policy_version=timer.policy_version,
                          owner_id=timer.owner_id, started_at=timer.started_at, due_at=timer.due_at,
                          tier=timer.tier, **extra),
    )


def _timer(row: Row) -> Timer:
    return Timer(
        sla_id=row.sla_id, lead_id=row.lead_id, metric=row.metric, policy_id=row.policy_id,
        policy_version=row.policy_version, owner_id=row.owner_id, tier=row.tier, started_at=row.started_at,
        due_at=row.due_at, warnings=tuple((int(p), datetime.fromisoformat(at)) for p, at in row.warnings),
        warned=tuple(int(p) for p in row.warned), state=row.state,
    )


async def _lead(uow: UnitOfWork, lead_id: str) -> Row | None:
    return (await uow.conn.execute(select(leads).where(leads.c.lead_id == lead_id))).first()


async def _open_timer(uow: UnitOfWork, lead_id: str) -> Row | None:
    return (await uow.conn.execute(
        select(timers).where(timers.c.lead_id == lead_id, timers.c.metric == METRIC, timers.c.state == "open")
        .with_for_update()
    )).first()
