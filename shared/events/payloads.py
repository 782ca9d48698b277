"""The payloads of the contract's event types: one class per type, each naming its type in
`TYPE`. `PAYLOADS` (type -> class) is collected from the classes themselves as they are defined,
so a class and its registry entry cannot drift apart. Classes without a `TYPE` (`SlaEventData`,
`QueueChange`, `NotificationResult`, the nested models) are shared shapes, never an event's payload.
"""
from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field, ValidationError, model_validator

from shared.text import spelled

from .envelope import BadEvent, CloudEvent, WireModel, describe_validation_error

PAYLOADS: dict[str, type[Payload]] = {}


class Payload(WireModel):
    """The `data` of one event type. A subclass that sets `TYPE` registers itself in `PAYLOADS`."""

    TYPE: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        event_type = cls.__dict__.get("TYPE")
        if event_type is None:
            return
        if event_type in PAYLOADS:
            raise TypeError(f"two payload classes for {event_type!r}: {PAYLOADS[event_type].__name__}, {cls.__name__}")
        PAYLOADS[event_type] = cls


class Contact(WireModel):
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    country: str | None = None
    timezone: str | None = None
    language: str | None = None
    title: str | None = None
    phone_extension: str | None = None


class Company(WireModel):
    name: str | None = None
    domain: str | None = None
    size: str | None = None
    country: str | None = None
    website: str | None = None
    industry: str | None = None
    # size normalized both ways: a band like "201-500" and a head count (exact, or the band's bounds)
    size_band: str | None = None
    employees: int | None = None
    employees_min: int | None = None
    employees_max: int | None = None


class Intent(WireModel):
    type: str
    product: str | None = None
    message: str | None = None


class Consent(WireModel):
    marketing: bool = False
    contact: bool = True


class LeadReceived(Payload):
    TYPE: ClassVar[str] = "lead.received"

    lead_id: str
    source: str
    external_id: str | None = None
    tier: str
    contact: Contact
    company: Company
    intent: Intent
    score: float | None = None
    consent: Consent
    contactable: bool
    received_at: datetime
    submitted_at: datetime | None = None
    missing_fields: list[str] = Field(default_factory=list)
    # everything the sender sent that the contract does not name, verbatim
    attributes: dict[str, Any] = Field(default_factory=dict)
    # values kept as sent because they could not be normalized: [{field, message, value}]
    data_quality: list[dict[str, Any]] = Field(default_factory=list)
    suppressed: bool = False


def dotted_changes(changed: dict[str, Any]) -> dict[str, Any]:
    """`lead.updated.changed` in its one shape, a change per dotted field ("intent.type": {old,
    new}). Repeats that raised the tier were stored, until 2026-11, with a section's whole objects
    ("intent": {"old": {...}, "new": {...}}): read as their changed fields, so stored events replay."""
    if all("." in path or not _sectioned(change) for path, change in changed.items()):
        return changed
    flat: dict[str, Any] = {}
    for path, change in changed.items():
        if "." in path or not _sectioned(change):
            flat[path] = change
            continue
        old, new = change.get("old") or {}, change.get("new") or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                flat[f"{path}.{key}"] = {"old": old.get(key), "new": new.get(key)}
    return flat


def _sectioned(change: Any) -> bool:
    return isinstance(change, dict) and (isinstance(change.get("old"), dict) or isinstance(change.get("new"), dict))


class LeadUpdated(Payload):
    """A lead's fields completed or corrected (PATCH), or its intent raised by a repeat."""
    TYPE: ClassVar[str] = "lead.updated"

    @model_validator(mode="before")
    @classmethod
    def _one_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("changed"), dict):
            return {**data, "changed": dotted_changes(data["changed"])}
        return data

    lead_id: str
    # "contact.phone" -> {"old": ..., "new": ...}; "tier" too when it changes
    changed: dict[str, dict[str, Any]]
    tier: str
    previous_tier: str
    reason: str  # patched | upgraded | opted_out
    contactable: bool = True
    data_quality: list[dict[str, Any]] = Field(default_factory=list)
    # the lead's missing fields re-evaluated after the change (None: unchanged)
    missing_fields: list[str] | None = None

    @property
    def withdraws_consent(self) -> bool:
        return withdraws_consent(self.reason, self.changed)


