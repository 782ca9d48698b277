from datetime import UTC, datetime

from leadsla.services.reporting.projections import fold
from leadsla.shared.events import CloudEvent

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def event(type_: str, **data) -> CloudEvent:
    return CloudEvent(id=type_, source="test", type=type_, subject="l1", time=NOW, data={"lead_id": "l1", **data})


RECEIVED = event("lead.received", source="web", tier="A", received_at="2026-11-17T09:00:00Z",
                 contact={"email": "a@example.com"})
ASSIGNED = event("lead.assigned", owner_id="alice", team_id="sdr", assigned_at="2026-11-17T09:00:01Z")
BREACHED = event("sla.breached", metric="first_response", sla_id="s", policy_id="p",
                 due_at="2026-11-17T09:05:00Z", breached_at="2026-11-17T09:05:00Z", root_cause="owner_missed")


def replay(*events: CloudEvent) -> dict:
    state: dict = {"lead_id": "l1"}
    for e in events:
        state = fold(state, e)
    return state


def test_lifecycle() -> None:
    state = replay(RECEIVED, ASSIGNED, BREACHED)
    assert state["status"] == "assigned" and state["owner_id"] == "alice" and state["tier"] == "A"
    assert state["sla"]["first_response"]["state"] == "breached"
    assert state["sla"]["first_response"]["root_cause"] == "owner_missed"


def test_out_of_order_events_do_not_move_status_backwards() -> None:
    assert replay(ASSIGNED, RECEIVED)["status"] == "assigned"


def test_earliest_touch_is_the_first_response() -> None:
    late = event("activity.recorded", type="call", occurred_at="2026-11-17T09:03:00.5Z")
    early = event("activity.recorded", type="email", occurred_at="2026-11-17T09:02:00Z")
    state = replay(RECEIVED, late, early)
    assert state["first_response_at"] == "2026-11-17T09:02:00Z" and state["status"] == "responded"
