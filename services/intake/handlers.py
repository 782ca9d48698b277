"""Intake's service layer: accept a submission or an activity, inside one unit of work."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from leadsla.shared import metrics
from leadsla.shared.config import Config
from leadsla.shared.db import xact_lock
from leadsla.shared.events import (
    TOPIC_INTAKE,
    ActivityRecorded,
    CloudEvent,
    Company,
    Consent,
    Contact,
    Disposition,
    Intent,
    LeadMerged,
    LeadReceived,
    deterministic_id,
    new_event,
)
from leadsla.shared.uow import UnitOfWork

from .domain import (
    ActivityIn,
    LeadSubmission,
    classify_tier,
    disposition_problem,
    identity_keys,
    is_contactable,
    missing_fields,
)
from .tables import activities, idempotency_keys, leads

SERVICE = "intake"
# CRM clocks drift; beyond this an activity "in the future" is a plan, not a touch.
FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True)
class Accepted:
    lead_id: str
    status: Literal["accepted", "duplicate"]


class UnknownLead(LookupError):
    pass


class RejectedActivity(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


async def submit_lead(
    uow: UnitOfWork,
    config: Config,
    sub: LeadSubmission,
    *,
    source: str,
    now: datetime,
    idempotency_key: str | None = None,
    cause: CloudEvent | None = None,
) -> Accepted:
    conn = uow.conn
    source = sub.source or source
    if idempotency_key:
        # Serialise retries of the same key so both get the same answer.
        await xact_lock(conn, f"idem:{source}:{idempotency_key}")
        known = await conn.scalar(
            select(idempotency_keys.c.lead_id).where(
                idempotency_keys.c.source == source, idempotency_keys.c.key == idempotency_key
            )
        )
        if known:
            metrics.leads_duplicates.labels(source).inc()
            return Accepted(known, "duplicate")
    if sub.external_id:
        await xact_lock(conn, f"ext:{source}:{sub.external_id}")
        known = await conn.scalar(
            select(leads.c.lead_id).where(leads.c.source == source, leads.c.external_id == sub.external_id)
        )
        if known:
            return await _duplicate(uow, source, idempotency_key, known)

    keys = identity_keys(sub, config.dedupe.match_on)
    for kind, value in sorted(keys):  # sorted: two requests lock in the same order
        await xact_lock(conn, f"id:{kind}:{value}")
    match = await _identity_match(uow, keys, since=now - timedelta(seconds=config.dedupe.window))
    if match is not None:
        lead_id, match_on, correlation_id = match
        uow.emit(TOPIC_INTAKE, new_event(
            "lead.merged", service=SERVICE, lead_id=lead_id, time=now, cause=cause,
            correlation_id=correlation_id,
            data=LeadMerged(lead_id=lead_id, match_on=match_on,
                            duplicate_submission=sub.model_dump(mode="json", exclude_none=True)),
        ))
        return await _duplicate(uow, source, idempotency_key, lead_id)

    lead_id = str(uuid.uuid4())
    tier = classify_tier(sub, source, config.tiers)
    received = LeadReceived(
        lead_id=lead_id,
        source=source,
        external_id=sub.external_id,
        tier=tier,
        contact=Contact(**sub.contact.model_dump()),
        company=Company(**sub.company.model_dump()),
        intent=Intent(**sub.intent.model_dump()),
        score=sub.score,
        consent=Consent(**sub.consent.model_dump()),
        contactable=is_contactable(sub),
        received_at=now,
        submitted_at=sub.submitted_at,
        missing_fields=missing_fields(sub),
    )
    event = new_event("lead.received", service=SERVICE, lead_id=lead_id, data=received, time=now, cause=cause)
    await conn.execute(leads.insert().values(
        lead_id=lead_id, source=source, external_id=sub.external_id, email=sub.contact.email,
        phone=sub.contact.phone, tier=tier, received_at=now, correlation_id=event.correlationid,
        record=received.model_dump(mode="json"),
    ))
    await _remember_key(uow, source, idempotency_key, lead_id)
    uow.emit(TOPIC_INTAKE, event)
    metrics.leads_received.labels(source, tier).inc()
    return Accepted(lead_id, "accepted")


async def _duplicate(uow: UnitOfWork, source: str, idempotency_key: str | None, lead_id: str) -> Accepted:
    await _remember_key(uow, source, idempotency_key, lead_id)
    metrics.leads_duplicates.labels(source).inc()
    return Accepted(lead_id, "duplicate")


async def _remember_key(uow: UnitOfWork, source: str, key: str | None, lead_id: str) -> None:
    if key:
        await uow.conn.execute(
            pg_insert(idempotency_keys).values(source=source, key=key, lead_id=lead_id).on_conflict_do_nothing()
        )


async def _identity_match(
    uow: UnitOfWork, keys: list[tuple[str, str]], since: datetime
) -> tuple[str, str, str] | None:
    if not keys:
        return None
    conditions = [leads.c.email == v if kind == "email" else leads.c.phone == v for kind, v in keys]
    row = (
        await uow.conn.execute(
            select(leads.c.lead_id, leads.c.email, leads.c.correlation_id)
            .where(or_(*conditions), leads.c.received_at >= since)
            .order_by(leads.c.received_at)
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    email = dict(keys).get("email")
    return row.lead_id, "email" if email and row.email == email else "phone", row.correlation_id


async def record_activity(
    uow: UnitOfWork,
    config: Config,
    lead_id: str,
    activity: ActivityIn,
    *,
    now: datetime,
    cause: CloudEvent | None = None,
) -> str:
    """Store a touch and emit activity.recorded; a repeat of the same external id changes nothing."""
    lead = (await uow.conn.execute(
        select(leads.c.lead_id, leads.c.correlation_id).where(leads.c.lead_id == lead_id)
    )).first()
    if lead is None:
        raise UnknownLead(lead_id)
    problem = disposition_problem(activity.disposition, config.disposition_reasons)
    if problem:
        raise RejectedActivity("disposition", problem)
    if activity.occurred_at is not None and activity.occurred_at > now + FUTURE_TOLERANCE:
        raise RejectedActivity("occurred_at", "is in the future; record an activity once it has happened")
    activity_id = (
        deterministic_id("activity", lead_id, activity.external_id) if activity.external_id else str(uuid.uuid4())
    )
    recorded = ActivityRecorded(
        lead_id=lead_id,
        activity_id=activity_id,
        type=activity.type,
        actor=activity.actor,
        occurred_at=activity.occurred_at or now,
        channel=activity.channel,
        outcome=activity.outcome,
        disposition=Disposition(**activity.disposition.model_dump()) if activity.disposition else None,
    )
    inserted = await uow.conn.execute(
        pg_insert(activities)
        .values(activity_id=activity_id, lead_id=lead_id, type=activity.type,
                occurred_at=recorded.occurred_at, record=recorded.model_dump(mode="json"))
        .on_conflict_do_nothing()
        .returning(activities.c.activity_id)
    )
    if inserted.first() is not None:
        uow.emit(TOPIC_INTAKE, new_event(
            "activity.recorded", service=SERVICE, lead_id=lead_id, data=recorded, time=now,
            cause=cause, correlation_id=lead.correlation_id,
        ))
    return activity_id
