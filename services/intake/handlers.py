"""Intake's service layer: accept a submission or an activity, inside one unit of work.

Each handler loads facts through the store (`stores.IntakeStore`), decides in `domain`, and
records the resulting events (`uow.record`): the projection writes the tables from the events,
the same code a replay runs. A handler that decides from a lead's state reads the lead's stream
version first (`uow.load_version`), so a concurrent writer to that lead makes one of the two
commits conflict and run again from fresh state.
"""
from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from shared import metrics, tracing
from shared.config import Config, named_sources
from shared.events import (
    TOPIC_DEADLETTER,
    TOPIC_INTAKE,
    ActivityRecorded,
    CloudEvent,
    Disposition,
    LeadMerged,
    LeadReceived,
    LeadUpdated,
    dead_letter,
    deterministic_id,
    new_event,
)

from .adapters import Held, IntakeStore
from .domain import (
    ACTIVITY_HELD,
    ACTIVITY_RELEASED,
    KEY_BOUND,
    ActivityHeld,
    ActivityIn,
    ActivityReleased,
    IdempotencyKeyBound,
    KnownLead,
    New,
    Replay,
    activity_zone,
    actor_id,
    as_not_applied,
    brings_news,
    classify_tier,
    dedupe,
    identity_keys,
    is_contactable,
    is_suppressed,
    missing_fields,
    opt_out,
    patch_lead,
    read_disposition,
    unapplied,
    upgrade,
)
from .normalize import Submission, clean_text

SERVICE = "intake"
# The most held activities one expiry round dead-letters.
EXPIRE_BATCH = 500
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