def withdraws_consent(reason: str | None, changed: dict[str, Any]) -> bool:
    """The lead is out of reach: an opt-out, or contact consent withdrawn by a PATCH, which every
    service takes as the opt_out activity (timers end, the owner's claim ends, no escalation,
    reported opted out). `changed` as lead.updated carries it (dotted paths)."""
    return reason == "opted_out" or (changed.get("consent.contact") or {}).get("new") is False


class LeadMerged(Payload):
    TYPE: ClassVar[str] = "lead.merged"

    lead_id: str
    duplicate_submission: dict[str, Any]
    match_on: str
    # The repeat's source: its external id names the lead in that source only (absent on events
    # recorded before it was carried).
    source: str | None = None


class Disposition(WireModel):
    status: str
    reason: str | None = None


class ActivityRecorded(Payload):
    TYPE: ClassVar[str] = "activity.recorded"

    lead_id: str
    activity_id: str
    type: str
    actor: str | None = None
    occurred_at: datetime
    channel: str | None = None
    outcome: str | None = None
    disposition: Disposition | None = None
    reason: str | None = None
    # Fields the sender gave that the contract does not name (a call's duration, CRM ids), as sent.
    attributes: dict[str, Any] | None = None

    @property
    def is_disposition(self) -> bool:
        """A disposition of the lead: a `disposition` activity, or any activity carrying a
        `disposition` (a call logged with its result, as CRMs do). Every service reads it so: it
        meets qualification and ends a cadence as it closes the lead's claim on its owner."""
        return self.disposition is not None

    @property
    def disqualifies(self) -> bool:
        """A disposition whose status is `disqualified`, as the configuration spells it (intake
        records the configured spelling, which may be 'Disqualified')."""
        return self.disposition is not None and spelled(self.disposition.status) == "disqualified"

    @property
    def leaves_the_funnel(self) -> bool:
        """An opt-out or a disqualification: every timer is cancelled, nobody is to work the lead."""
        return self.type == "opt_out" or self.disqualifies


class Candidate(WireModel):
    owner_id: str
    eligible: bool
    why: str


class LeadAssigned(Payload):
    TYPE: ClassVar[str] = "lead.assigned"

    lead_id: str
    owner_id: str
    team_id: str | None
    rule_id: str | None
    method: str
    reason: str
    assignment_no: int
    candidates: list[Candidate]
    assigned_at: datetime
    tier: str | None = None
    # Lead facts, so a consumer can act on the assignment before it has seen lead.received.
    source: str | None = None
    contactable: bool | None = None
    received_at: datetime | None = None
    missing_fields: list[str] = Field(default_factory=list)  # reason missing_data: what the rule needed
    external_id: str | None = None  # the sender's id of the lead: a CRM maps the owner back to its record


class LeadReassigned(Payload):
    TYPE: ClassVar[str] = "lead.reassigned"

    lead_id: str
    from_owner_id: str | None
    to_owner_id: str
    reason: str
    assignment_no: int
    method: str | None = None  # manual (a named owner) or how a reroute picked the new owner
    team_id: str | None = None
    rule_id: str | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    assigned_at: datetime | None = None
    tier: str | None = None
    source: str | None = None
    contactable: bool | None = None
    received_at: datetime | None = None
    external_id: str | None = None


class QueueChange(Payload):
    """A lead entering (`lead.queued`) or leaving (`lead.dequeued`) the routing queue."""

    lead_id: str
    tier: str
    queue: str
    reason: str
    missing_fields: list[str] = Field(default_factory=list)
    queued_at: datetime | None = None
    # The number the lead's assignment out of the queue will carry. A consumer that follows owners
    # by assignment_no orders a lead's routing events by (assignment_no, then queue events before
    # lead.assigned / lead.reassigned): a queue event of a higher number takes the lead from its
    # owner, a replayed one of a lower or equal number changes nothing. None: stored before it was carried.
    assignment_no: int | None = None


class LeadQueued(QueueChange):
    TYPE: ClassVar[str] = "lead.queued"

    # The owner the lead was taken from (rerouted: out of office, an escalation, a reassignment
    # nobody else could take); None for a lead queued on arrival.
    from_owner_id: str | None = None


class LeadDequeued(QueueChange):
    TYPE: ClassVar[str] = "lead.dequeued"


