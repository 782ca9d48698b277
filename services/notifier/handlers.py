"""Notifier's service layer: what each consumed event changes, and what a due step writes.

Consuming (inside the consumer's transaction): lead facts for messages; escalation steps planned
from sla.breached / sla.warning, each due at its delay; the rest of a chain cancelled by sla.met /
sla.cancelled; and every event copied to the CRM subscriptions that want it.

Firing (`fire_due_steps`): a due step's deliveries are written, each with its idempotency key,
and escalation.triggered is emitted, in one transaction. Sending them is `delivery.py`'s job.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.business_hours import BusinessCalendar
from shared.config import Config
from shared.events import (
    PAYLOADS,
    TOPIC_NOTIFICATIONS,
    CloudEvent,
    EscalationTriggered,
    LeadAssigned,
    LeadReassigned,
    LeadReceived,
    LeadUpdated,
    NotificationResult,
    Received,
    SlaEventData,
    deterministic_id,
    new_event,
    utc_iso,
)
from shared.uow import UnitOfWork

from .domain import (
    CHAIN_STOPPING_TYPES,
    ESCALATING_TYPES,
    PEOPLE_CHANNELS,
    LeadFacts,
    Message,
    Recipient,
    deliver_at,
    digest_key,
    digest_window,
    goes_to_digest,
    idempotency_key,
    plan_steps,
    render,
    step_recipients,
    subscribed,
)
from .tables import (
    deliveries,
    digest_items,
    escalations,
    leads,
    subscription_deliveries,
    subscriptions,
)

log = structlog.get_logger()

SERVICE = "notifier"


# ---- consuming ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotifierDeps:
    """What the notifier's event handlers are given besides the event."""

    config: Config
    now: datetime


async def on_lead_received(uow: UnitOfWork, received: Received[LeadReceived], deps: NotifierDeps) -> None:
    lead = received.data
    name = " ".join(p for p in (lead.contact.first_name, lead.contact.last_name) if p) or None
    await _keep_facts(uow, lead.lead_id, {"name": name, "company": lead.company.name, "tier": lead.tier,
                                          "source": lead.source, "received_at": lead.received_at})
    await fan_out(uow, received.envelope, deps.now)


async def on_lead_assigned(uow: UnitOfWork, received: Received[LeadAssigned], deps: NotifierDeps) -> None:
    assigned = received.data
    await _keep_facts(uow, assigned.lead_id, {"owner_id": assigned.owner_id,
                                              **({"tier": assigned.tier} if assigned.tier else {})})
    await fan_out(uow, received.envelope, deps.now)


async def on_lead_reassigned(uow: UnitOfWork, received: Received[LeadReassigned], deps: NotifierDeps) -> None:
    await _keep_facts(uow, received.data.lead_id, {"owner_id": received.data.to_owner_id})
    await fan_out(uow, received.envelope, deps.now)


async def on_lead_updated(uow: UnitOfWork, received: Received[LeadUpdated], deps: NotifierDeps) -> None:
    await _keep_facts(uow, received.data.lead_id, {"tier": received.data.tier})
    await fan_out(uow, received.envelope, deps.now)


async def on_sla_escalating(uow: UnitOfWork, received: Received[SlaEventData], deps: NotifierDeps) -> None:
    """Plan every step; each fires when due (see `fire_due_steps`), unless the chain stops first."""
    event, sla, now = received.envelope, received.data, deps.now
    trigger = {"type": event.type, "event_id": event.id, "correlation_id": event.correlationid,
               "data": sla.model_dump(mode="json", exclude_none=True)}
    for planned in plan_steps(deps.config, event.type, now):
        escalation_id = deterministic_id("escalation", event.id, planned.policy_id, str(planned.step))
        await uow.conn.execute(pg_insert(escalations).values(
            escalation_id=escalation_id, lead_id=sla.lead_id, policy_id=planned.policy_id, step=planned.step,
            trigger_event_id=event.id, created_at=now, sla_id=sla.sla_id, due_at=planned.due_at,
            trigger=trigger,
        ).on_conflict_do_nothing())
    await fan_out(uow, event, now)


