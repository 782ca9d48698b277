"""Events on the bus: the CloudEvents envelope (`envelope.py`), the contract's payloads, one class
per event type (`payloads.py`), and an event as a handler receives it (`received.py`)."""
from .envelope import (
    ALL_TOPICS,
    CONTENT_TYPE,
    TOPIC_ACTIVITIES_RAW,
    TOPIC_DEADLETTER,
    TOPIC_INTAKE,
    TOPIC_NOTIFICATIONS,
    TOPIC_ROUTING,
    TOPIC_SLA,
    TOPIC_SUBMISSIONS_RAW,
    BadEvent,
    CloudEvent,
    WireModel,
    describe_validation_error,
    deterministic_id,
    new_event,
    utc_iso,
)
from .payloads import (
    DEADLETTER_PREFIX_BYTES,
    PAYLOADS,
    ActivityRecorded,
    Candidate,
    Company,
    Consent,
    Contact,
    DeadLetter,
    Disposition,
    EscalationTriggered,
    Intent,
    LeadAssigned,
    LeadDequeued,
    LeadMerged,
    LeadQueued,
    LeadReassigned,
    LeadReceived,
    LeadUpdated,
    NotificationFailed,
    NotificationResult,
    NotificationSent,
    Payload,
    QueueChange,
    SlaBreached,
    SlaCancelled,
    SlaEventData,
    SlaMet,
    SlaPaused,
    SlaResumed,
    SlaStarted,
    SlaWarning,
    decode_payload,
    payload_class,
)
from .received import Received

# The registry under its former name (notifier's subscription patterns are checked against it).
EVENT_DATA = PAYLOADS
SLA_PAYLOADS: dict[str, type[SlaEventData]] = {
    cls.TYPE.removeprefix("sla."): cls for cls in PAYLOADS.values() if issubclass(cls, SlaEventData)
}

__all__ = [name for name in dir() if not name.startswith("_")]
