"""Notifier's service layer: what each consumed event changes, and what a due step writes.

Every handler loads what it needs through a `NotifierStore` (adapters.py: Postgres, or the
in-memory fake of the unit tests), decides (domain.py) and records the notifier's own events
(`uow.record`), which the projection (projection.py) applies to the state tables: no handler
writes a table.

Consuming (inside the consumer's transaction): lead facts for messages; escalation steps planned
from sla.breached / sla.warning, each due at its delay; the rest of a chain cancelled by sla.met /
sla.cancelled, an opt-out, or a late touch that answers it; and every event copied to the CRM subscriptions that want it.

Firing (`fire_due_steps`): a due step's deliveries are made, each with its idempotency key, and
escalation.triggered is emitted, in one transaction. Sending them is `delivery.py`'s job.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Row

from shared import tracing
from shared.business_hours import BusinessCalendar
from shared.config import TOUCH_SKEW, Config, touch_time
from shared.events import (
    PAYLOADS,
    TOPIC_NOTIFICATIONS,
    ActivityRecorded,
    CloudEvent,
    EscalationTriggered,
    LeadAssigned,
    LeadQueued,
    LeadReassigned,
    LeadReceived,
    LeadUpdated,
    NotificationResult,
    Received,
    SlaBreached,
    SlaCancelled,
    SlaEventData,
    SlaStarted,
    SlaWarning,
    deterministic_id,
    new_event,
    utc_iso,
)
from shared.uow import UnitOfWork

from .adapters import DueEscalation, NotifierStore, RunUnitOfWork, postgres_store, run_store
from .domain import (
    CHAIN_STOPPING_TYPES,
    ESCALATING_TYPES,
    PEOPLE_CHANNELS,
    ChainStopped,
    DigestEntry,
    EscalationsPlanned,
    InternalEvent,
    LeadFacts,
    LeadNoted,
    Message,
    NewDelivery,
    PlannedEscalation,
    QueuedFor,
    Recipient,
    StepFired,
    SubscriptionQueued,
    answered_before,
    answers_chain,
    deliver_at,
    digest_key,
    digest_window,
    goes_to_digest,
    idempotency_key,
    is_stale_warning,
    noted_touches,
    of_an_earlier_run,
    plan_steps,
    render,
    step_recipients,
    subscribed,
    subscription_send_at,
    triggered_event_id,
)

log = structlog.get_logger()

SERVICE = "notifier"


def internal(payload: InternalEvent, *, time: datetime, stream: str | None, event_id: str | None = None,
             cause: CloudEvent | None = None) -> CloudEvent:
    """One of the notifier's own events, for its store only (recorded with topic None)."""
    event = new_event(payload.TYPE, service=SERVICE, lead_id=stream or "", data=payload, time=time, cause=cause,
                      event_id=event_id)
    return event if stream else event.model_copy(update={"subject": None})


async def record(uow: UnitOfWork, payload: InternalEvent, *, time: datetime, stream: str,
                 event_id: str | None = None, cause: CloudEvent | None = None) -> None:
    await uow.record(None, internal(payload, time=time, stream=stream, event_id=event_id, cause=cause),
                     stream=stream)


# ---- consuming ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotifierDeps:
    """What the notifier's event handlers are given besides the event."""

    config: Config
    now: datetime
    store: Callable[[UnitOfWork], NotifierStore] = field(default=postgres_store)


async def on_lead_received(uow: UnitOfWork, received: Received[LeadReceived], deps: NotifierDeps) -> None:
    lead = received.data
    name = " ".join(p for p in (lead.contact.first_name, lead.contact.last_name) if p) or None
    await _keep_facts(uow, received, deps, name=name, company=lead.company.name, tier=lead.tier,
                      source=lead.source, received_at=lead.received_at)
    await fan_out(uow, received.envelope, deps.now, store=deps.store(uow), is_received=True)


async def on_lead_assigned(uow: UnitOfWork, received: Received[LeadAssigned], deps: NotifierDeps) -> None:
    assigned = received.data
    await _keep_facts(uow, received, deps, owner_id=assigned.owner_id, routed=True,
                      **({"tier": assigned.tier} if assigned.tier else {}))
    await fan_out(uow, received.envelope, deps.now, store=deps.store(uow))


