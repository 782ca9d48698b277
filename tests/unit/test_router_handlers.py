"""The router's handlers through the in-memory store: no database, no broker. What they record
(contract events and the router's own) and the state that follows."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from services.router.adapters import InMemoryRouterData, InMemoryRouterStore
from services.router.handlers import (
    RouterDeps,
    SameOwner,
    UnknownLead,
    drain_queue,
    on_activity,
    on_escalation,
    on_lead_updated,
    reassign,
    route_lead,
    route_leads,
    update_owner,
)
from shared.clock import ManualClock
from shared.config import parse_config
from shared.events import (
    ActivityRecorded,
    CloudEvent,
    Company,
    Consent,
    Contact,
    Disposition,
    EscalationTriggered,
    Intent,
    LeadReceived,
    LeadUpdated,
    Received,
    new_event,
)
from shared.eventstore import ConcurrencyConflict

CONFIG = parse_config("""
owners:
  - {id: ann, capacity: 1}
  - {id: ben, capacity: 1}
  - {id: boss, capacity: 0}
teams: [{id: sdr, members: [ann, ben]}]
channels:
  hook: {url: "http://127.0.0.1:9/hook", secret: s}
escalation_policies:
  - id: breach
    steps:
      - {step: 1, notify: [owner], channels: [hook]}
      - {step: 2, after: 15m, notify: [manager], channels: [hook], reassign: true}
routing:
  on_out_of_office: reroute_untouched
  fallback_owner: boss
  rules: [{id: rr, team: sdr}]
""")


class Router:
    """The router's handlers over one in-memory state, each call its own committed unit of work."""

    def __init__(self, config=CONFIG) -> None:
        self.config = config
        self.data = InMemoryRouterData()
        self.clock = ManualClock(datetime(2026, 11, 17, 10, 0, tzinfo=UTC))
        self.last: InMemoryRouterStore | None = None

    def store(self, _uow=None) -> InMemoryRouterStore:
        self.last = InMemoryRouterStore(self.data)
        return self.last

    @property
    def deps(self) -> RouterDeps:
        return RouterDeps(self.config, self.clock, store=self.store)

    async def commit(self) -> None:
        assert self.last is not None
        await self.last.commit()

    async def receive(self, domain: str | None = None, lead_id: str | None = None,
                      external_id: str | None = None) -> str:
        lead_id = lead_id or str(uuid.uuid4())
        now = self.clock.now()
        event = new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
            lead_id=lead_id, source="web", tier="A", contact=Contact(email=f"x@{lead_id[:8]}.example"),
            company=Company(domain=domain), intent=Intent(type="demo_request"), consent=Consent(),
            contactable=True, received_at=now, external_id=external_id))
        await route_lead(None, Received.of(event), self.deps)
        await self.commit()
        return lead_id

    async def activity(self, lead_id: str, kind: str, disposition: Disposition | None = None, *,
                       outcome: str | None = None, occurred_at: datetime | None = None) -> None:
        now = self.clock.now()
        event = new_event("activity.recorded", service="intake", lead_id=lead_id, time=now, data=ActivityRecorded(
            lead_id=lead_id, activity_id=str(uuid.uuid4()), type=kind, occurred_at=occurred_at or now,
            outcome=outcome, disposition=disposition))
        await on_activity(None, Received.of(event), self.deps)
        await self.commit()

    def types(self, lead_id: str) -> list[str]:
        return [e.type for e in self.data.recorded if e.subject == lead_id]

    def owner_of(self, lead_id: str) -> str | None:
        row = self.data.assignments.get(lead_id)
        return row.owner_id if row else None


@pytest.fixture
def router() -> Router:
    return Router()


async def test_a_received_lead_is_assigned_by_turn_with_the_routers_own_part_recorded_after(router) -> None:
    first, second = await router.receive(), await router.receive()
    assert (router.owner_of(first), router.owner_of(second)) == ("ann", "ben")
    assert router.types(first) == ["lead.assigned", "router.lead_routed"]
    routed = router.data.recorded[1]
    assert routed.data["owner_id"] == "ann" and routed.data["day"] == "2026-11-17" and routed.data["cursor"] == 0
    assert [t for t, _, e in router.data.events if e.subject == first] == ["leads.routing", None]


async def test_a_lead_received_twice_is_routed_once(router) -> None:
    lead_id = await router.receive()
    await router.receive(lead_id=lead_id)
    assert router.types(lead_id) == ["lead.assigned", "router.lead_routed"]


