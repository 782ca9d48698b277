"""One behaviour contract for reporting's `ReadModelStore`, run against the in-memory fake
(tests/unit/test_reporting_store.py) and Postgres (tests/integration/test_reporting_store.py):
each subclass provides a `store` fixture, one transaction's worth."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from services.reporting.adapters import ReadModelStore
from shared.events import CloudEvent, utc_iso

T0 = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def an_event(lead_id: str, type_: str = "lead.received", **data: Any) -> CloudEvent:
    return CloudEvent(id=new_id("ev"), source="test", type=type_, subject=lead_id, time=T0,
                      data={"lead_id": lead_id, **data})


def facts(lead_id: str, **changes: Any) -> dict[str, Any]:
    return {"lead_id": lead_id, "source": "web", "tier": "A", "status": "assigned", "owner_id": "alice",
            "team_id": "sdr", "received_at": utc_iso(T0), "assigned_at": utc_iso(T0 + timedelta(seconds=2)),
            "first_response_at": None, "sla": {"first_response": {"state": "open", "sla_id": "s"}},
            "profile": {"contact": {"email": "x@example.com"}}, "updated_at": utc_iso(T0 + timedelta(seconds=2)),
            "assignment_no": 1, "first_owner_id": "alice", "first_assign_method": "round_robin",
            "first_assigned_at": utc_iso(T0 + timedelta(seconds=2)), "reassignments": 0, "queued_at": None,
            "dequeued_at": None, "first_touch_actor": None, "meeting_booked_at": None,
            "disposition_status": None, "disposition_reason": None, "dispositioned_at": None, "breached": False,
            "first_team_id": "sdr", **changes}


def a_timer(lead_id: str, sla_id: str | None = None, metric: str = "first_response", **changes: Any) -> dict[str, Any]:
    return {"sla_id": sla_id or new_id("sla"), "lead_id": lead_id, "metric": metric, "policy_id": "office",
            "tier": "A", "owner_id": "alice", "state": "open", "started_at": T0, "due_at": T0 + timedelta(minutes=5),
            "met_at": None, "breached_at": None, "root_cause": None, "cancel_reason": None, "responded_at": None,
            "ttfr_seconds": None, "ttfr_business_seconds": None, "updated_at": T0, "team_id": "sdr",
            "calendar": "office", "timezone": "America/New_York", "paused_seconds": None, "paused_at": None, **changes}


class ReadModelStoreContract:
    """Behaviour every `ReadModelStore` shares; subclasses define the `store` fixture."""

    async def test_an_event_enters_the_timeline_once(self, store: ReadModelStore) -> None:
        lead_id = new_id("lead")
        event, other = an_event(lead_id), an_event(new_id("lead"))
        assert await store.add_to_timeline([(lead_id, event)]) == {event.id}
        assert await store.add_to_timeline([(lead_id, event), (other.subject, other)]) == {other.id}
        assert await store.add_to_timeline([]) == set()

    async def test_a_lead_never_saved_is_absent(self, store: ReadModelStore) -> None:
        assert await store.leads({new_id("lead")}) == {}

    async def test_saved_facts_come_back_with_timestamps_as_rfc3339_strings(self, store: ReadModelStore) -> None:
        lead_id, other = new_id("lead"), new_id("lead")
        saved = facts(lead_id)
        await store.save([saved, facts(other)], [])
        assert await store.leads({lead_id}) == {lead_id: saved}
        assert set(await store.leads({lead_id, other, new_id("lead")})) == {lead_id, other}

    async def test_saving_again_replaces_the_facts(self, store: ReadModelStore) -> None:
        lead_id = new_id("lead")
        await store.save([facts(lead_id)], [])
        later = facts(lead_id, status="responded", first_response_at=utc_iso(T0 + timedelta(minutes=1)),
                      first_touch_actor="alice", sla={"first_response": {"state": "met"}})
        await store.save([later], [])
        assert await store.leads({lead_id}) == {lead_id: later}

    async def test_changing_a_loaded_lead_does_not_change_the_store(self, store: ReadModelStore) -> None:
        lead_id = new_id("lead")
        await store.save([facts(lead_id)], [])
        loaded = (await store.leads({lead_id}))[lead_id]
        loaded["sla"]["first_response"]["state"] = "breached"
        assert (await store.leads({lead_id}))[lead_id]["sla"]["first_response"]["state"] == "open"

    async def test_timers_are_found_by_their_leads(self, store: ReadModelStore) -> None:
        lead_id, other, someone_else = new_id("lead"), new_id("lead"), new_id("lead")
        first, follow_up = a_timer(lead_id), a_timer(lead_id, metric="next_action")
        theirs = a_timer(other)
        await store.save([facts(lead_id), facts(other), facts(someone_else)], [first, follow_up, theirs])
        await store.save([], [a_timer(someone_else)])
        found = await store.timers({lead_id, other})
        assert found == {lead_id: {first["sla_id"]: first, follow_up["sla_id"]: follow_up},
                         other: {theirs["sla_id"]: theirs}}
        assert await store.timers({new_id("lead")}) == {}

    async def test_saving_a_timer_again_replaces_its_row(self, store: ReadModelStore) -> None:
        lead_id = new_id("lead")
        timer = a_timer(lead_id)
        await store.save([facts(lead_id)], [timer])
        breached = {**timer, "state": "breached", "breached_at": T0 + timedelta(minutes=5),
                    "root_cause": "owner_missed", "responded_at": T0 + timedelta(hours=1),
                    "ttfr_seconds": 3600.0, "ttfr_business_seconds": 1800.0}
        await store.save([facts(lead_id)], [breached])
        assert await store.timers({lead_id}) == {lead_id: {timer["sla_id"]: breached}}