async def on_lead_reassigned(uow: UnitOfWork, received: Received[LeadReassigned], deps: NotifierDeps) -> None:
    await _keep_facts(uow, received, deps, owner_id=received.data.to_owner_id, routed=True)
    await fan_out(uow, received.envelope, deps.now, store=deps.store(uow))


async def on_lead_queued(uow: UnitOfWork, received: Received[LeadQueued], deps: NotifierDeps) -> None:
    # Taken from its owner into the queue: nobody's now, so its escalations do not go to them.
    taken = {"owner_id": None} if received.data.from_owner_id is not None else {}
    await _keep_facts(uow, received, deps, routed=True, **taken)
    await fan_out(uow, received.envelope, deps.now, store=deps.store(uow))


async def on_lead_updated(uow: UnitOfWork, received: Received[LeadUpdated], deps: NotifierDeps) -> None:
    await _keep_facts(uow, received, deps, tier=received.data.tier)
    if received.data.withdraws_consent:
        await _stop_lead_chains(uow, received, deps)
    await fan_out(uow, received.envelope, deps.now, store=deps.store(uow))


async def on_sla_escalating(uow: UnitOfWork, received: Received[SlaEventData], deps: NotifierDeps) -> None:
    """Plan every step; each fires when due (see `fire_due_steps`), unless the chain stops first.
    Steps are due their delay after the SLA event (never later than now): a notifier that read
    it late (down, lagging) sends what is already due at once instead of starting the delays over."""
    event, sla, now = received.envelope, received.data, deps.now
    store = deps.store(uow)
    if isinstance(sla, SlaWarning) and is_stale_warning(sla.due_at, now):
        # Read after its deadline (the notifier was down or behind): "due in 0 s" is no warning,
        # and the breach, if there is one, escalates on its own.
        await fan_out(uow, event, now, store=store)
        return
    if isinstance(sla, SlaBreached):
        await uow.load_version(sla.lead_id)  # a step firing for this lead meanwhile: retry from fresh state
        if await store.has_escalations(sla.sla_id):
            # The warnings' steps still to come are superseded by the breach's own chain (whose own
            # steps, planned already if this breach is read again, stay), and so are their messages
            # not sent yet (held by quiet hours, lines of a digest): "due in 5 min" after the deadline.
            await _stop_chain(uow, received, sla.lead_id, sla.sla_id, now, except_trigger=event.id)
    trigger = {"type": event.type, "event_id": event.id, "correlation_id": event.correlationid,
               "traceparent": event.traceparent, "data": sla.model_dump(mode="json", exclude_none=True)}
    steps = [PlannedEscalation(escalation_id=deterministic_id("escalation", event.id, p.policy_id, str(p.step)),
                               policy_id=p.policy_id, step=p.step, due_at=p.due_at)
             for p in plan_steps(deps.config, event.type, _happened(event, now))]
    if isinstance(sla, SlaBreached) and steps:
        known = await store.lead(sla.lead_id)
        if known is not None and answered_before(deps.config, trigger["data"], known.touches):
            steps = [step for step in steps if step.due_at <= now]  # as if the touch came just after
    if steps:
        await record(uow, EscalationsPlanned(lead_id=sla.lead_id, sla_id=sla.sla_id, trigger_event_id=event.id,
                                             trigger=trigger, planned_at=now, steps=steps),
                     time=now, stream=sla.lead_id, event_id=deterministic_id(event.id, "planned"), cause=event)
    await fan_out(uow, event, now, store=store)


def _happened(event: CloudEvent, now: datetime) -> datetime:
    """When an input event happened, as far as delays are reckoned: its time, never after now."""
    if event.time.tzinfo is None:
        return now
    return min(event.time, now)