async def test_nobody_free_queues_and_a_disposition_dequeues_to_the_freed_owner(router) -> None:
    first, _ = await router.receive(), await router.receive()
    waiting = await router.receive()  # both at capacity, the fallback owner has none
    assert router.types(waiting) == ["lead.queued", "router.lead_routed"] and waiting in router.data.queue
    await router.activity(first, "email", Disposition(status="won"))
    assert router.types(first)[-1] == "router.lead_closed"
    assert router.types(waiting) == ["lead.queued", "router.lead_routed", "lead.dequeued", "lead.assigned",
                                     "router.lead_routed"]
    assert router.owner_of(waiting) == "ann" and waiting not in router.data.queue


async def test_a_touch_is_recorded_once_and_an_unknown_lead_is_ignored(router) -> None:
    lead_id = await router.receive()
    for kind in ("call", "email"):
        await router.activity(lead_id, kind)
    await router.activity("nobody-knows", "call")
    assert router.types(lead_id).count("router.lead_touched") == 1
    assert router.types("nobody-knows") == []


async def test_out_of_office_hands_back_untouched_leads_and_keeps_worked_ones(router) -> None:
    await update_owner(router.store(), CONFIG, router.clock.now(), "ben", {"capacity": 3}, "admin")
    await router.commit()
    worked, untouched = await router.receive(), await router.receive()  # ann, ben
    third = await router.receive()  # ann is full: ben
    await router.activity(worked, "call")
    await update_owner(router.store(), CONFIG, router.clock.now(), "ann", {"status": "out_of_office"}, "admin")
    await router.commit()
    assert router.owner_of(worked) == "ann"
    assert (router.owner_of(untouched), router.owner_of(third)) == ("ben", "ben")
    owner_stream = [e.type for _, s, e in router.data.events if s == "ann"]
    assert owner_stream == ["owner.updated"] and router.data.owner_state["ann"][1] == 1


async def test_a_lead_taken_from_its_owner_into_the_queue_says_from_whom_and_numbers_the_hand_out(router) -> None:
    """A CRM follows the owner from leads.routing alone. Taken from ann into the queue (nobody else
    free), lead.queued said neither from whom nor which assignment it ended, so a sync job that keeps
    the highest assignment_no never cleared ann; now the queue events carry the number the hand-out
    will have, and lead.queued the owner it was taken from."""
    lead_id = await router.receive()  # ann
    await router.receive()  # ben, now full; boss has no capacity
    await update_owner(router.store(), CONFIG, router.clock.now(), "ann", {"status": "out_of_office"}, "admin")
    await router.commit()
    queued = next(e for e in router.data.recorded if e.subject == lead_id and e.type == "lead.queued")
    assert (queued.data["from_owner_id"], queued.data["assignment_no"]) == ("ann", 2)
    await update_owner(router.store(), CONFIG, router.clock.now(), "ben", {"capacity": 2}, "admin")
    await router.commit()
    routing = [(e.type, e.data.get("assignment_no")) for e in router.data.recorded
               if e.subject == lead_id and e.type.startswith("lead.")]
    assert routing == [("lead.assigned", 1), ("lead.queued", 2), ("lead.dequeued", 2), ("lead.assigned", 2)]
    # A lead queued on arrival: from nobody, the first assignment to come.
    fresh = await router.receive()
    first = next(e for e in router.data.recorded if e.subject == fresh and e.type == "lead.queued")
    assert (first.data["from_owner_id"], first.data["assignment_no"]) == (None, 1)


async def test_reassigning_to_a_named_owner_records_the_next_assignment_number(router) -> None:
    lead_id = await router.receive()  # ann
    result = await reassign(router.store(), CONFIG, router.clock, lead_id, "ben", "vacation")
    await router.commit()
    assert result == {"lead_id": lead_id, "status": "reassigned", "owner_id": "ben", "assignment_no": 2}
    reassigned = next(e for e in router.data.recorded if e.type == "lead.reassigned")
    assert (reassigned.data["from_owner_id"], reassigned.data["to_owner_id"]) == ("ann", "ben")
    with pytest.raises(SameOwner):
        await reassign(router.store(), CONFIG, router.clock, lead_id, "ben", "again")
    with pytest.raises(UnknownLead):
        await reassign(router.store(), CONFIG, router.clock, "nobody-knows", None, "x")