class Recorder(Protocol):
    """The unit of work as a handler uses it (`shared.uow.UnitOfWork`, or a fake)."""

    def emit(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None: ...

    async def record(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None: ...

    async def record_all(self, records: Sequence[tuple[str | None, CloudEvent, str | None]]) -> None: ...

    async def load_version(self, stream_id: str) -> int: ...

    async def load_versions(self, stream_ids: Sequence[str]) -> dict[str, int]: ...


class UnknownLead(LookupError):
    pass


class OtherSourcesLead(PermissionError):
    """A source key's PATCH of a lead another source submitted."""


class RejectedActivity(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def internal_event(type: str, data: BaseModel, *, time: datetime, cause: CloudEvent | None = None) -> CloudEvent:
    """An event kept in intake's store only: no subject (it is not one of a lead's published
    events), recorded on a stream of its own."""
    event_id = str(uuid.uuid4())
    return CloudEvent(id=event_id, source=f"leadsla/{SERVICE}", type=type, time=time,
                      correlationid=(cause.correlationid if cause else None) or event_id,
                      causationid=cause.id if cause else None, data=data.model_dump(mode="json"))


def lock_names(source: str, identity: list[tuple[str, str]], key: str | None, external_id: str | None) -> list[str]:
    """What serialises requests that could be the same lead: retries of a key, the same external
    id, the same person."""
    names = [f"id:{kind}:{value}" for kind, value in identity]
    if key:
        names.append(f"idem:{source}:{key}")
    if external_id:
        names.append(f"ext:{source}:{external_id}")
    return names


def lead_lock(lead_id: str) -> str:
    """What serialises the writers of one lead's stream (a PATCH, a touch): they wait for each
    other instead of racing on it."""
    return f"lead:{lead_id}"


async def submit_lead(
    uow: Recorder,
    store: IntakeStore,
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
    keys = identity_keys(sub, config.dedupe.match_on)
    # Both of two racing requests for one lead get the same answer; one round trip, in a global order.
    await store.lock(lock_names(source, keys, idempotency_key, sub.external_id))
    facts = await store.dedupe_facts(source, idempotency_key, sub.external_id, keys,
                                     since=now - timedelta(seconds=config.dedupe.window))
    decision = dedupe(facts, sub.contact, config.dedupe.match_on)
    if isinstance(decision, Replay):  # the same request again: same answer, nothing else changes
        return Accepted(decision.lead_id, "duplicate")
    tier = classify_tier(sub, source, config.tiers)
    if isinstance(decision, New):
        event, accepted = new_lead(config, sub, source, tier, now, cause)
        await uow.record(TOPIC_INTAKE, event)
        await _bind_key(uow, source, idempotency_key, accepted.lead_id, now, cause)
        if sub.external_id:  # only a sender's own id can name a lead before it exists
            await _release_held(uow, store, config, [(sub.external_id, accepted.lead_id, source)], now)
        return accepted
    # A repeat: decide from the lead as it is at its stream's version.
    await uow.load_version(decision.lead.lead_id)
    lead = await store.lead(decision.lead.lead_id) or decision.lead
    snapshot = sub.snapshot()
    # A repeat by the sender's own id merges too when it brings news (its record re-sent with a
    # new email or phone): what it says is kept on the lead's stream, as a person's repeat is.
    match_on = decision.match_on or ("external_id" if brings_news(lead, snapshot) else None)
    if match_on is not None:
        await uow.record(TOPIC_INTAKE, new_event(
            "lead.merged", service=SERVICE, lead_id=lead.lead_id, time=now, cause=cause,
            correlation_id=lead.correlation_id,
            data=LeadMerged(lead_id=lead.lead_id, match_on=match_on, duplicate_submission=snapshot, source=source),
        ))
    if decision.match_on is not None:
        if sub.external_id:  # the repeat's own id now names this lead (projection.merged_row)
            await _release_held(uow, store, config, [(sub.external_id, lead.lead_id, source)], now)
    update = upgrade(lead, sub.intent.model_dump(mode="json", exclude_none=True), tier, config.tiers, sub.score)
    if update is not None:
        await _record_update(uow, lead, update, now, cause)
    await _bind_key(uow, source, idempotency_key, lead.lead_id, now, cause)
    return Accepted(lead.lead_id, "duplicate", tier=update.tier if update else None, upgraded=update is not None)


def new_lead(
    config: Config, sub: Submission, source: str, tier: str, now: datetime, cause: CloudEvent | None,
) -> tuple[CloudEvent, Accepted]:
    """The lead.received event and the answer for a new lead (pure: no I/O)."""
    lead_id = str(uuid.uuid4())
    # In wire form directly (`WireModel.wire`): every value is our own, already validated
    # (`test_lead_received_wire_form` holds it equal to the validated model's dump).
    received = LeadReceived.wire(
        lead_id=lead_id,
        source=source,
        external_id=sub.external_id,
        tier=tier,
        contact=sub.contact.model_dump(mode="json"),
        company=sub.company.model_dump(mode="json"),
        intent=sub.intent.model_dump(mode="json"),
        score=sub.score,
        consent=sub.consent.model_dump(mode="json"),
        contactable=is_contactable(sub, config.intake.suppression),
        received_at=now,
        submitted_at=sub.submitted_at,
        missing_fields=missing_fields(sub),
        attributes=sub.attributes,
        data_quality=sub.data_quality,
        suppressed=is_suppressed(sub.contact, config.intake.suppression),
    )
    event = new_event("lead.received", service=SERVICE, lead_id=lead_id, data=received, time=now, cause=cause)
    return event, Accepted(lead_id, "accepted", sub.warnings, tier)


async def _bind_key(uow: Recorder, source: str, key: str | None, lead_id: str, now: datetime,
                    cause: CloudEvent | None) -> None:
    if key:
        await uow.record(None, _key_event(source, key, lead_id, now, cause), stream=_key_stream(source, key))


def _key_event(source: str, key: str, lead_id: str, now: datetime, cause: CloudEvent | None) -> CloudEvent:
    return internal_event(KEY_BOUND, IdempotencyKeyBound(source=source, key=key, lead_id=lead_id, bound_at=now),
                          time=now, cause=cause)


def _key_stream(source: str, key: str) -> str:
    return f"idempotency:{source}:{key}"


@dataclass(frozen=True)
class LeadRequest:
    sub: Submission
    source: str
    idempotency_key: str | None = None
    traceparent: tracing.TraceContext | None = None
    cause: CloudEvent | None = None  # the raw record's event, for a lead taken from Kafka


async def submit_leads(uow: Recorder, store: IntakeStore, config: Config, requests: list[LeadRequest], *,
                       now: datetime) -> list[Accepted]:
    """`submit_lead` for many leads in one transaction (a batch, or a group commit), with the
    same answers, in a handful of round trips: lock everything once, look up every key once,
    and record the leads that match nothing together (the projection inserts them in one
    statement). A lead that may repeat a known one (or an earlier one of the same group) takes
    the one-by-one path, after the new leads before it are recorded, so it sees them."""
    since = now - timedelta(seconds=config.dedupe.window)
    names: list[str] = []
    idem, exts, emails, phones = set(), set(), set(), set()
    for r in requests:
        keys = identity_keys(r.sub, config.dedupe.match_on)
        names += lock_names(r.source, keys, r.idempotency_key, r.sub.external_id)
        emails |= {v for k, v in keys if k == "email"}
        phones |= {v for k, v in keys if k == "phone"}
        if r.idempotency_key:
            idem.add((r.source, r.idempotency_key))
        if r.sub.external_id:
            exts.add((r.source, r.sub.external_id))
    taken = await store.lock_and_find(names, idem, exts, emails, phones, since)  # ("idem"|"ext"|"email"|"phone", value)

    results: list[Accepted] = []
    records: list[tuple[str | None, CloudEvent, str | None]] = []
    released: list[tuple[str, str, str]] = []

    async def flush() -> None:
        await uow.record_all(records)
        if released:
            await _release_held(uow, store, config, released, now)
        records.clear(), released.clear()

    for r in requests:
        with tracing.use(r.traceparent):  # a group commit carries each request's own trace
            marks = set(identity_keys(r.sub, config.dedupe.match_on))
            if r.idempotency_key:
                marks.add(("idem", f"{r.source}:{r.idempotency_key}"))
            if r.sub.external_id:
                marks.add(("ext", f"{r.source}:{r.sub.external_id}"))
            if marks & taken:
                await flush()
                results.append(await submit_lead(uow, store, config, r.sub, source=r.source, now=now,
                                                 idempotency_key=r.idempotency_key, cause=r.cause))
            else:
                tier = classify_tier(r.sub, r.source, config.tiers)
                event, accepted = new_lead(config, r.sub, r.source, tier, now, r.cause)
                records.append((TOPIC_INTAKE, event, None))
                if r.idempotency_key:
                    records.append((None, _key_event(r.source, r.idempotency_key, accepted.lead_id, now, r.cause),
                                    _key_stream(r.source, r.idempotency_key)))
                if r.sub.external_id:
                    released.append((r.sub.external_id, accepted.lead_id, r.source))
                results.append(accepted)
            taken |= marks
    await flush()
    return results


async def _record_update(uow: Recorder, lead: KnownLead, update: LeadUpdated, now: datetime,
                         cause: CloudEvent | None) -> None:
    await uow.record(TOPIC_INTAKE, new_event("lead.updated", service=SERVICE, lead_id=lead.lead_id, time=now,
                                             cause=cause, correlation_id=lead.correlation_id, data=update))


async def update_lead(
    uow: Recorder, store: IntakeStore, config: Config, lead_id: str, patch: Submission, *, now: datetime,
    source: str | None = None,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Complete or correct a lead's fields (PATCH): only the fields the patch gives change.
    Records lead.updated with each change (old and new) and the re-evaluated tier. With `source`
    (a source key's PATCH), only a lead of that source: the answer shows the old contact data."""
    await store.lock([lead_lock(lead_id)])
    await uow.load_version(lead_id)
    lead = await store.lead(lead_id)
    if lead is None:
        raise UnknownLead(lead_id)
    if source is not None and lead.source != source:
        raise OtherSourcesLead(lead_id)
    # The answer's warnings say which unreadable corrections were not applied (`patch` is this request's).
    patch.issues = as_not_applied(patch.issues, unapplied(lead, patch))
    update = patch_lead(lead, patch, config)
    if update is None:
        return lead.tier, {}
    await _record_update(uow, lead, update, now, None)
    return update.tier, update.changed


async def record_activity(
    uow: Recorder,
    store: IntakeStore,
    config: Config,
    lead_id: str,
    activity: ActivityIn,
    *,
    now: datetime,
    cause: CloudEvent | None = None,
) -> str:
    """Record a touch (activity.recorded); a repeat of the same external id changes nothing.
    An opt-out also makes the lead not contactable (lead.updated)."""
    # A CRM syncing a lead's calls in parallel lost the race on its stream five times over (a 500),
    # 16 of 40 concurrent posts, before touches took the lead's lock.
    await store.lock([lead_lock(lead_id)])
    await uow.load_version(lead_id)
    lead = await store.lead(lead_id)
    if lead is None:
        raise UnknownLead(lead_id)
    activity_id, activity = _checked_activity(config, lead_id, activity, now)
    if await store.known_activities([activity_id]):
        return activity_id
    await uow.record(TOPIC_INTAKE, _recorded(config, lead, activity_id, activity, now, cause))
    if activity.type == "opt_out":
        update = opt_out(lead)
        if update is not None:
            await _record_update(uow, lead, update, now, cause)
    return activity_id


def _checked_activity(config: Config, lead_id: str, activity: ActivityIn, now: datetime) -> tuple[str, ActivityIn]:
    """The activity's id and the activity as recorded (its disposition read, a time too far ahead
    dropped); raises `RejectedActivity`."""
    disposition, problem = read_disposition(activity.disposition, config.disposition_reasons)
    if problem:
        raise RejectedActivity(*problem)
    activity = activity.model_copy(update={"disposition": disposition})
    activity = activity.undated_if_after(now + FUTURE_TOLERANCE)
    if activity.occurred_at is not None and activity.occurred_at > now + FUTURE_TOLERANCE:
        raise RejectedActivity("occurred_at", "is in the future; record an activity once it has happened")
    activity_id = (
        deterministic_id("activity", lead_id, activity.external_id) if activity.external_id else str(uuid.uuid4())
    )
    return activity_id, activity


def _recorded(config: Config, lead: KnownLead, activity_id: str, activity: ActivityIn, now: datetime,
              cause: CloudEvent | None) -> CloudEvent:
    recorded = ActivityRecorded(
        lead_id=lead.lead_id,
        activity_id=activity_id,
        type=activity.type,
        actor=actor_id(activity.actor, config),
        occurred_at=activity.occurred_at or now,
        channel=activity.channel,
        outcome=activity.outcome,
        disposition=Disposition(status=activity.disposition.status, reason=activity.disposition.reason)
        if activity.disposition else None,
        reason=activity.reason,
        attributes=activity.attributes() or None,
    )
    return new_event("activity.recorded", service=SERVICE, lead_id=lead.lead_id, data=recorded, time=now,
                     cause=cause, correlation_id=lead.correlation_id)


# ---- activities that arrive on Kafka before their lead --------------------------------------


@dataclass(frozen=True)
class RawPosition:
    """Where a raw record came from, kept so a held record can still be dead-lettered."""

    topic: str
    partition: int
    offset: int
    key: str | None
    original: bytes


BARE = "intakebare"  # extension attribute: the record was a bare JSON body, not a CloudEvent


def raw_activity(event: CloudEvent, config: Config, named: str | None, now: datetime) -> ActivityIn:
    """A raw record's activity as its sender meant it (`named`: its `named_source`), read as it
    arrives and again when it is released from its wait for its lead (else a held touch lost its
    CloudEvent time and was dated when its lead came: an instant first response for a call made
    hours before). Raises pydantic's ValidationError."""
    data = {k: v for k, v in event.data.items() if k != "lead_id"}
    activity = ActivityIn.model_validate(data).dated(activity_zone(config, named))
    given: dict[str, Any] = {}
    if not (event.model_extra or {}).get(BARE):
        # A CloudEvent's own id (ce_id) is the producer's idempotency key for the touch, as for a
        # submission (the same id as an Idempotency-Key over HTTP is the same touch), and its
        # source is kept.
        if activity.external_id is None:
            given["external_id"] = event.id
        if "ce_source" not in (activity.model_extra or {}):
            given["ce_source"] = event.source
    if activity.occurred_at is None and event.time <= now:
        # No time of its own: the CloudEvent's `time` ("when the occurrence happened"), or
        # when the broker took the record, not when intake got to it behind a backlog.
        given["occurred_at"] = event.time
    return activity.model_copy(update=given) if given else activity


def named_source(event: CloudEvent, config: Config) -> str | None:
    """The source a raw record names, when the configuration names it too (`named_sources`): its
    CloudEvent `source`, else its body's `source`; None when it names none (Kafka has no keys)."""
    configured = named_sources(config)
    for name in (event.source, event.data.get("source")):
        if isinstance(name, str) and name in configured:
            return name
    return None


async def resolve_leads(store: IntakeStore, refs: Iterable[tuple[str, str | None]]) -> dict[tuple[str, str | None], str | None]:
    """The lead each (ref, source) names: by its id, else by the sender's external id: only among
    `source`'s leads when the sender names its source (external ids are unique per source only),
    else the newest lead of any source with it. Locks the references first, as `_release_held`
    does: a lead accepted concurrently is either seen here or sees the activity held (otherwise
    the hold could land after its release, and wait out `activity_wait` into a dead letter)."""
    wanted = list(dict.fromkeys(refs))
    await store.lock([f"ref:{ref}" for ref, _ in wanted])
    return {(ref, source): await store.resolve(ref, source) for ref, source in wanted}


@dataclass(frozen=True)
class RawTouch:
    """An activity off the raw topic: the lead it names (`ref`, among `source`'s leads if it names
    a source), the activity, the record as its sender meant it, and where it came from."""

    ref: str
    source: str | None
    activity: ActivityIn
    cause: CloudEvent
    position: RawPosition


def held_touch_id(touch: RawTouch) -> str | None:
    """The hold of a touch that says which touch it is (None: it does not; it is held by its
    record's position)."""
    external_id = touch.activity.external_id
    return deterministic_id("held", touch.ref, touch.source or "", external_id) if external_id else None


async def record_touches(uow: Recorder, store: IntakeStore, config: Config, touches: Sequence[RawTouch], *,
                         now: datetime) -> None:
    """A fetched batch of raw touches, in order, decided as `record_activity` decides one, with a
    few statements for the batch instead of six a touch (a CRM back-filling a lead's history was
    read at 200 touches/s, one round trip after another): the references locked and resolved once
    each, the leads locked and read once each, the activities already known read at once, the
    new ones recorded together. A touch whose lead is not here yet is held; an opt-out, which
    changes its lead, goes through `record_activity` in its place. Raises `RejectedActivity`."""
    resolved = await resolve_leads(store, [(t.ref, t.source) for t in touches])
    lead_ids = sorted({lead_id for lead_id in resolved.values() if lead_id is not None})
    await store.lock([lead_lock(lead_id) for lead_id in lead_ids])
    await uow.load_versions(lead_ids)
    leads = {lead_id: await store.lead(lead_id) for lead_id in lead_ids}
    # (touch, its lead, the activity's id and the activity as recorded); lead None: not here yet.
    checked: list[tuple[RawTouch, KnownLead | None, str | None, ActivityIn]] = []
    for touch in touches:
        lead_id = resolved[(touch.ref, touch.source)]
        if lead_id is None:
            checked.append((touch, None, None, touch.activity))
            continue
        lead = leads[lead_id]
        if lead is None:
            raise UnknownLead(lead_id)
        checked.append((touch, lead, *_checked_activity(config, lead_id, touch.activity, now)))
    known = await store.known_activities(activity_id for _, _, activity_id, _ in checked if activity_id is not None)
    records: list[tuple[str | None, CloudEvent, str | None]] = []
    held: dict[str, set[str]] = {}  # ref -> the ids of its holds, read when a touch is first held for it
    for touch, lead, activity_id, activity in checked:
        if lead is not None and activity_id is not None and activity.type != "opt_out":
            if activity_id not in known:
                known.add(activity_id)
                records.append((TOPIC_INTAKE, _recorded(config, lead, activity_id, activity, now, touch.cause), None))
            continue
        await uow.record_all(records)  # what came before it first, in order
        records = []
        if lead is None:
            # The raw topics are consumed independently: the lead may still be on its way. A touch
            # with an identity (its external id, or its CloudEvent id) is held once however often
            # its sender resends it before the lead comes, as it is recorded once after.
            hold_id = held_touch_id(touch)
            if hold_id is not None and touch.ref not in held:
                held[touch.ref] = {h.id for h in await store.held_for([touch.ref])}
            if hold_id is None or hold_id not in held[touch.ref]:
                await park_activity(uow, config, touch.ref, touch.cause, touch.position, now, hold_id)
                if hold_id is not None:
                    held[touch.ref].add(hold_id)
        else:
            known.add(await record_activity(uow, store, config, lead.lead_id, touch.activity, now=now,
                                            cause=touch.cause))
    await uow.record_all(records)


def _held_stream(ref: str) -> str:
    return f"held:{ref}"


async def park_activity(
    uow: Recorder, config: Config, ref: str, event: CloudEvent, position: RawPosition, now: datetime,
    hold_id: str | None = None,
) -> None:
    """Hold an activity until its lead arrives, at most `intake.activity_wait`."""
    held = ActivityHeld(
        hold_id=hold_id or deterministic_id("held", position.topic, str(position.partition), str(position.offset)),
        # Storable (no NUL, no lone surrogate, as any JSON may carry): else the hold failed and
        # the touch was dead-lettered at once. Its fields the contract names refuse such text
        # before it is held; the rest reach `attributes` cleaned alike; the dead letter keeps the bytes.
        lead_ref=ref, event=clean_text(event.model_dump(mode="json")), topic=position.topic, partition=position.partition,
        offset=position.offset, key=position.key, original_b64=base64.b64encode(position.original).decode(),
        held_at=now, expires_at=now + timedelta(seconds=config.intake.activity_wait),
    )
    await uow.record(None, internal_event(ACTIVITY_HELD, held, time=now, cause=event), stream=_held_stream(ref))


async def _release(uow: Recorder, held: Held, outcome: str, lead_id: str | None, now: datetime) -> None:
    released = ActivityReleased(hold_id=held.id, lead_ref=held.lead_ref, outcome=outcome, lead_id=lead_id,
                                released_at=now)
    await uow.record(None, internal_event(ACTIVITY_RELEASED, released, time=now), stream=_held_stream(held.lead_ref))


async def _release_held(uow: Recorder, store: IntakeStore, config: Config,
                        leads_by_ref: list[tuple[str, str, str]], now: datetime) -> None:
    """Record the activities that were waiting for these new leads, or for the external id of a
    repeat merged into a lead ((external id, lead id, source)), in the leads' transaction."""
    leads_of: dict[str, list[tuple[str, str]]] = {}  # external id -> [(lead id, source)]
    for ref, lead_id, source in leads_by_ref:
        leads_of.setdefault(ref, []).append((lead_id, source))
    await store.lock([f"ref:{ref}" for ref in leads_of])  # see resolve_leads
    for held in await store.held_for(leads_of):
        event = CloudEvent.model_validate(held.event)
        named = named_source(event, config)
        # An activity that names its source waits for that source's lead (see resolve_leads).
        lead_id = next((lead for lead, source in leads_of[held.lead_ref] if named in (None, source)), None)
        if lead_id is None:
            continue
        activity = raw_activity(event, config, named, held.parked_at)  # as it was read when it came
        try:
            await record_activity(uow, store, config, lead_id, activity, now=now, cause=event)
        except RejectedActivity as exc:
            await _deadletter(uow, store, held, f"invalid_data: invalid activity: {exc.field}: {exc}", now)
            await _release(uow, held, "rejected", lead_id, now)
        else:
            await _release(uow, held, "recorded", lead_id, now)


async def _deadletter(uow: Recorder, store: IntakeStore, held: Held, error: str, now: datetime) -> None:
    """A held activity becomes a dead letter: kept whole in Postgres, and on leads.deadletter as
    the consumer sends every dead letter (reference, size, SHA-256, bounded bytes)."""
    letter_id = deterministic_id("deadletter", "pending", held.topic, str(held.partition), str(held.offset))
    await store.keep_dead_letter(letter_id, held, error[:2000])
    uow.emit(TOPIC_DEADLETTER, new_event(
        "deadletter", service=SERVICE, lead_id=held.key or "", time=now, event_id=letter_id,
        data=dead_letter(topic=held.topic, partition=held.partition, offset=held.offset, key=held.key,
                         original=held.original, error=error[:2000], service=SERVICE, letter_id=letter_id),
    ))


async def expire_pending(uow: Recorder, store: IntakeStore, now: datetime, limit: int = EXPIRE_BATCH) -> list[str]:
    """Dead-letter held activities whose lead never came; returns their topics (for metrics)."""
    expired = await store.expired(now, limit)
    for held in expired:
        waited = (held.expires_at - held.parked_at).total_seconds()
        await _deadletter(uow, store, held, f"unknown_lead: no lead {held.lead_ref!r} arrived within {waited:g}s",
                          now)
        await _release(uow, held, "expired", None, now)
    return [held.topic for held in expired]
