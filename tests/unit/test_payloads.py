"""Typed payloads: one class per contract event type, found by type in one registry, decoded once."""
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.events import (
    PAYLOADS,
    BadEvent,
    CloudEvent,
    LeadDequeued,
    LeadQueued,
    LeadUpdated,
    Payload,
    Received,
    SlaBreached,
    SlaEventData,
    new_event,
)

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)

# The event types CONTRACT.md names (its "Event types" section), spelled out so that the test
# holds in a clone without the project docs beside it; the test below also reads the doc when it is there.
CONTRACT_TYPES = {
    "lead.received", "lead.merged", "lead.updated", "activity.recorded", "lead.assigned", "lead.reassigned",
    "lead.queued", "lead.dequeued", "sla.started", "sla.warning", "sla.met", "sla.breached", "sla.paused",
    "sla.resumed", "sla.cancelled", "escalation.triggered", "notification.sent", "notification.failed",
    "deadletter",
}
# The docs live in ../shared from the checkout (a worktree sits one level deeper).
CONTRACT_DOC = next((found for parent in Path(__file__).resolve().parents[3:5]
                     if (found := parent / "shared" / "CONTRACT.md").exists()), Path("CONTRACT.md.absent"))

SLA = {"lead_id": "l1", "sla_id": "s1", "metric": "first_response", "policy_id": "p", "policy_version": 3,
       "owner_id": "alice", "due_at": "2026-11-17T09:05:00Z", "started_at": "2026-11-17T09:00:00Z", "tier": "A"}
QUEUE = {"lead_id": "l1", "tier": "A", "queue": "tier-A", "reason": "nobody_eligible", "missing_fields": []}
NOTIFICATION = {"notification_id": "n1", "lead_id": "l1", "escalation_id": "e1", "channel": "slack",
                "recipient": "alice", "attempts": 2, "idempotency_key": "k1"}
SAMPLES = {
    "lead.received": {"lead_id": "l1", "source": "web", "tier": "A", "contact": {"email": "a@example.com"},
                      "company": {"name": "Acme"}, "intent": {"type": "demo_request"}, "consent": {},
                      "contactable": True, "received_at": "2026-11-17T09:00:00Z", "missing_fields": ["phone"]},
    "lead.merged": {"lead_id": "l1", "duplicate_submission": {"email": "a@example.com"}, "match_on": "email"},
    "lead.updated": {"lead_id": "l1", "changed": {"tier": {"old": "B", "new": "A"}}, "tier": "A",
                     "previous_tier": "B", "reason": "upgraded"},
    "activity.recorded": {"lead_id": "l1", "activity_id": "a1", "type": "disposition", "actor": "alice",
                          "occurred_at": "2026-11-17T09:03:00Z",
                          "disposition": {"status": "qualified", "reason": None}},
    "lead.assigned": {"lead_id": "l1", "owner_id": "alice", "team_id": "sdr", "rule_id": "r1", "method": "round_robin",
                      "reason": "rule", "assignment_no": 1, "candidates": [{"owner_id": "alice", "eligible": True,
                                                                            "why": "ok"}],
                      "assigned_at": "2026-11-17T09:00:01Z"},
    "lead.reassigned": {"lead_id": "l1", "from_owner_id": "alice", "to_owner_id": "bob", "reason": "manual",
                        "assignment_no": 2},
    "lead.queued": QUEUE,
    "lead.dequeued": QUEUE,
    **{f"sla.{kind}": SLA for kind in ("started", "met", "paused", "resumed")},
    "sla.warning": {**SLA, "percent": 80},
    "sla.breached": {**SLA, "breached_at": "2026-11-17T09:05:00Z", "root_cause": "owner_missed"},
    "sla.cancelled": {**SLA, "reason": "opted_out"},
    "escalation.triggered": {"lead_id": "l1", "escalation_id": "e1", "policy_id": "p", "step": 1,
                             "trigger_event_id": "t1", "trigger_type": "sla.breached", "recipients": ["alice"]},
    "notification.sent": NOTIFICATION,
    "notification.failed": {**NOTIFICATION, "error": "HTTP 500"},
    "deadletter": {"topic": "leads.intake", "partition": 0, "offset": 7, "key": "l1",
                   "original_bytes_b64": "AA==", "error": "undecodable: empty record value", "service": "router"},
}


def test_the_registry_has_a_class_for_every_contract_event_type_and_nothing_else() -> None:
    assert set(PAYLOADS) == CONTRACT_TYPES


