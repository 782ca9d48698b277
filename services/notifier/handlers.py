"""Notifier's service layer: plan escalations from SLA events, deliver them with retries.

No double sends: each delivery has an id derived from (trigger event, policy, step, channel,
recipient), so a redelivered trigger plans nothing new; a delivery row is locked while it is
sent, so two replicas never send it at once. A crash after the receiver answered but before
the commit resends once; the `Idempotency-Key` header lets the receiver drop that repeat.
"""
from __future__ import annotations

import json
from datetime import datetime

import httpx
from sqlalchemy import Row, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from leadsla.shared import metrics
from leadsla.shared.config import Config
from leadsla.shared.events import (
    TOPIC_NOTIFICATIONS,
    CloudEvent,
    EscalationTriggered,
    NotificationResult,
    SlaEventData,
    deterministic_id,
    new_event,
    utc_iso,
)
from leadsla.shared.uow import UnitOfWork

from .domain import SIGNATURE_HEADER, is_retryable, plan, retry_delay, sign
from .tables import deliveries, escalations

SERVICE = "notifier"


async def escalate(uow: UnitOfWork, config: Config, event: CloudEvent, now: datetime) -> None:
    sla = event.data_as(SlaEventData)
    planned = plan(config, event.type, sla.owner_id, now)
    by_step: dict[tuple[str, int], list] = {}
    for p in planned:
        by_step.setdefault((p.policy_id, p.step), []).append(p)
    for (policy_id, step), items in by_step.items():
        escalation_id = deterministic_id("escalation", event.id, policy_id, str(step))
        inserted = await uow.conn.execute(pg_insert(escalations).values(
            escalation_id=escalation_id, lead_id=sla.lead_id, policy_id=policy_id, step=step,
            trigger_event_id=event.id, created_at=now,
        ).on_conflict_do_nothing().returning(escalations.c.escalation_id))
        if inserted.first() is None:
            continue
        people = sorted({p.recipient.id for p in items})
        uow.emit(TOPIC_NOTIFICATIONS, new_event(
            "escalation.triggered", service=SERVICE, lead_id=sla.lead_id, time=now, cause=event,
            event_id=deterministic_id(escalation_id, "triggered"),
            data=EscalationTriggered(lead_id=sla.lead_id, escalation_id=escalation_id, policy_id=policy_id,
                                     step=step, trigger_event_id=event.id, trigger_type=event.type,
                                     recipients=people),
        ))
        metrics.escalations.labels(str(step)).inc()
        for p in items:
            notification_id = deterministic_id(escalation_id, p.channel, p.recipient.id)
            payload = {
                "notification_id": notification_id,
                "escalation_id": escalation_id,
                "policy_id": policy_id,
                "step": step,
                "lead_id": sla.lead_id,
                "recipient": {"id": p.recipient.id, "role": p.recipient.role, "name": p.recipient.name,
                              "email": p.recipient.email},
                "trigger": {"type": event.type, "event_id": event.id, "correlation_id": event.correlationid,
                            **sla.model_dump(mode="json", exclude_none=True)},
            }
            await uow.conn.execute(pg_insert(deliveries).values(
                notification_id=notification_id, escalation_id=escalation_id, lead_id=sla.lead_id,
                channel=p.channel, recipient=p.recipient.id, payload=payload, state="pending",
                next_attempt_at=p.send_at,
            ).on_conflict_do_nothing())


async def deliver_due(uow: UnitOfWork, config: Config, client: httpx.AsyncClient, now: datetime,
                      limit: int = 20) -> int:
    rows = (await uow.conn.execute(
        select(deliveries).where(deliveries.c.state == "pending", deliveries.c.next_attempt_at <= now)
        .order_by(deliveries.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
    )).all()
    for row in rows:
        await _deliver(uow, config, client, row, now)
    return len(rows)


async def _deliver(uow: UnitOfWork, config: Config, client: httpx.AsyncClient, row: Row, now: datetime) -> None:
    channel = config.channels.get(row.channel)
    attempts = row.attempts + 1
    status: int | None = None
    error: str | None = None
    if channel is None:
        error = f"channel {row.channel!r} is no longer configured"
    else:
        body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": row.notification_id,
            "X-Leadsla-Notification-Id": row.notification_id,
            SIGNATURE_HEADER: sign(channel.signing_secret(), body, int(now.timestamp())),
        }
        try:
            response = await client.post(channel.url, content=body, headers=headers, timeout=channel.timeout_seconds)
            status = response.status_code
            if status >= 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]

    if error is None:
        values = {"state": "sent", "attempts": attempts, "sent_at": now, "last_error": None}
        outcome = "sent"
    elif channel is not None and is_retryable(status) and attempts < channel.max_attempts:
        values = {"attempts": attempts, "next_attempt_at": now + retry_delay(attempts), "last_error": error}
        outcome = None
    else:
        values = {"state": "failed", "attempts": attempts, "last_error": error}
        outcome = "failed"
    await uow.conn.execute(update(deliveries).where(deliveries.c.notification_id == row.notification_id)
                           .values(**values))
    metrics.notifications.labels(row.channel, outcome or "retrying").inc()
    if outcome is not None:
        uow.emit(TOPIC_NOTIFICATIONS, new_event(
            f"notification.{outcome}", service=SERVICE, lead_id=row.lead_id, time=now,
            correlation_id=row.payload["trigger"].get("correlation_id"),
            event_id=deterministic_id(row.notification_id, outcome),
            data=NotificationResult(
                notification_id=row.notification_id, lead_id=row.lead_id, escalation_id=row.escalation_id,
                channel=row.channel, recipient=row.recipient, attempts=attempts,
                idempotency_key=row.notification_id, error=error,
            ),
        ))


def describe(row: Row) -> dict:
    return {"notification_id": row.notification_id, "channel": row.channel, "recipient": row.recipient,
            "state": row.state, "attempts": row.attempts, "next_attempt_at": utc_iso(row.next_attempt_at),
            "last_error": row.last_error}