async def on_sla_chain_stopping(uow: UnitOfWork, received: Received[SlaEventData], deps: NotifierDeps) -> None:
    sla, now = received.data, deps.now
    store = deps.store(uow)
    await uow.load_version(sla.lead_id)  # a step firing for this lead meanwhile: retry from fresh state
    if await store.has_escalations(sla.sla_id):
        # Steps not fired yet, and messages held back by quiet hours and never tried, are news
        # nobody needs any more. But a missed follow-up whose cadence then ended (sla.cancelled
        # after its breach, often at once after the last one) did breach: its steps already due
        # still go, as for a late touch, so its owner hears of the miss.
        ends_a_miss = isinstance(sla, SlaCancelled) and sla.breached_at is not None
        await _stop_chain(uow, received, sla.lead_id, sla.sla_id, now, due_after=now if ends_a_miss else None)
    await fan_out(uow, received.envelope, now, store=store)


async def on_sla_started(uow: UnitOfWork, received: Received[SlaStarted], deps: NotifierDeps) -> None:
    """A timer started again (reset on reassignment): the steps still to come of its previous
    run's chains tell of a deadline that no longer stands, so they stop (those already due go, as
    for a touch: whether the delivery loop had fired them yet must not decide it)."""
    sla = received.data
    if sla.started_at is not None:
        started_at = sla.started_at
        await _stop_lead_chains(uow, received, deps, lambda data: of_an_earlier_run(data, sla.sla_id, started_at),
                                due_after=deps.now)
    await fan_out(uow, received.envelope, deps.now, store=deps.store(uow))


async def on_activity_recorded(uow: UnitOfWork, received: Received[ActivityRecorded], deps: NotifierDeps) -> None:
    activity = received.data
    known = await deps.store(uow).lead(activity.lead_id)
    owner_id = known.owner_id if known else None
    # Steps already due when the touch is read still go, fired or not (the breach did happen, and
    # whether the delivery loop got to them first must not decide it); those still to come stop.
    if activity.leaves_the_funnel:  # a closed lead escalates no further: nobody is to work it
        await _stop_lead_chains(uow, received, deps, due_after=deps.now)
    else:
        await _stop_lead_chains(uow, received, deps, lambda sla: answers_chain(
            deps.config, sla, activity.type, activity.outcome, activity.actor, owner_id, activity.occurred_at,
            disposition=activity.is_disposition),
            due_after=deps.now)
        if activity.type not in ("pause", "resume"):  # kept for a breach read after it (answered_before)
            at = touch_time(activity.occurred_at, received.envelope.time, received.envelope.time, TOUCH_SKEW)
            await _keep_facts(uow, received, deps, touches=noted_touches(
                known.touches if known else None, type_=activity.type, outcome=activity.outcome,
                actor=activity.actor, at=at, owner_id=owner_id, disposition=activity.is_disposition))
    await fan_out(uow, received.envelope, deps.now, store=deps.store(uow))


async def _stop_lead_chains(uow: UnitOfWork, received: Received[Any], deps: NotifierDeps,
                            answered: Callable[[dict[str, Any]], bool] = lambda sla: True,
                            due_after: datetime | None = None) -> None:
    """Stop the lead's chains whose steps have not fired yet (those `answered` by this event; with
    `due_after`, their steps due after it). An opted-out lead escalates no further, and a late touch
    answers a breach: the clock cancels only running timers and a breached one ends there, so no
    sla.met or sla.cancelled stops those chains."""
    lead_id, now = received.data.lead_id, deps.now
    store = deps.store(uow)
    await uow.load_version(lead_id)  # a step firing for this lead meanwhile: retry from fresh state
    stopping = [sla_id for sla_id, sla in (await store.pending_chains(lead_id)).items() if answered(sla)]
    for sla_id in stopping:
        await _stop_chain(uow, received, lead_id, sla_id, now, sla_id, due_after=due_after)


async def _stop_chain(uow: UnitOfWork, received: Received[Any], lead_id: str, sla_id: str, now: datetime,
                      *id_parts: str, due_after: datetime | None = None, except_trigger: str | None = None) -> None:
    """Record that the SLA's steps still to come (due after `due_after`, if given; but those of
    `except_trigger`) are cancelled, because of `received` (its id and `id_parts` make the stop's
    id, so a handler run again records the same stop)."""
    await record(uow, ChainStopped(lead_id=lead_id, sla_id=sla_id, stopped_at=now, due_after=due_after,
                                   except_trigger=except_trigger), time=now,
                 stream=lead_id, event_id=deterministic_id(received.id, "stopped", *id_parts), cause=received.envelope)