async def test_assignments_name_the_senders_id_of_the_lead_as_corrected_since(router) -> None:
    lead_id = await router.receive(external_id="crm-42")  # ann
    assigned = next(e for e in router.data.recorded if e.type == "lead.assigned")
    assert assigned.data["external_id"] == "crm-42"  # a CRM's webhook maps the owner back to its record
    now = router.clock.now()
    await on_lead_updated(None, Received.of(new_event("lead.updated", service="intake", lead_id=lead_id, time=now,
                                                      data=LeadUpdated(lead_id=lead_id, tier="A", previous_tier="A", reason="patched",
                                                                       changed={"external_id": {"old": "crm-42",
                                                                                                "new": "crm-43"}}))),
                          router.deps)
    await router.commit()
    await reassign(router.store(), CONFIG, router.clock, lead_id, "ben", "vacation")
    await router.commit()
    reassigned = next(e for e in router.data.recorded if e.type == "lead.reassigned")
    assert reassigned.data["external_id"] == "crm-43"


async def test_an_escalation_step_with_reassign_routes_the_lead_away_from_its_owner(router) -> None:
    lead_id = await router.receive()  # ann

    async def escalate(step: int) -> None:
        event = new_event("escalation.triggered", service="notifier", lead_id=lead_id, time=router.clock.now(),
                          data=EscalationTriggered(lead_id=lead_id, escalation_id="e", policy_id="breach", step=step,
                                                   trigger_event_id="t", trigger_type="sla.breached",
                                                   recipients=["x"]))
        await on_escalation(None, Received.of(event), router.deps)
        await router.commit()

    await escalate(1)  # notify only
    assert router.owner_of(lead_id) == "ann"
    await escalate(2)
    assert router.owner_of(lead_id) == "ben"
    assert router.data.assignments[lead_id].assignment_no == 2


async def test_an_escalation_step_reroutes_a_lead_once_however_often_it_fires(router) -> None:
    """`on_reassign: reset` restarts the new owner's timer, and its chain reaches the step again:
    rerouting each time would pass the lead between owners for ever, so it never breached."""
    lead_id = await router.receive()  # ann

    async def escalate(step: int) -> None:
        event = new_event("escalation.triggered", service="notifier", lead_id=lead_id, time=router.clock.now(),
                          data=EscalationTriggered(lead_id=lead_id, escalation_id=str(uuid.uuid4()),
                                                   policy_id="breach", step=step, trigger_event_id="t",
                                                   trigger_type="sla.warning", recipients=["x"]))
        await on_escalation(None, Received.of(event), router.deps)
        await router.commit()

    await escalate(2)
    assert router.owner_of(lead_id) == "ben"
    router.clock.advance(timedelta(minutes=30))
    await escalate(2)  # ben's restarted timer warned in turn
    assert router.owner_of(lead_id) == "ben"
    assert [e.type for e in router.data.recorded if e.subject == lead_id].count("lead.reassigned") == 1


async def test_a_decision_on_a_lead_that_moved_meanwhile_conflicts(router) -> None:
    lead_id = await router.receive()
    stale = InMemoryRouterStore(router.data)
    await stale.load_version(lead_id)
    await router.activity(lead_id, "call")  # another writer commits first
    await drain_queue(stale, CONFIG, router.clock.now())
    await reassign(stale, CONFIG, router.clock, lead_id, "ben", "x")
    with pytest.raises(ConcurrencyConflict):
        await stale.commit()


async def test_the_queue_drains_when_an_owner_gets_capacity_back(router) -> None:
    await router.receive(), await router.receive()
    waiting = await router.receive()
    router.clock.advance(timedelta(minutes=5))
    await update_owner(router.store(), CONFIG, router.clock.now(), "boss", {"capacity": 1}, "admin")
    await router.commit()
    assert router.owner_of(waiting) == "boss" and not router.data.queue


async def test_a_lead_assigned_from_the_queue_counts_its_wait_in_the_routing_latency(router) -> None:
    """The histogram's hour and day buckets are for leads that waited: they were never observed."""
    def latency() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("leadsla_routing_latency_seconds_count") or 0.0,
                REGISTRY.get_sample_value("leadsla_routing_latency_seconds_sum") or 0.0)

    await router.receive(), await router.receive()
    await router.receive()  # queued: ann and ben are full
    count, total = latency()
    router.clock.advance(timedelta(minutes=5))
    await update_owner(router.store(), CONFIG, router.clock.now(), "boss", {"capacity": 1}, "admin")
    await router.commit()
    assert latency()[0] == count + 1 and latency()[1] - total == pytest.approx(300, abs=1)


async def test_assignments_are_counted_only_once_committed(router) -> None:
    def counted() -> float:
        return REGISTRY.get_sample_value("leadsla_assignments_total",
                                         {"team": "sdr", "method": "round_robin", "reason": "rule_match"}) or 0.0

    before = counted()
    now = router.clock.now()
    lead_id = str(uuid.uuid4())
    event = new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
        lead_id=lead_id, source="web", tier="A", contact=Contact(email="x@y.example"), company=Company(),
        intent=Intent(type="demo_request"), consent=Consent(), contactable=True, received_at=now))
    await route_lead(None, Received.of(event), router.deps)
    assert counted() == before  # decided, not committed: a rolled-back decision counts nothing
    await router.commit()
    assert counted() == before + 1


