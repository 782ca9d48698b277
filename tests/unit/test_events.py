import uuid
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
    deterministic_id,
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


def test_wire_is_the_json_dump_of_the_validated_model_without_validating() -> None:
    from services.sla_clock.domain import TimerRecord

    local = datetime(2026, 11, 17, 10, 0, 0, 250, tzinfo=timezone(timedelta(hours=1)))
    timer = {"policy_id": "p", "policy_version": 2, "calendar": "c", "tier": "A", "started_at": local,
             "due_at": NOW, "warnings": [(50, NOW), (80, NOW)], "warned": [50], "state": "open",
             "next_fire_at": NOW, "target_seconds": 300}  # an int where the field is a float
    assert TimerRecord.wire(**timer) == TimerRecord(**timer).model_dump(mode="json")
    # A time inside a list is in UTC with a Z too (the model's dump leaves its offset).
    assert TimerRecord.wire(**{**timer, "warnings": [(50, local)]})["warnings"] == [[50, "2026-11-17T09:00:00.000250Z"]]
    values = {"lead_id": "l1", "sla_id": "s", "metric": "next_action", "policy_id": "p", "policy_version": 1,
              "owner_id": None, "due_at": local, "breached_at": NOW, "root_cause": "owner_missed",
              "timer": TimerRecord.wire(**timer), "step": 2}  # `step`: an extra field
    wired = SlaBreached.wire(**values)
    assert wired == SlaBreached(**values).model_dump(mode="json")
    event = new_event("sla.breached", service="sla_clock", lead_id="l1", time=local, data=wired)
    assert CloudEvent.from_bytes(event.to_bytes()).data == wired
    with pytest.raises(TypeError, match="sla_id"):
        SlaBreached.wire(lead_id="l1")


def test_unwire_is_the_python_dump_of_the_model_validated_from_its_wire_form() -> None:
    from pydantic import ValidationError

    from services.sla_clock.domain import LeadFacts, TimerRecord

    local = datetime(2026, 11, 17, 10, 0, 0, 250, tzinfo=timezone(timedelta(hours=1)))
    timer = TimerRecord.wire(policy_id="p", policy_version=2, calendar="c", tier="A", started_at=local, due_at=NOW,
                             warnings=[(50, NOW), (80, local)], warned=[50], state="open", next_fire_at=NOW,
                             target_seconds=300)
    for wired in (timer, {**timer, "paused_seconds": 3}, {k: v for k, v in timer.items() if k != "step"},
                  {**timer, "extra": [1, "x"]}):
        assert TimerRecord.unwire(wired) == TimerRecord.model_validate(wired).model_dump()
    facts = LeadFacts.wire(lead_id="l1", tier="A", source="web", contactable=True, received_at=local,
                           first_touch_at=NOW, owner_id="o")
    for wired in (facts, {"lead_id": "l1", "tier": "A", "source": "web", "contactable": False,
                          "received_at": "2026-11-17T09:00:00Z"}, {**facts, "received_at": "2026-11-17 09:00:00+00:00"}):
        assert LeadFacts.unwire(wired) == LeadFacts.model_validate(wired).model_dump()
    # What is not in the form `wire` writes goes through pydantic, which names what is wrong.
    assert LeadFacts.unwire({**facts, "received_at": 1700000000}) == LeadFacts.model_validate(
        {**facts, "received_at": 1700000000}).model_dump()
    with pytest.raises(ValidationError, match="received_at"):
        LeadFacts.unwire({**facts, "received_at": "yesterday"})
    with pytest.raises(ValidationError, match="tier"):
        LeadFacts.unwire({k: v for k, v in facts.items() if k != "tier"})


class _Key(str):
    pass


@pytest.mark.parametrize("data", [
    {}, {"a": None, "b": [1, 2.5, -0.0, 1e16, 3e-05, True, None, {"c": "\u00e9\u2028\x7f\x00\"\\/"}]},
    {"nan": float("nan"), "inf": float("-inf"), "big": 2**63 - 1},
    {"at": NOW}, {"when": [NOW.date()]}, {"nested": {_Key("k"): 1}}, {"k": _Key("v")},  # not plain JSON: pydantic's way
])
def test_an_events_bytes_are_its_pydantic_json_dump(data: dict) -> None:
    event = new_event("lead.updated", service="intake", lead_id="l\u00e9", time=NOW + timedelta(microseconds=7),
                      data=data)
    assert event.to_bytes() == event.model_dump_json(exclude_none=True).encode()
    extra = CloudEvent.model_validate({**event.model_dump(), "partitionkey": "p"})  # an extension attribute
    assert extra.to_bytes() == extra.model_dump_json(exclude_none=True).encode()
    assert CloudEvent.from_bytes(extra.to_bytes()).partitionkey == "p"  # type: ignore[attr-defined]


def test_times_on_the_wire_name_their_instant_whatever_their_zone() -> None:
    from zoneinfo import ZoneInfo

    from pydantic import BaseModel

    from shared.events import utc_iso

    class Stamped(BaseModel):
        at: datetime

    parsed = Stamped.model_validate({"at": "2026-11-17T10:00:00.5+01:00"}).at  # pydantic's own zone type
    assert utc_iso(parsed) == utc_iso(NOW + timedelta(microseconds=500000)) == "2026-11-17T09:00:00.500000Z"
    assert utc_iso(datetime(2026, 11, 17, 4, 0, tzinfo=timezone(timedelta(hours=-5)))) == "2026-11-17T09:00:00Z"
    # Either side of a fold: equal as wall times, an hour apart as instants.
    new_york = ZoneInfo("America/New_York")
    first, second = (datetime(2026, 11, 1, 1, 30, fold=fold, tzinfo=new_york) for fold in (0, 1))
    assert first == second
    assert (utc_iso(first), utc_iso(second)) == ("2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z")
    assert (utc_iso(second), utc_iso(first)) == ("2026-11-01T06:30:00Z", "2026-11-01T05:30:00Z")
    with pytest.raises(ValueError, match="naive"):
        utc_iso(datetime(2026, 11, 17, 9, 0))


def test_causation_and_correlation_chain() -> None:
    first = new_event("lead.queued", service="router", lead_id="l", time=NOW,
                      data=LeadQueued(lead_id="l", tier="A", queue="q", reason="r"))
    second = new_event("lead.dequeued", service="router", lead_id="l", time=NOW, cause=first,
                       data=LeadDequeued(lead_id="l", tier="A", queue="q", reason="r"))
    assert first.correlationid == first.id
    assert first.causationid == first.id  # nothing on the bus caused it: it starts the chain
    assert second.correlationid == first.id and second.causationid == first.id
    later = new_event("lead.reassigned", service="router", lead_id="l", time=NOW, correlation_id=first.id,
                      data={"lead_id": "l"})  # an operator's request, later in the lead's chain
    assert later.causationid == later.correlationid == first.id
    assert '"causationid"' in later.to_bytes().decode()  # every event carries it (the contract's envelope)


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


@pytest.mark.parametrize("parts", [("a",), ("lead-1", "sla_clock.lead_noted", "lead-1"), ("", ""),
                                   ("sla", "l\u00e9ad", "first_response", "2"), (str(uuid.UUID(int=7)), "x" * 300)])
def test_deterministic_ids_are_the_uuid5_of_their_parts(parts: tuple[str, ...]) -> None:
    # Ids already in stores and on the bus were made with uuid5: a retried handler must emit the same.
    assert deterministic_id(*parts) == str(uuid.uuid5(uuid.NAMESPACE_URL, "leadsla:" + ":".join(parts)))
