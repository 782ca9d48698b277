"""Intake's service layer: accept a submission or an activity, inside one unit of work."""
from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared import metrics, tracing
from shared.config import Config
from shared.db import xact_lock
from shared.events import (
    TOPIC_DEADLETTER,
    TOPIC_INTAKE,
    ActivityRecorded,
    CloudEvent,
    DeadLetter,
    Disposition,
    LeadMerged,
    LeadReceived,
    LeadUpdated,
    deterministic_id,
    new_event,
)
from shared.uow import UnitOfWork

from .domain import (
    ActivityIn,
    classify_tier,
    disposition_problem,
    identity_keys,
    intent_vocabulary,
    is_contactable,
    is_suppressed,
    missing_fields,
    same_person,
    tier_rank,
)
from .normalize import Issue, Submission, read_submission
from .tables import activities, idempotency_keys, leads, pending_activities

SERVICE = "intake"
# CRM clocks drift; beyond this an activity "in the future" is a plan, not a touch.
FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True)
class Accepted:
    lead_id: str
    status: Literal["accepted", "duplicate"]
    warnings: list[dict[str, str]] = field(default_factory=list)
    tier: str | None = None
    upgraded: bool = False

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lead_id": self.lead_id, "status": self.status}
        if self.status == "accepted":
            out["warnings"] = self.warnings
        if self.upgraded:
            out["upgraded"] = True
        if self.tier is not None:
            out["tier"] = self.tier
        return out


def count(result: Accepted, source: str) -> None:
    """Metrics for a submission, counted once its transaction has committed."""
    if result.status == "accepted":
        metrics.leads_received.labels(source, result.tier or "").inc()
    else:
        metrics.leads_duplicates.labels(source).inc()


class UnknownLead(LookupError):
    pass