@pytest.mark.skipif(not CONTRACT_DOC.exists(), reason="the project docs are not beside this clone")
def test_the_registry_covers_every_event_type_the_contract_document_names() -> None:
    section = CONTRACT_DOC.read_text().split("## Event types", 1)[1].split("\n## ", 1)[0]
    # The list items and their continuation lines; the paragraphs after it name metrics, not types.
    named = {token for line in section.splitlines() if line.startswith(("- ", "  "))
             for token in re.findall(r"`([a-z_.]+)`", line)}
    assert named and named <= set(PAYLOADS)
    assert named == CONTRACT_TYPES


def test_each_class_declares_its_own_type_and_the_registry_is_built_from_them() -> None:
    for event_type, cls in PAYLOADS.items():
        assert cls.TYPE == event_type and "TYPE" in cls.__dict__
    assert len(set(PAYLOADS.values())) == len(PAYLOADS)  # one class per type, no catch-all
    assert SlaEventData not in PAYLOADS.values()


def test_a_second_class_for_a_registered_type_is_refused() -> None:
    with pytest.raises(TypeError, match="lead.queued"):
        type("AnotherQueued", (Payload,), {"TYPE": "lead.queued", "__annotations__": {}})


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_every_payload_round_trips_through_the_wire_into_its_own_class(event_type: str) -> None:
    assert set(SAMPLES) == set(PAYLOADS)
    cls = PAYLOADS[event_type]
    payload = cls.model_validate(SAMPLES[event_type])
    event = new_event(event_type, service="test", lead_id="l1", time=NOW, data=payload)
    received = Received.of(CloudEvent.from_bytes(event.to_bytes()))
    assert type(received.data) is cls
    assert received.data == payload
    assert received.envelope == event and received.type == event_type


def test_an_event_built_with_another_types_payload_is_refused() -> None:
    with pytest.raises(ValueError, match="lead.queued payload"):
        new_event("lead.dequeued", service="router", lead_id="l", time=NOW,
                  data=LeadQueued(lead_id="l", tier="A", queue="q", reason="r"))
    assert new_event("lead.dequeued", service="router", lead_id="l", time=NOW,
                     data=LeadDequeued(lead_id="l", tier="A", queue="q", reason="r")).type == "lead.dequeued"


def test_a_payload_that_does_not_fit_its_type_is_refused_naming_the_field() -> None:
    event = CloudEvent(id="1", source="s", type="sla.breached", time=NOW,
                       data={**SLA, "policy_version": "third"})
    with pytest.raises(BadEvent, match=r"sla.breached data invalid: policy_version: "):
        Received.of(event)
    assert isinstance(Received.of(event.model_copy(update={"data": SLA})).data, SlaBreached)


def test_an_unknown_type_has_no_payload() -> None:
    with pytest.raises(BadEvent, match="unknown event type"):
        Received.of(CloudEvent(id="1", source="s", type="lead.frobnicated", time=NOW))


def test_lead_updated_has_one_shape_and_an_upgrade_stored_with_whole_objects_reads_as_dotted_fields() -> None:
    """Repeats that raised the tier stored `changed: {"intent": {"old": {...}, "new": {...}}}`
    while PATCH says `"intent.type": {old, new}`: the router read no intent from the first (a rule
    on intent never saw the upgrade). Stored events of that shape are read as PATCH's."""
    stored = {"lead_id": "l1", "tier": "A", "previous_tier": "C", "reason": "upgraded", "changed": {
        "intent": {"old": {"type": "content_download", "message": None, "product": "x"},
                   "new": {"type": "demo_request"}},
        "tier": {"old": "C", "new": "A"}}}
    assert LeadUpdated.model_validate(stored).changed == {
        "intent.type": {"old": "content_download", "new": "demo_request"},
        "intent.product": {"old": "x", "new": None},
        "tier": {"old": "C", "new": "A"}}
    patched = {"contact.title": {"old": None, "new": "CTO"}, "contactable": {"old": True, "new": False}}
    assert LeadUpdated.model_validate({**stored, "changed": patched}).changed == patched


def test_an_opt_out_or_a_withdrawn_contact_consent_takes_the_lead_out_of_reach() -> None:
    def update(reason: str, changed: dict) -> LeadUpdated:
        return LeadUpdated(lead_id="l", changed=changed, tier="A", previous_tier="A", reason=reason)

    assert update("opted_out", {}).withdraws_consent
    assert update("patched", {"consent.contact": {"old": True, "new": False}}).withdraws_consent
    assert not update("patched", {"consent.marketing": {"old": True, "new": False}}).withdraws_consent
    assert not update("upgraded", {"tier": {"old": "B", "new": "A"}}).withdraws_consent
