from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.events import (
    PAYLOADS,
    BadEvent,
    CloudEvent,
    LeadDequeued,
    LeadQueued,
    Received,
    SlaBreached,
    new_event,
)

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def test_envelope_round_trips_and_times_are_utc_with_z() -> None:
    local = datetime(2026, 11, 17, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    event = new_event("sla.breached", service="sla_clock", lead_id="l1", time=local, data=SlaBreached(
        lead_id="l1", sla_id="s", metric="first_response", policy_id="p", policy_version=1, owner_id=None,
        due_at=local))
    raw = event.to_bytes()
    assert b'"time":"2026-11-17T09:00:00Z"' in raw and b'"due_at":"2026-11-17T09:00:00Z"' in raw
    back = CloudEvent.from_bytes(raw)
    assert back == event and back.specversion == "1.0" and back.source == "leadsla/sla_clock"


def test_causation_and_correlation_chain() -> None:
    first = new_event("lead.queued", service="router", lead_id="l", time=NOW,
                      data=LeadQueued(lead_id="l", tier="A", queue="q", reason="r"))
    second = new_event("lead.dequeued", service="router", lead_id="l", time=NOW, cause=first,
                       data=LeadDequeued(lead_id="l", tier="A", queue="q", reason="r"))
    assert first.correlationid == first.id
    assert second.correlationid == first.id and second.causationid == first.id


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'{"id": "x"}'])
def test_bad_bytes_say_what_is_wrong(raw: bytes) -> None:
    with pytest.raises(BadEvent):
        CloudEvent.from_bytes(raw)


def test_payload_validation_names_the_field() -> None:
    event = CloudEvent(id="1", source="s", type="lead.queued", time=NOW, data={"lead_id": "l"})
    with pytest.raises(BadEvent, match="tier"):
        Received.of(event)


def test_every_contract_event_type_has_a_payload_model() -> None:
    contract = {
        "lead.received", "lead.merged", "activity.recorded", "lead.assigned", "lead.reassigned", "lead.queued",
        "lead.dequeued", "sla.started", "sla.warning", "sla.met", "sla.breached", "sla.paused", "sla.resumed",
        "sla.cancelled", "escalation.triggered", "notification.sent", "notification.failed", "deadletter",
    }
    assert contract <= set(PAYLOADS)