async def on_sla_chain_stopping(uow: UnitOfWork, received: Received[SlaEventData], deps: NotifierDeps) -> None:
    sla_id, now = received.data.sla_id, deps.now
    await uow.conn.execute(update(escalations).where(
        escalations.c.sla_id == sla_id, escalations.c.triggered_at.is_(None), escalations.c.cancelled_at.is_(None),
    ).values(cancelled_at=now))
    # Messages held back by quiet hours and never tried are news nobody needs any more.
    await uow.conn.execute(update(deliveries).where(
        deliveries.c.escalation_id.in_(select(escalations.c.escalation_id).where(escalations.c.sla_id == sla_id)),
        deliveries.c.state == "pending", deliveries.c.kind == "single", deliveries.c.attempts == 0,
        deliveries.c.next_attempt_at > now,
    ).values(state="cancelled"))
    await fan_out(uow, received.envelope, now)


async def on_notification(uow: UnitOfWork, received: Received[NotificationResult], deps: NotifierDeps) -> None:
    # A subscriber that is down would otherwise be sent the news of its own failures, forever.
    await fan_out(uow, received.envelope, deps.now, unless=received.data.subscription_id)


async def on_other(uow: UnitOfWork, received: Received[Any], deps: NotifierDeps) -> None:
    await fan_out(uow, received.envelope, deps.now)


async def _keep_facts(uow: UnitOfWork, lead_id: str, values: dict[str, Any]) -> None:
    """Keep what a message says about a lead: name, company, tier, owner."""
    await uow.conn.execute(pg_insert(leads).values(lead_id=lead_id, **values)
                           .on_conflict_do_update(index_elements=[leads.c.lead_id], set_=values))


async def fan_out(uow: UnitOfWork, event: CloudEvent, now: datetime, unless: str | None = None) -> None:
    """Queue the event for every live subscription that asked for its type (but `unless`)."""
    rows = (await uow.conn.execute(
        select(subscriptions.c.id, subscriptions.c.event_types).where(subscriptions.c.deleted_at.is_(None))
    )).all()
    wanted = [r.id for r in rows if subscribed(r.event_types, event.type) and r.id != unless]
    if not wanted:
        return
    body = event.to_bytes()
    await uow.conn.execute(pg_insert(subscription_deliveries).on_conflict_do_nothing(), [
        {"subscription_id": sub_id, "lead_id": event.subject or "", "event_id": event.id,
         "event_type": event.type, "event_time": event.time, "body": body, "state": "pending",
         "next_attempt_at": now, "created_at": now}
        for sub_id in wanted
    ])


# What the notifier does with each payload class (bound to NotifierDeps in bootstrap): every
# event is copied to the CRM subscriptions that want it; some also change lead facts or chains.
HANDLERS = {
    **{cls: on_other for cls in PAYLOADS.values()},
    LeadReceived: on_lead_received,
    LeadAssigned: on_lead_assigned,
    LeadReassigned: on_lead_reassigned,
    LeadUpdated: on_lead_updated,
    **{PAYLOADS[t]: on_sla_escalating for t in ESCALATING_TYPES},
    **{PAYLOADS[t]: on_sla_chain_stopping for t in CHAIN_STOPPING_TYPES},
    **{cls: on_notification for cls in PAYLOADS.values() if issubclass(cls, NotificationResult)},
}


# ---- firing due steps -----------------------------------------------------------------------


async def fire_due_steps(uow: UnitOfWork, config: Config, now: datetime, limit: int = 50) -> list[int]:
    """Write the deliveries of every step now due and emit escalation.triggered; returns the
    step numbers fired (for the metric, counted by the caller after commit)."""
    due = (await uow.conn.execute(
        select(escalations).where(escalations.c.triggered_at.is_(None), escalations.c.cancelled_at.is_(None),
                                  escalations.c.due_at <= now)
        .order_by(escalations.c.due_at).limit(limit).with_for_update(skip_locked=True)
    )).all()
    fired = [esc.step for esc in due if await _fire(uow, config, esc, now)]
    if due:
        await uow.conn.execute(update(escalations).where(
            escalations.c.escalation_id.in_([esc.escalation_id for esc in due])).values(triggered_at=now))
    return fired