ROOMY = parse_config("""
owners:
  - {id: ann, capacity: 3}
  - {id: ben, capacity: 3}
  - {id: boss, capacity: 1}
teams: [{id: sdr, members: [ann, ben]}]
routing:
  fallback_owner: boss
  rules: [{id: rr, team: sdr}]
""")


def received(lead_id: str, domain: str | None = None) -> CloudEvent:
    now = datetime(2026, 11, 17, 10, 0, tzinfo=UTC)
    return new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
        lead_id=lead_id, source="web", tier="A", contact=Contact(email="x@gmail.com"),
        company=Company(domain=domain), intent=Intent(type="demo_request"), consent=Consent(),
        contactable=True, received_at=now))


async def routed(config, runs: list[list[CloudEvent]]) -> list[tuple[str | None, str, str | None, str | None]]:
    """Route each run in its own committed unit; the decisions, in the order recorded."""
    data = InMemoryRouterData()
    clock = ManualClock(datetime(2026, 11, 17, 10, 0, tzinfo=UTC))
    for run in runs:
        store = InMemoryRouterStore(data)
        await route_leads(None, [Received.of(e) for e in run], RouterDeps(config, clock, store=lambda _uow, store=store: store))
        await store.commit()
    return [(e.subject, e.type, e.data.get("owner_id"), e.data.get("method")) for e in data.recorded
            if e.type in ("lead.assigned", "lead.queued")]


async def test_a_run_of_leads_is_decided_as_if_they_came_one_by_one() -> None:
    # Round robin, capacity, the account of a lead earlier in the run, the fallback owner outside
    # the rule's team (the run widens its scope), the queue, and a lead repeated in the run.
    events = [received("a", "acme.example"), received("b"), received("c", "acme.example"), received("d"),
              received("e"), received("f"), received("a"), received("g"), received("h"), received("i")]
    one_by_one = await routed(ROOMY, [[e] for e in events])
    assert await routed(ROOMY, [events]) == one_by_one
    assert [(lead, owner or kind, method) for lead, kind, owner, method in one_by_one] == [
        ("a", "ann", "round_robin"), ("b", "ben", "round_robin"), ("c", "ann", "account_match"),
        ("d", "ann", "round_robin"), ("e", "ben", "round_robin"), ("f", "ben", "round_robin"),
        ("g", "boss", "fallback"), ("h", "lead.queued", None), ("i", "lead.queued", None)]



async def test_an_opened_email_or_a_back_filled_call_is_not_the_owner_working_the_lead(router) -> None:
    """Out of office with reroute_untouched: a lead whose only activity is the buyer opening an email,
    or a call from before it was assigned (a CRM back-filling history), is handed back like an
    untouched one."""
    await update_owner(router.store(), CONFIG, router.clock.now(), "ben", {"capacity": 3}, "admin")
    await router.commit()
    opened, _, history = await router.receive(), await router.receive(), await router.receive()  # ann, ben, ann
    await router.activity(opened, "email", outcome="opened")
    await router.activity(history, "call", outcome="connected", occurred_at=router.clock.now() - timedelta(days=3))
    assert "router.lead_touched" not in router.types(opened) + router.types(history)
    await update_owner(router.store(), CONFIG, router.clock.now(), "ann", {"status": "out_of_office"}, "admin")
    await router.commit()
    assert (router.owner_of(opened), router.owner_of(history)) == ("ben", "ben")


async def test_a_company_s_queued_leads_drain_to_one_owner_as_new_ones_would_go() -> None:
    """The drain read the companies' owners once per page: acme's three queued leads went to ann,
    ben and ann (new leads of one company all go to the owner of its first)."""
    accounts = parse_config("""
owners: [{id: ann, status: out_of_office, until: "2026-11-17T11:00:00Z"},
         {id: ben, status: out_of_office, until: "2026-11-17T11:00:00Z"}]
teams: [{id: sdr, members: [ann, ben]}]
routing: {account_match: true, rules: [{id: rr, team: sdr}]}
""")
    router = Router(accounts)
    leads = [await router.receive(domain="acme.com") for _ in range(3)]
    assert [router.owner_of(lead) for lead in leads] == [None, None, None]
    router.clock.advance(timedelta(hours=2))  # both back at once
    await drain_queue(router.store(), accounts, router.clock.now())
    await router.commit()
    owners = [router.owner_of(lead) for lead in leads]
    assert owners[0] is not None and owners == [owners[0]] * 3
