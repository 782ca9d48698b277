"""The CloudEvents 1.0 envelope (structured JSON mode) and the typed payloads of the contract.

Every event on the bus is a `CloudEvent`; its `data` is one of the payload models below,
picked by `type` through `EVENT_DATA`.
"""
from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

M = TypeVar("M", bound=BaseModel)

CONTENT_TYPE = b"application/cloudevents+json"

TOPIC_SUBMISSIONS_RAW = "leads.submissions.raw"
TOPIC_ACTIVITIES_RAW = "leads.activities.raw"
TOPIC_INTAKE = "leads.intake"
TOPIC_ROUTING = "leads.routing"
TOPIC_SLA = "leads.sla"
TOPIC_NOTIFICATIONS = "leads.notifications"
TOPIC_DEADLETTER = "leads.deadletter"
ALL_TOPICS = (
    TOPIC_SUBMISSIONS_RAW,
    TOPIC_ACTIVITIES_RAW,
    TOPIC_INTAKE,
    TOPIC_ROUTING,
    TOPIC_SLA,
    TOPIC_NOTIFICATIONS,
    TOPIC_DEADLETTER,
)


def utc_iso(ts: datetime) -> str:
    """RFC 3339 in UTC with a Z, the only time format on the wire."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime on the wire")
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    @field_serializer("*", when_used="json")
    def _times_in_utc(self, value: Any) -> Any:
        return utc_iso(value) if isinstance(value, datetime) else value


class CloudEvent(WireModel):
    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    subject: str | None = None
    time: datetime
    datacontenttype: str = "application/json"
    correlationid: str | None = None
    causationid: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> CloudEvent:
        """Parse one record value; raises `BadEvent` naming what is wrong."""
        if not raw:
            raise BadEvent("empty record value")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise BadEvent("not a CloudEvent: " + describe_validation_error(exc)) from exc

    def data_as(self, model: type[M]) -> M:
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise BadEvent(f"{self.type} data invalid: " + describe_validation_error(exc)) from exc


class BadEvent(ValueError):
    """A record that can never be processed; it goes to the dead-letter topic."""


def describe_validation_error(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
    )


def new_event(
    type: str,
    *,
    service: str,
    lead_id: str,
    data: BaseModel,
    time: datetime,
    cause: CloudEvent | None = None,
    correlation_id: str | None = None,
    event_id: str | None = None,
) -> CloudEvent:
    """Build an event; `cause` carries the correlation id forward and becomes the causation id."""
    event_id = event_id or str(uuid.uuid4())
    return CloudEvent(
        id=event_id,
        source=f"leadsla/{service}",
        type=type,
        subject=lead_id,
        time=time,
        correlationid=correlation_id or (cause.correlationid if cause else None) or event_id,
        causationid=cause.id if cause else None,
        data=data.model_dump(mode="json"),
    )


def deterministic_id(*parts: str) -> str:
    """An event id derived from what caused it, so a retried handler emits the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "leadsla:" + ":".join(parts)))


# ---- payloads -------------------------------------------------------------------------------


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


class LeadReceived(WireModel):
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


class LeadUpdated(WireModel):
    """A lead's fields completed or corrected (PATCH), or its intent raised by a repeat."""

    lead_id: str
    changed: dict[str, dict[str, Any]]  # "contact.phone" -> {"old": ..., "new": ...}
    tier: str
    previous_tier: str
    reason: str  # patched | upgraded | opted_out
    contactable: bool = True
    data_quality: list[dict[str, Any]] = Field(default_factory=list)
    # the lead's missing fields re-evaluated after the change (None: unchanged)
    missing_fields: list[str] | None = None


class LeadMerged(WireModel):
    lead_id: str
    duplicate_submission: dict[str, Any]
    match_on: str


class Disposition(WireModel):
    status: str
    reason: str | None = None


class ActivityRecorded(WireModel):
    lead_id: str
    activity_id: str
    type: str
    actor: str | None = None
    occurred_at: datetime
    channel: str | None = None
    outcome: str | None = None
    disposition: Disposition | None = None
    reason: str | None = None


class Candidate(WireModel):
    owner_id: str
    eligible: bool
    why: str


class LeadAssigned(WireModel):
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


class LeadReassigned(WireModel):
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


class LeadQueued(WireModel):
    lead_id: str
    tier: str
    queue: str
    reason: str
    missing_fields: list[str] = Field(default_factory=list)
    queued_at: datetime | None = None


class SlaEventData(WireModel):
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


class EscalationTriggered(WireModel):
    lead_id: str
    escalation_id: str
    policy_id: str
    step: int
    trigger_event_id: str
    trigger_type: str
    recipients: list[str]


class NotificationResult(WireModel):
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


class DeadLetter(WireModel):
    """`original_bytes_b64` holds the whole record when it is small, else its first
    `DEADLETTER_PREFIX_BYTES` (then `truncated` is true); the whole record is always kept in
    Postgres (`leadsla.deadletters`, row `deadletter_id`), fetchable with `GET /v1/deadletters/{id}`."""

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


EVENT_DATA: dict[str, type[WireModel]] = {
    "lead.received": LeadReceived,
    "lead.merged": LeadMerged,
    "lead.updated": LeadUpdated,
    "activity.recorded": ActivityRecorded,
    "lead.assigned": LeadAssigned,
    "lead.reassigned": LeadReassigned,
    "lead.queued": LeadQueued,
    "lead.dequeued": LeadQueued,
    **{
        f"sla.{kind}": SlaEventData
        for kind in ("started", "warning", "met", "breached", "paused", "resumed", "cancelled")
    },
    "escalation.triggered": EscalationTriggered,
    "notification.sent": NotificationResult,
    "notification.failed": NotificationResult,
    "deadletter": DeadLetter,
}