class RejectedActivity(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


async def submit_lead(
    uow: UnitOfWork,
    config: Config,
    sub: Submission,
    *,
    source: str,
    now: datetime,
    idempotency_key: str | None = None,
    cause: CloudEvent | None = None,
) -> Accepted:
    """Accept a normalized submission, or recognise it as a repeat of a known lead (and raise
    that lead's tier when the repeat shows a higher intent)."""
    conn = uow.conn
    keys = identity_keys(sub, config.dedupe.match_on)
    # Serialise every request that could be the same lead (retries of a key, the same external
    # id, the same person) so both get the same answer; one round trip, in a global order.
    names = [f"id:{kind}:{value}" for kind, value in keys]
    if idempotency_key:
        names.append(f"idem:{source}:{idempotency_key}")
    if sub.external_id:
        names.append(f"ext:{source}:{sub.external_id}")
    await _lock_all(conn, names)
    if idempotency_key:
        known = await conn.scalar(
            select(idempotency_keys.c.lead_id).where(
                idempotency_keys.c.source == source, idempotency_keys.c.key == idempotency_key
            )
        )
        if known:  # the same request again: same answer, nothing else changes
            return Accepted(known, "duplicate")
    tier = classify_tier(sub, source, config.tiers)
    if sub.external_id:
        known = (await conn.execute(
            select(leads.c.lead_id, leads.c.tier, leads.c.record, leads.c.correlation_id)
            .where(leads.c.source == source, leads.c.external_id == sub.external_id)
        )).first()
        if known:
            upgraded = await _upgrade(uow, config, known, sub, tier, now, cause)
            return await _duplicate(uow, source, idempotency_key, known.lead_id, upgraded)

    match = await _identity_match(uow, sub, keys, config.dedupe.match_on,
                                  since=now - timedelta(seconds=config.dedupe.window))
    if match is not None:
        row, match_on = match
        uow.emit(TOPIC_INTAKE, new_event(
            "lead.merged", service=SERVICE, lead_id=row.lead_id, time=now, cause=cause,
            correlation_id=row.correlation_id,
            data=LeadMerged(lead_id=row.lead_id, match_on=match_on, duplicate_submission=sub.snapshot()),
        ))
        upgraded = await _upgrade(uow, config, row, sub, tier, now, cause)
        return await _duplicate(uow, source, idempotency_key, row.lead_id, upgraded)

    row, event, accepted = _new_lead(config, sub, source, tier, now, cause)
    await conn.execute(leads.insert().values(**row))
    await _remember_key(uow, source, idempotency_key, accepted.lead_id)
    uow.emit(TOPIC_INTAKE, event)
    if sub.external_id:  # only a sender's own id can name a lead before it exists
        await _release_pending(uow, config, [(sub.external_id, accepted.lead_id)], now)
    return accepted


def _new_lead(
    config: Config, sub: Submission, source: str, tier: str, now: datetime, cause: CloudEvent | None,
) -> tuple[dict[str, Any], CloudEvent, Accepted]:
    """The row, the lead.received event and the answer for a new lead."""
    lead_id = str(uuid.uuid4())
    suppressed = is_suppressed(sub.contact, config.intake.suppression)
    received = LeadReceived(
        lead_id=lead_id,
        source=source,
        external_id=sub.external_id,
        tier=tier,
        contact=sub.contact,
        company=sub.company,
        intent=sub.intent,
        score=sub.score,
        consent=sub.consent,
        contactable=is_contactable(sub, config.intake.suppression),
        received_at=now,
        submitted_at=sub.submitted_at,
        missing_fields=missing_fields(sub),
        attributes=sub.attributes,
        data_quality=sub.data_quality,
        suppressed=suppressed,
    )
    flawed = {i.field for i in sub.issues}
    event = new_event("lead.received", service=SERVICE, lead_id=lead_id, data=received, time=now, cause=cause)
    row = dict(
        lead_id=lead_id, source=source, external_id=sub.external_id,
        email=sub.contact.email if "contact.email" not in flawed else None,
        phone=sub.contact.phone if "contact.phone" not in flawed else None,
        tier=tier, received_at=now, correlation_id=event.correlationid,
        record=received.model_dump(mode="json"),
    )
    return row, event, Accepted(lead_id, "accepted", sub.warnings, tier)


@dataclass(frozen=True)
class LeadRequest:
    sub: Submission
    source: str
    idempotency_key: str | None = None
    traceparent: tracing.TraceContext | None = None


async def submit_leads(uow: UnitOfWork, config: Config, requests: list[LeadRequest], *,
                       now: datetime) -> list[Accepted]:
    """`submit_lead` for many leads in one transaction (a batch, or a group commit), with the
    same answers, in a handful of round trips: lock everything once, look up every key once,
    and insert the leads that match nothing in one statement. A lead that may repeat a known one
    (or an earlier one of the same group) takes the one-by-one path, after the new leads before
    it are written, so it sees them."""
    conn = uow.conn
    since = now - timedelta(seconds=config.dedupe.window)
    names: list[str] = []
    idem, exts, emails, phones = set(), set(), set(), set()
    for r in requests:
        keys = identity_keys(r.sub, config.dedupe.match_on)
        names += [f"id:{kind}:{value}" for kind, value in keys]
        emails |= {v for k, v in keys if k == "email"}
        phones |= {v for k, v in keys if k == "phone"}
        if r.idempotency_key:
            names.append(f"idem:{r.source}:{r.idempotency_key}")
            idem.add((r.source, r.idempotency_key))
        if r.sub.external_id:
            names.append(f"ext:{r.source}:{r.sub.external_id}")
            exts.add((r.source, r.sub.external_id))
    await _lock_all(conn, names)
    taken: set[tuple[str, str]] = set()  # ("idem"|"ext"|"email"|"phone", value) known or used
    if idem:
        found = await conn.execute(select(idempotency_keys.c.source, idempotency_keys.c.key).where(
            tuple_(idempotency_keys.c.source, idempotency_keys.c.key).in_(sorted(idem))))
        taken |= {("idem", f"{r.source}:{r.key}") for r in found}
    if exts:
        found = await conn.execute(select(leads.c.source, leads.c.external_id).where(
            tuple_(leads.c.source, leads.c.external_id).in_(sorted(exts))))
        taken |= {("ext", f"{r.source}:{r.external_id}") for r in found}
    if emails or phones:
        found = await conn.execute(select(leads.c.email, leads.c.phone).where(
            or_(leads.c.email.in_(sorted(emails)), leads.c.phone.in_(sorted(phones))), leads.c.received_at >= since))
        for r in found:
            taken |= {("email", r.email), ("phone", r.phone)}

    results: list[Accepted] = []
    rows: list[dict[str, Any]] = []
    remembered: list[dict[str, str]] = []
    released: list[tuple[str, str]] = []

    async def flush() -> None:
        if rows:
            await conn.execute(leads.insert(), rows)
        if remembered:
            await conn.execute(pg_insert(idempotency_keys).on_conflict_do_nothing(), remembered)
        if released:
            await _release_pending(uow, config, released, now)
        rows.clear(), remembered.clear(), released.clear()

    for r in requests:
        with tracing.use(r.traceparent):  # a group commit carries each request's own trace
            marks = {("email", v) if k == "email" else ("phone", v) for k, v in identity_keys(r.sub, config.dedupe.match_on)}
            if r.idempotency_key:
                marks.add(("idem", f"{r.source}:{r.idempotency_key}"))
            if r.sub.external_id:
                marks.add(("ext", f"{r.source}:{r.sub.external_id}"))
            if marks & taken:
                await flush()
                results.append(await submit_lead(uow, config, r.sub, source=r.source, now=now,
                                                 idempotency_key=r.idempotency_key))
            else:
                tier = classify_tier(r.sub, r.source, config.tiers)
                row, event, accepted = _new_lead(config, r.sub, r.source, tier, now, None)
                rows.append(row)
                uow.emit(TOPIC_INTAKE, event)
                if r.idempotency_key:
                    remembered.append({"source": r.source, "key": r.idempotency_key, "lead_id": accepted.lead_id})
                if r.sub.external_id:
                    released.append((r.sub.external_id, accepted.lead_id))
                results.append(accepted)
            taken |= marks
    await flush()
    return results


async def _upgrade(
    uow: UnitOfWork, config: Config, row: Any, sub: Submission, tier: str, now: datetime,
    cause: CloudEvent | None,
) -> str | None:
    """A repeat that ranks above the lead's tier (a demo request after a content download)
    raises it: lead.updated with the new intent and tier. Returns the new tier, or None."""
    if tier_rank(tier, config.tiers) >= tier_rank(row.tier, config.tiers):
        return None
    record = dict(row.record)
    old_intent = record.get("intent")
    new_intent = sub.intent.model_dump(mode="json", exclude_none=True)
    record["intent"], record["tier"] = new_intent, tier
    changed = {"intent": {"old": old_intent, "new": new_intent}, "tier": {"old": row.tier, "new": tier}}
    await _apply_update(uow, row, record, changed, tier, "upgraded", now, cause)
    return tier


async def _apply_update(
    uow: UnitOfWork, row: Any, record: dict[str, Any], changed: dict[str, dict[str, Any]], tier: str,
    reason: str, now: datetime, cause: CloudEvent | None, data_quality: list[dict[str, Any]] | None = None,
) -> None:
    contact = record.get("contact") or {}
    await uow.conn.execute(
        leads.update().where(leads.c.lead_id == row.lead_id).values(
            tier=tier, record=record,
            email=contact.get("email") if "contact.email" not in _flawed(record) else None,
            phone=contact.get("phone") if "contact.phone" not in _flawed(record) else None,
        )
    )
    uow.emit(TOPIC_INTAKE, new_event(
        "lead.updated", service=SERVICE, lead_id=row.lead_id, time=now, cause=cause,
        correlation_id=row.correlation_id,
        data=LeadUpdated(lead_id=row.lead_id, changed=changed, tier=tier, previous_tier=row.tier,
                         reason=reason, contactable=record.get("contactable", True),
                         data_quality=data_quality or []),
    ))


def _flawed(record: dict[str, Any]) -> set[str]:
    return {q.get("field") for q in record.get("data_quality") or []}


async def update_lead(
    uow: UnitOfWork, config: Config, lead_id: str, patch: Submission, *, now: datetime,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Complete or correct a lead's fields (PATCH): only the fields the patch gives change.
    Emits lead.updated with each change (old and new) and the re-evaluated tier."""
    await xact_lock(uow.conn, f"lead:{lead_id}")
    row = (await uow.conn.execute(
        select(leads.c.lead_id, leads.c.tier, leads.c.source, leads.c.record, leads.c.correlation_id)
        .where(leads.c.lead_id == lead_id)
    )).first()
    if row is None:
        raise UnknownLead(lead_id)
    record = json.loads(json.dumps(row.record))
    new = patch.snapshot()
    changed: dict[str, dict[str, Any]] = {}
    flawed = {i.field for i in patch.issues}
    for name in sorted(patch.given):
        section, _, key = name.partition(".")
        if name in flawed and (record.get(section) or {}).get(key) is not None:
            continue  # an unreadable correction never overwrites a value that was usable
        targets = [key]
        if name == "contact.phone":
            targets.append("phone_extension")
        if name == "company.size":
            targets += ["size_band", "employees", "employees_min", "employees_max"]
        if name == "company.website":
            targets.append("domain")
        for target in targets:
            old_value = (record.get(section) or {}).get(target)
            new_value = new[section].get(target)
            if new_value is not None and new_value != old_value:
                record.setdefault(section, {})[target] = new_value
                changed[f"{section}.{target}"] = {"old": old_value, "new": new_value}
    for name in ("external_id", "score", "submitted_at"):
        if new.get(name) is not None and new[name] != record.get(name):
            changed[name] = {"old": record.get(name), "new": new[name]}
            record[name] = new[name]
    for key, value in patch.attributes.items():
        if (record.get("attributes") or {}).get(key) != value:
            changed[f"attributes.{key}"] = {"old": (record.get("attributes") or {}).get(key), "new": value}
            record.setdefault("attributes", {})[key] = value
    if "consent" in new and patch.consent.model_fields_set:
        for key in patch.consent.model_fields_set:
            value = new["consent"].get(key)
            if record.get("consent", {}).get(key) != value:
                changed[f"consent.{key}"] = {"old": record.get("consent", {}).get(key), "new": value}
                record.setdefault("consent", {})[key] = value
    if not changed:
        return row.tier, {}
    # A corrected field drops its earlier data-quality note; the patch's own notes are added.
    fixed = {k for k in changed}
    record["data_quality"] = [q for q in record.get("data_quality") or [] if q.get("field") not in fixed]
    record["data_quality"] += patch.data_quality
    merged = read_submission(_as_body(record), config.intake.source(row.source), intent_vocabulary(config),
                             partial=True)
    merged.issues = [Issue(q["field"], q["message"], q.get("value")) for q in record["data_quality"]]
    tier = classify_tier(merged, row.source, config.tiers)
    record["tier"] = tier
    record["missing_fields"] = missing_fields(merged)
    record["contactable"] = bool(record.get("contactable", True)) and is_contactable(
        merged, config.intake.suppression)
    await _apply_update(uow, row, record, changed, tier, "patched", now, None, patch.data_quality)
    return tier, changed


def _as_body(record: dict[str, Any]) -> dict[str, Any]:
    """A stored lead record read back as a submission (to re-tier it after a change)."""
    return {
        "contact": {k: v for k, v in (record.get("contact") or {}).items() if k != "phone_extension"},
        "company": {k: v for k, v in (record.get("company") or {}).items()
                    if k in ("name", "domain", "website", "industry", "country", "size")},
        "intent": record.get("intent"),
        "score": record.get("score"),
        "consent": {k: v for k, v in (record.get("consent") or {}).items() if k in ("marketing", "contact")},
    }


async def _lock_all(conn: Any, names: list[str]) -> None:
    if names:
        await conn.execute(select(*(func.pg_advisory_xact_lock(func.hashtext(n)) for n in sorted(set(names)))))


async def _duplicate(
    uow: UnitOfWork, source: str, idempotency_key: str | None, lead_id: str, upgraded: str | None = None,
) -> Accepted:
    await _remember_key(uow, source, idempotency_key, lead_id)
    return Accepted(lead_id, "duplicate", tier=upgraded, upgraded=upgraded is not None)


async def _remember_key(uow: UnitOfWork, source: str, key: str | None, lead_id: str) -> None:
    if key:
        await uow.conn.execute(
            pg_insert(idempotency_keys).values(source=source, key=key, lead_id=lead_id).on_conflict_do_nothing()
        )


async def _identity_match(
    uow: UnitOfWork, sub: Submission, keys: list[tuple[str, str]], match_on: list[str], since: datetime,
) -> tuple[Any, str] | None:
    """The earliest lead in the window that is this submission's person (see `same_person`)."""
    if not keys:
        return None
    conditions = [leads.c.email == v if kind == "email" else leads.c.phone == v for kind, v in keys]
    rows = (
        await uow.conn.execute(
            select(leads.c.lead_id, leads.c.record["contact"].label("contact"))
            .where(or_(*conditions), leads.c.received_at >= since)
            .order_by(leads.c.received_at)
            .limit(50)
        )
    ).all()
    for row in rows:
        match_on_kind = same_person(row.contact or {}, sub.contact, match_on)
        if match_on_kind:
            lead = (await uow.conn.execute(
                select(leads.c.lead_id, leads.c.tier, leads.c.record, leads.c.correlation_id)
                .where(leads.c.lead_id == row.lead_id)
            )).one()
            return lead, match_on_kind
    return None


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
        select(leads.c.lead_id, leads.c.tier, leads.c.record, leads.c.correlation_id)
        .where(leads.c.lead_id == lead_id)
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
        reason=activity.reason,
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
        if activity.type == "opt_out" and lead.record.get("contactable", True):
            # Consent withdrawn: nobody may contact the lead any more, so its SLAs stop.
            record = dict(lead.record, contactable=False)
            record["consent"] = dict(record.get("consent") or {}, contact=False)
            await _apply_update(uow, lead, record, {"contactable": {"old": True, "new": False}},
                                lead.tier, "opted_out", now, cause)
    return activity_id


# ---- activities that arrive on Kafka before their lead --------------------------------------


@dataclass(frozen=True)
class RawPosition:
    """Where a raw record came from, kept so a parked record can still be dead-lettered."""

    topic: str
    partition: int
    offset: int
    key: str | None
    original: bytes


async def resolve_lead(uow: UnitOfWork, ref: str) -> str | None:
    """A lead by its id, else by the sender's external id (the newest lead with it)."""
    found = await uow.conn.scalar(select(leads.c.lead_id).where(leads.c.lead_id == ref))
    if found is None:
        found = await uow.conn.scalar(
            select(leads.c.lead_id).where(leads.c.external_id == ref).order_by(leads.c.received_at.desc()).limit(1)
        )
    return found


async def park_activity(
    uow: UnitOfWork, config: Config, ref: str, event: CloudEvent, position: RawPosition, now: datetime,
) -> None:
    await uow.conn.execute(pending_activities.insert().values(
        lead_ref=ref, event=event.model_dump(mode="json"), topic=position.topic, partition=position.partition,
        offset=position.offset, key=position.key, original=position.original, parked_at=now,
        expires_at=now + timedelta(seconds=config.intake.activity_wait),
    ))


async def _release_pending(uow: UnitOfWork, config: Config, leads_by_ref: list[tuple[str, str]],
                           now: datetime) -> None:
    """Record the activities that were waiting for these new leads ((external id, lead id)
    pairs), in the leads' transaction."""
    lead_of = dict(leads_by_ref)
    rows = (await uow.conn.execute(
        delete(pending_activities).where(pending_activities.c.lead_ref.in_(sorted(lead_of)))
        .returning(*pending_activities.c)
    )).all()
    for row in sorted(rows, key=lambda r: r.id):
        lead_id = lead_of[row.lead_ref]
        event = CloudEvent.model_validate(row.event)
        activity = ActivityIn.model_validate({k: v for k, v in event.data.items() if k != "lead_id"})
        try:
            await record_activity(uow, config, lead_id, activity, now=now, cause=event)
        except RejectedActivity as exc:
            _deadletter(uow, row, f"invalid_data: invalid activity: {exc.field}: {exc}", now)


def _deadletter(uow: UnitOfWork, row: Any, error: str, now: datetime) -> None:
    uow.emit(TOPIC_DEADLETTER, new_event(
        "deadletter", service=SERVICE, lead_id=row.key or "", time=now,
        event_id=deterministic_id("deadletter", "pending", row.topic, str(row.partition), str(row.offset)),
        data=DeadLetter(topic=row.topic, partition=row.partition, offset=row.offset, key=row.key,
                        original_bytes_b64=base64.b64encode(row.original).decode(), error=error[:2000],
                        service=SERVICE),
    ))


async def expire_pending(uow: UnitOfWork, now: datetime, limit: int = 500) -> list[str]:
    """Dead-letter parked activities whose lead never came; returns their topics (for metrics)."""
    expired = select(pending_activities.c.id).where(pending_activities.c.expires_at <= now).order_by(
        pending_activities.c.id).limit(limit).with_for_update(skip_locked=True)
    rows = (await uow.conn.execute(
        delete(pending_activities).where(pending_activities.c.id.in_(expired)).returning(*pending_activities.c)
    )).all()
    for row in rows:
        waited = (row.expires_at - row.parked_at).total_seconds()
        _deadletter(uow, row, f"unknown_lead: no lead {row.lead_ref!r} arrived within {waited:g}s", now)
    return [row.topic for row in rows]