async def _fire(uow: UnitOfWork, config: Config, esc: Row, now: datetime) -> bool:
    trigger = esc.trigger
    sla = trigger["data"]
    facts = await lead_facts(uow, config, esc.lead_id, sla.get("owner_id"))
    # The owner now, not when the chain started: a reassigned lead escalates to its new owner.
    people, channels = step_recipients(config, esc.policy_id, esc.step, facts.owner_id, sla.get("root_cause"))
    if not people or not channels:
        log.warning("notifier.step_reaches_nobody", escalation_id=esc.escalation_id, step=esc.step)
        return False
    for person in people:
        message = render(facts, trigger["type"], sla, person, esc.step, config.notifier.link_base_url, now)
        for channel in channels:
            key = idempotency_key(esc.escalation_id, esc.step, person.id, channel)
            send_at = now
            if _for_people(config, channel):
                send_at = _after_quiet_hours(config, person.id, facts.tier or sla.get("tier"), now)
                if await _into_digest(uow, config, esc, person, channel, key, message, send_at, now):
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
                            "correlation_id": trigger.get("correlation_id"), **sla},
                "message": {"subject": message.subject, "text": message.text, "html": message.html,
                            "slack": message.slack},
            }
            await uow.conn.execute(pg_insert(deliveries).values(
                notification_id=key, idempotency_key=key, escalation_id=esc.escalation_id, lead_id=esc.lead_id,
                step=esc.step, channel=channel, recipient=person.id, payload=payload, state="pending",
                next_attempt_at=send_at, created_at=now,
            ).on_conflict_do_nothing())
    uow.emit(TOPIC_NOTIFICATIONS, new_event(
        "escalation.triggered", service=SERVICE, lead_id=esc.lead_id, time=now,
        correlation_id=trigger.get("correlation_id"), event_id=deterministic_id(esc.escalation_id, "triggered"),
        data=EscalationTriggered(lead_id=esc.lead_id, escalation_id=esc.escalation_id, policy_id=esc.policy_id,
                                 step=esc.step, trigger_event_id=trigger["event_id"],
                                 trigger_type=trigger["type"], recipients=sorted(p.id for p in people)),
    ).model_copy(update={"causationid": trigger["event_id"]}))
    return True


def _for_people(config: Config, channel: str) -> bool:
    found = config.channels.get(channel)
    return found is not None and found.type in PEOPLE_CHANNELS


def _after_quiet_hours(config: Config, person_id: str, tier: str | None, now: datetime) -> datetime:
    quiet = config.notifier.quiet_hours
    person = config.owner(person_id)
    if quiet is None or person is None or person.calendar is None:
        return now
    return deliver_at(BusinessCalendar(config.calendar(person.calendar)), now, tier, quiet.urgent_tiers)


async def _into_digest(uow: UnitOfWork, config: Config, esc: Row, person: Recipient, channel: str, key: str,
                       message: Message, send_at: datetime, now: datetime) -> bool:
    """In a storm, add this message to the person's digest for the window instead of sending it."""
    digest = config.notifier.digest
    if digest is None:
        return False
    start, end = digest_window(now, digest.window)
    recent = await uow.conn.scalar(select(func.count()).select_from(deliveries).where(
        deliveries.c.recipient == person.id, deliveries.c.channel == channel, deliveries.c.kind == "single",
        deliveries.c.created_at >= start))
    if not goes_to_digest(recent or 0, digest.after):
        return False
    digest_id = digest_key(person.id, channel, start)
    await uow.conn.execute(pg_insert(deliveries).values(
        notification_id=digest_id, idempotency_key=digest_id, escalation_id=esc.escalation_id, lead_id=esc.lead_id,
        step=esc.step, channel=channel, recipient=person.id, kind="digest", state="pending",
        next_attempt_at=max(end, send_at), created_at=now,
        payload={"notification_id": digest_id, "kind": "digest", "window_end": utc_iso(end),
                 "recipient": {"id": person.id, "role": person.role, "name": person.name, "email": person.email},
                 "trigger": {"correlation_id": esc.trigger.get("correlation_id")}},
    ).on_conflict_do_nothing())
    await uow.conn.execute(pg_insert(digest_items).values(
        notification_id=digest_id, lead_id=esc.lead_id,
        item={"subject": message.subject, "link": message.link, "step": esc.step, "idempotency_key": key}))
    return True


async def lead_facts(uow: UnitOfWork, config: Config, lead_id: str, fallback_owner: str | None) -> LeadFacts:
    row = (await uow.conn.execute(select(leads).where(leads.c.lead_id == lead_id))).first()
    owner_id = (row.owner_id if row else None) or fallback_owner
    owner = config.owner(owner_id) if owner_id else None
    return LeadFacts(lead_id=lead_id, name=row.name if row else None, company=row.company if row else None,
                     tier=row.tier if row else None, owner_id=owner_id, owner_name=owner.name if owner else None)


def describe(row: Row) -> dict:
    return {"notification_id": row.notification_id, "channel": row.channel, "recipient": row.recipient,
            "step": row.step, "state": row.state, "attempts": row.attempts,
            "next_attempt_at": utc_iso(row.next_attempt_at), "last_error": row.last_error,
            "idempotency_key": row.idempotency_key}