async def on_notification(uow: UnitOfWork, received: Received[NotificationResult], deps: NotifierDeps) -> None:
    # A subscriber that is down would otherwise be sent the news of its own failures, forever.
    await fan_out(uow, received.envelope, deps.now, store=deps.store(uow), unless=received.data.subscription_id)


async def on_other(uow: UnitOfWork, received: Received[Any], deps: NotifierDeps) -> None:
    await fan_out(uow, received.envelope, deps.now, store=deps.store(uow))


async def _keep_facts(uow: UnitOfWork, received: Received[Any], deps: NotifierDeps, **facts: Any) -> None:
    """Keep what a message says about a lead: name, company, tier, owner."""
    lead_id = received.data.lead_id
    await record(uow, LeadNoted(lead_id=lead_id, fields=sorted(facts), **facts), time=deps.now, stream=lead_id,
                 event_id=deterministic_id(received.id, "noted"), cause=received.envelope)


async def fan_out(uow: UnitOfWork, event: CloudEvent, now: datetime, *, store: NotifierStore | None = None,
                  unless: str | None = None, is_received: bool = False) -> None:
    """Queue the event for every live subscription that asked for its type (but `unless`)."""
    store = store or postgres_store(uow)
    wanted = [(sub_id, types) for sub_id, types in await store.live_subscriptions()
              if subscribed(types, event.type) and sub_id != unless]
    lead_id = event.subject or ""
    if not wanted and not is_received:
        return
    if lead_id:
        # Deciding on the lead's state (seen its lead.received?): a lead.received consumed at the
        # same time from the other topic makes one of the two retry from fresh state.
        await uow.load_version(lead_id)
    seen = is_received or not lead_id or await store.received_seen(lead_id)
    queued = [QueuedFor(subscription_id=sub_id,
                        next_attempt_at=subscription_send_at(is_received, seen, subscribed(types, "lead.received"),
                                                             now, _happened(event, now)))
              for sub_id, types in wanted]
    if not queued and not (is_received and await store.holds_for(lead_id, now)):
        return
    await record(uow, SubscriptionQueued(
        lead_id=lead_id, event_id=event.id, event_type=event.type, event_time=event.time,
        body=event.to_bytes().decode(), queued_at=now, deliveries=queued, releases_held=is_received,
    ), time=now, stream=lead_id or event.id, event_id=deterministic_id(event.id, "queued"), cause=event)


# What the notifier does with each payload class (bound to NotifierDeps in bootstrap): every
# event is copied to the CRM subscriptions that want it; some also change lead facts or chains.
HANDLERS = {
    **{cls: on_other for cls in PAYLOADS.values()},
    LeadReceived: on_lead_received,
    LeadAssigned: on_lead_assigned,
    LeadReassigned: on_lead_reassigned,
    LeadQueued: on_lead_queued,
    LeadUpdated: on_lead_updated,
    ActivityRecorded: on_activity_recorded,
    **{PAYLOADS[t]: on_sla_escalating for t in ESCALATING_TYPES},
    **{PAYLOADS[t]: on_sla_chain_stopping for t in CHAIN_STOPPING_TYPES},
    SlaStarted: on_sla_started,
    **{cls: on_notification for cls in PAYLOADS.values() if issubclass(cls, NotificationResult)},
}