class SlaEventData(Payload):
    """What every sla.* event says about its timer; each type is its own subclass below."""

    lead_id: str
    sla_id: str
    metric: str
    policy_id: str
    policy_version: int
    owner_id: str | None
    due_at: datetime
    started_at: datetime | None = None
    tier: str | None = None
    percent: int | None = None
    breached_at: datetime | None = None
    root_cause: str | None = None
    met_at: datetime | None = None
    reason: str | None = None
    # The whole timer as this step leaves it (due, warnings, pause, next fire time...): the SLA
    # clock's state is a projection of these events. Extra detail for consumers; they may ignore it.
    timer: dict[str, Any] | None = None


class SlaStarted(SlaEventData):
    TYPE: ClassVar[str] = "sla.started"


class SlaWarning(SlaEventData):
    TYPE: ClassVar[str] = "sla.warning"


class SlaMet(SlaEventData):
    TYPE: ClassVar[str] = "sla.met"


class SlaBreached(SlaEventData):
    TYPE: ClassVar[str] = "sla.breached"


class SlaPaused(SlaEventData):
    TYPE: ClassVar[str] = "sla.paused"


class SlaResumed(SlaEventData):
    TYPE: ClassVar[str] = "sla.resumed"


class SlaCancelled(SlaEventData):
    TYPE: ClassVar[str] = "sla.cancelled"


class EscalationTriggered(Payload):
    TYPE: ClassVar[str] = "escalation.triggered"

    lead_id: str
    escalation_id: str
    policy_id: str
    step: int
    trigger_event_id: str
    trigger_type: str
    recipients: list[str]


class NotificationResult(Payload):
    """The outcome of one delivery; `notification.sent` and `notification.failed` below."""

    notification_id: str
    lead_id: str
    escalation_id: str | None = None  # None for a CRM subscription's delivery (see subscription_id)
    channel: str
    recipient: str
    attempts: int
    idempotency_key: str
    error: str | None = None
    subscription_id: str | None = None
    event_id: str | None = None  # the event a subscription delivery carried


class NotificationSent(NotificationResult):
    TYPE: ClassVar[str] = "notification.sent"


class NotificationFailed(NotificationResult):
    TYPE: ClassVar[str] = "notification.failed"


class DeadLetter(Payload):
    """`original_bytes_b64` holds the whole record when it is small, else its first
    `DEADLETTER_PREFIX_BYTES` (then `truncated` is true); the whole record is always kept in
    Postgres (`leadsla.deadletters`, row `deadletter_id`)."""
    TYPE: ClassVar[str] = "deadletter"

    topic: str
    partition: int
    offset: int
    key: str | None
    original_bytes_b64: str
    error: str
    service: str
    deadletter_id: str | None = None
    original_size: int | None = None
    original_sha256: str | None = None
    truncated: bool = False


# Bounded so that a dead letter always fits the broker's 1 MiB record limit, whatever it wraps.
DEADLETTER_PREFIX_BYTES = 64 * 1024


def dead_letter(*, topic: str, partition: int, offset: int, key: str | None, original: bytes, error: str,
                service: str, letter_id: str) -> DeadLetter:
    """The dead letter of a record kept whole in `leadsla.deadletters` as `letter_id`: its
    reference, size and SHA-256, and its bytes up to `DEADLETTER_PREFIX_BYTES`."""
    return DeadLetter(topic=topic, partition=partition, offset=offset, key=key,
                      original_bytes_b64=base64.b64encode(original[:DEADLETTER_PREFIX_BYTES]).decode(),
                      error=error, service=service, deadletter_id=letter_id, original_size=len(original),
                      original_sha256=hashlib.sha256(original).hexdigest(),
                      truncated=len(original) > DEADLETTER_PREFIX_BYTES)


# sla.<kind> -> its payload class (the clock emits them by kind).
SLA_PAYLOADS: dict[str, type[SlaEventData]] = {
    cls.TYPE.removeprefix("sla."): cls for cls in PAYLOADS.values() if issubclass(cls, SlaEventData)
}


def payload_class(event_type: str) -> type[Payload] | None:
    return PAYLOADS.get(event_type)


def decode_payload(event: CloudEvent, cls: type[Payload] | None = None) -> Payload:
    """`event.data` as its type's payload (or as `cls`); raises `BadEvent` naming the bad field."""
    cls = cls or PAYLOADS.get(event.type)
    if cls is None:
        raise BadEvent(f"unknown event type {event.type!r}")
    try:
        return cls.model_validate(event.data)
    except ValidationError as exc:
        raise BadEvent(f"{event.type} data invalid: " + describe_validation_error(exc)) from exc