async def on_run(uow: UnitOfWork, run: list[Received[Any]], deps: NotifierDeps) -> None:
    """A run of consumed events (any classes, in order) decided by the same handlers against what
    the run reads, read at once (`run_store`, the leads' stream versions), and recorded at once:
    a few statements for the whole run instead of several per event. The consumer runs a failing
    batch again event by event through `HANDLERS`."""
    leads = [lead for r in run for lead in (r.envelope.subject, getattr(r.data, "lead_id", None)) if lead]
    # The SLAs whose chains may stop: met or cancelled, or breached (its warnings' steps).
    slas = [r.data.sla_id for r in run if HANDLERS[type(r.data)] is on_sla_chain_stopping
            or isinstance(r.data, SlaBreached)]
    chains_may_stop = [r.data.lead_id for r in run if isinstance(r.data, ActivityRecorded | SlaStarted)
                       or (isinstance(r.data, LeadUpdated) and r.data.withdraws_consent)]
    store = await run_store(uow.conn, leads, slas, chains_may_stop)
    await uow.load_versions(leads)
    run_uow, run_deps = RunUnitOfWork(uow, store), replace(deps, store=lambda _: store)
    for received in run:
        await HANDLERS[type(received.data)](run_uow, received, run_deps)  # type: ignore[arg-type]
    await run_uow.flush()


# ---- firing due steps -----------------------------------------------------------------------


async def fire_due_steps(uow: UnitOfWork, config: Config, now: datetime, limit: int = 50,
                         store: NotifierStore | None = None) -> list[int]:
    """Make the deliveries of every step now due and emit escalation.triggered; returns the
    step numbers fired (for the metric, counted by the caller after commit)."""
    store = store or postgres_store(uow)
    fired = []
    for esc in await store.due_escalations(now, limit):
        # One step at a time: a storm's digest counts the deliveries the previous steps made.
        if await _fire(uow, store, config, esc, now):
            fired.append(esc.step)
    return fired


async def _fire(uow: UnitOfWork, store: NotifierStore, config: Config, esc: DueEscalation, now: datetime) -> bool:
    trigger = esc.trigger
    sla = trigger["data"]
    await uow.load_version(esc.lead_id)  # the chain stopped or the owner changed meanwhile: retry
    facts = await lead_facts(store, config, esc.lead_id, sla.get("owner_id"))
    # The owner now, not when the chain started: a reassigned lead escalates to its new owner.
    people, channels = step_recipients(config, esc.policy_id, esc.step, facts.owner_id, sla.get("root_cause"))
    made: list[NewDelivery] = []
    digested: list[DigestEntry] = []
    if not people or not channels:
        log.warning("notifier.step_reaches_nobody", escalation_id=esc.escalation_id, step=esc.step)
    link = config.notifier.link_template or config.notifier.link_base_url
    for person in people if channels else []:
        message = render(facts, trigger["type"], sla, person, esc.step, link, now)
        for channel in channels:
            key = idempotency_key(esc.escalation_id, esc.step, person.id, channel)
            send_at = now
            if _for_people(config, channel):
                send_at = _after_quiet_hours(config, person.id, facts.tier or sla.get("tier"), now)
                digest = await _into_digest(store, config, esc, person, channel, key, message, send_at, now)
                if digest is not None:
                    made.append(digest[0])
                    digested.append(digest[1])
                    continue
            payload = {
                "notification_id": key,
                "escalation_id": esc.escalation_id,
                "policy_id": esc.policy_id,
                "step": esc.step,
                "lead_id": esc.lead_id,
                "lead": {"name": facts.name, "company": facts.company, "tier": facts.tier,
                         "owner_id": facts.owner_id, "owner_name": facts.owner_name, "link": message.link},
                "recipient": {"id": person.id, "role": person.role, "name": person.name, "email": person.email},
                "trigger": {"type": trigger["type"], "event_id": trigger["event_id"],
                            "correlation_id": trigger.get("correlation_id"),
                            "traceparent": trigger.get("traceparent"), **sla},
                "message": {"subject": message.subject, "text": message.text, "html": message.html,
                            "slack": message.slack},
            }
            made.append(NewDelivery(notification_id=key, channel=channel, recipient=person.id, payload=payload,
                                    next_attempt_at=send_at))
    with tracing.use(trigger.get("traceparent")):  # the trigger's trace, though fired later by a loop
        await record(uow, StepFired(lead_id=esc.lead_id, escalation_id=esc.escalation_id, step=esc.step,
                                    fired_at=now, deliveries=made, digest_items=digested),
                     time=now, stream=esc.lead_id, event_id=deterministic_id(esc.escalation_id, "fired"))
    if not made:
        return False
    with tracing.use(trigger.get("traceparent")):  # the trigger's trace, though fired later by a loop
        triggered = new_event(
            "escalation.triggered", service=SERVICE, lead_id=esc.lead_id, time=now,
            correlation_id=trigger.get("correlation_id"), event_id=triggered_event_id(esc.escalation_id),
            data=EscalationTriggered(lead_id=esc.lead_id, escalation_id=esc.escalation_id, policy_id=esc.policy_id,
                                     step=esc.step, trigger_event_id=trigger["event_id"],
                                     trigger_type=trigger["type"], recipients=sorted(p.id for p in people)),
        )
    uow.emit(TOPIC_NOTIFICATIONS, triggered.model_copy(update={"causationid": trigger["event_id"]}))
    return True


def _for_people(config: Config, channel: str) -> bool:
    found = config.channels.get(channel)
    return found is not None and found.type in PEOPLE_CHANNELS


def _after_quiet_hours(config: Config, person_id: str, tier: str | None, now: datetime) -> datetime:
    quiet = config.notifier.quiet_hours
    person = config.owner(person_id)
    if quiet is None or person is None:
        return now
    # The person's own working hours win over their calendar, as they do for routing.
    hours = person.working_hours or (config.calendar(person.calendar) if person.calendar else None)
    if hours is None:
        return now
    return deliver_at(BusinessCalendar(hours), now, tier, quiet.urgent_tiers)


async def _into_digest(store: NotifierStore, config: Config, esc: DueEscalation, person: Recipient, channel: str,
                       key: str, message: Message, send_at: datetime,
                       now: datetime) -> tuple[NewDelivery, DigestEntry] | None:
    """In a storm, add this message to the person's digest for the window instead of sending it."""
    digest = config.notifier.digest
    if digest is None:
        return None
    start, end = digest_window(now, digest.window)
    if not goes_to_digest(await store.recent_singles(person.id, channel, start), digest.after):
        return None
    if send_at > end:
        # Held by the person's quiet hours: it joins the digest of the window it may go in, not
        # this one's, which would carry it out at this window's end, hours too early.
        start, end = digest_window(send_at, digest.window)
    digest_id = digest_key(person.id, channel, start)
    delivery = NewDelivery(
        notification_id=digest_id, channel=channel, recipient=person.id, kind="digest",
        next_attempt_at=max(end, send_at),
        payload={"notification_id": digest_id, "kind": "digest", "window_end": utc_iso(end),
                 "recipient": {"id": person.id, "role": person.role, "name": person.name, "email": person.email},
                 "trigger": {"correlation_id": esc.trigger.get("correlation_id")}})
    # The escalation: a chain that stops takes its lines out of a digest not yet sent.
    item = DigestEntry(notification_id=digest_id, item={"subject": message.subject, "link": message.link,
                                                        "step": esc.step, "idempotency_key": key,
                                                        "escalation_id": esc.escalation_id})
    return delivery, item


async def lead_facts(store: NotifierStore, config: Config, lead_id: str, fallback_owner: str | None) -> LeadFacts:
    known = await store.lead(lead_id)
    # The trigger's owner only while the lead's routing has not been seen (leads.routing is read
    # apart): once it has, no owner means nobody's (queued), and a step goes to lead ops, not to
    # the manager of an owner the lead was taken from.
    owner_id = known.owner_id if known else None
    if owner_id is None and not (known and known.routed):
        owner_id = fallback_owner
    owner = config.owner(owner_id) if owner_id else None
    return LeadFacts(lead_id=lead_id, name=known.name if known else None, company=known.company if known else None,
                     tier=known.tier if known else None, owner_id=owner_id, owner_name=owner.name if owner else None)


def describe(row: Row) -> dict:
    return {"notification_id": row.notification_id, "channel": row.channel, "recipient": row.recipient,
            "step": row.step, "state": row.state, "attempts": row.attempts,
            "next_attempt_at": utc_iso(row.next_attempt_at), "last_error": row.last_error,
            "idempotency_key": row.idempotency_key}
