"""The router's runtime API against the real database: owners changed while running, the queue
draining as soon as someone can take a lead, reassignment, and capacity released."""
from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, select, text

from services.router.adapters import lock_routing
from services.router.bootstrap import bootstrap
from services.router.entrypoints import drain_all, refresh_queue_depth
from services.router.handlers import (
    RouterDeps,
    on_activity,
    on_escalation,
    on_lead_updated,
    route_lead,
)
from services.router.tables import queue
from shared import metrics
from shared.auth import create_key
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig
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
from shared.eventstore import EVENTS, read_stream
from shared.http import create_app
from tests.support import eventually, published_events

CONFIG = """
calendars:
  late: {{timezone: UTC, hours: {{tue: ["12:00-18:00"]}}}}
owners:
  - {{id: ann-{s}, capacity: 1}}
  - {{id: ben-{s}, capacity: 1}}
  - {{id: cat-{s}, calendar: late}}
teams: [{{id: sdr-{s}, members: [ann-{s}, ben-{s}]}}, {{id: late-{s}, members: [cat-{s}]}}]
channels:
  hook: {{url: "http://127.0.0.1:9/hook", secret: s}}
escalation_policies:
  - id: breach-{s}
    steps:
      - {{step: 1, notify: [owner], channels: [hook]}}
      - {{step: 2, after: 15m, notify: [manager], channels: [hook], reassign: true}}
routing:
  on_out_of_office: reroute_untouched
  rules:
    - {{id: late-{s}, match: {{sources: [night]}}, team: late-{s}}}
    - {{id: big-{s}, match: {{sources: [partner]}}, team: sdr-{s}, requires: [company.name]}}
    - {{id: rr-{s}, team: sdr-{s}}}
"""


class Router:
    def __init__(self, ctx, client: httpx.AsyncClient, suffix: str, admin: str, source: str) -> None:
        self.ctx, self.client, self.s, self.admin, self.source = ctx, client, suffix, admin, source

    def owner(self, name: str) -> str:
        return f"{name}-{self.s}"

    async def receive(self, tier: str = "A", source: str = "web", domain: str | None = None) -> str:
        now = self.ctx.clock.now()
        lead_id = str(uuid.uuid4())
        event = new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
            lead_id=lead_id, source=source, tier=tier, contact=Contact(email=f"x@{lead_id[:8]}.example"),
            company=Company(domain=domain), intent=Intent(type="demo_request"), consent=Consent(),
            contactable=True, received_at=now))
        async with self.ctx.uow() as uow:
            await route_lead(uow, Received.of(event), RouterDeps(self.ctx.config.config, self.ctx.clock))
            await uow.commit()
        return lead_id

    async def activity(self, lead_id: str, type: str, disposition: Disposition | None = None) -> None:
        now = self.ctx.clock.now()
        event = new_event("activity.recorded", service="intake", lead_id=lead_id, time=now, data=ActivityRecorded(
            lead_id=lead_id, activity_id=str(uuid.uuid4()), type=type, occurred_at=now, disposition=disposition))
        async with self.ctx.uow() as uow:
            await on_activity(uow, Received.of(event), RouterDeps(self.ctx.config.config, self.ctx.clock))
            await uow.commit()

    async def updated(self, lead_id: str, changed: dict, tier: str, previous_tier: str = "A") -> None:
        now = self.ctx.clock.now()
        event = new_event("lead.updated", service="intake", lead_id=lead_id, time=now, data=LeadUpdated(
            lead_id=lead_id, changed=changed, tier=tier, previous_tier=previous_tier, reason="patched"))
        async with self.ctx.uow() as uow:
            await on_lead_updated(uow, Received.of(event), RouterDeps(self.ctx.config.config, self.ctx.clock))
            await uow.commit()

    async def events(self, lead_id: str) -> list[CloudEvent]:
        return await published_events(self.ctx.engine, "router", lead_id)

    async def types(self, lead_id: str) -> list[str]:
        return [e.type for e in await self.events(lead_id)]

    async def put(self, name: str, **body) -> httpx.Response:
        return await self.client.put(f"/v1/owners/{self.owner(name)}", json=body)

    async def owners(self) -> dict[str, dict]:
        response = await self.client.get("/v1/owners")
        assert response.status_code == 200
        # This test's owners only: the module's database holds other tests' leads too.
        return {o["owner_id"].removesuffix(f"-{self.s}"): o for o in response.json()["owners"]
                if o["owner_id"].endswith(f"-{self.s}")}


@pytest.fixture
async def router(make_ctx, engine):
    async for running in _router(make_ctx, engine, CONFIG):
        yield running


# Tiers named by urgency, not alphabetically: the rules' order says high, medium, low.
RANKED_CONFIG = CONFIG + """
tiers:
  default: low
  rules:
    - {{tier: high, when: {{intent: [demo_request]}}}}
    - {{tier: medium, when: {{intent: [pricing]}}}}
"""


# Both of the sdr team are some other rule's fallback owner; the night rule (cat only) has none.
FALLBACKS_CONFIG = CONFIG.replace(
    "    - {{id: rr-{s}, team: sdr-{s}}}",
    "    - {{id: ann-first-{s}, match: {{sources: [fair]}}, team: late-{s}, fallback_owner: ann-{s}}}\n"
    "    - {{id: ben-first-{s}, match: {{sources: [expo]}}, team: late-{s}, fallback_owner: ben-{s}}}\n"
    "    - {{id: rr-{s}, team: sdr-{s}}}")


@pytest.fixture
async def fallbacks_router(make_ctx, engine):
    async for running in _router(make_ctx, engine, FALLBACKS_CONFIG):
        yield running


@pytest.fixture
async def ranked_router(make_ctx, engine):
    async for running in _router(make_ctx, engine, RANKED_CONFIG):
        yield running


async def _router(make_ctx, engine, config: str):
    async with engine.begin() as conn:
        # The queue is shared by the whole test database: start each test with an empty one.
        await conn.execute(delete(queue))
        admin = await create_key(conn, "ops", "admin")
        source = await create_key(conn, "webform", "source")
    suffix = uuid.uuid4().hex[:6]
    ctx = make_ctx("router", config.format(s=suffix))
    spec = bootstrap(ctx)
    app = create_app(ctx, spec.routers)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as client:
        client.headers["Authorization"] = f"Bearer {admin}"
        yield Router(ctx, client, suffix, admin, source)
    async with engine.begin() as conn:
        await conn.execute(delete(queue))


async def test_owners_show_status_capacity_open_leads_and_todays_assignments(router) -> None:
    await router.receive()
    await router.receive()
    owners = await router.owners()
    assert {k: (o["status"], o["capacity"], o["open_leads"], o["assigned_today"]) for k, o in owners.items()} == {
        "ann": ("active", 1, 1, 1), "ben": ("active", 1, 1, 1), "cat": ("active", None, 0, 0)}
    assert owners["ann"]["available_now"] is False and owners["ann"]["unavailable_because"] == "at capacity (1/1)"
    assert owners["cat"]["unavailable_because"] == "outside working hours"


async def test_an_owner_taken_out_of_the_configuration_is_listed_while_holding_leads(router) -> None:
    lead_id = await router.receive()
    holder = (await router.events(lead_id))[-1].data["owner_id"]
    name = holder.removesuffix(f"-{router.s}")
    kept = CONFIG.replace(f"  - {{{{id: {name}-{{s}}, capacity: 1}}}}\n", "").replace(f"{name}-{{s}}, ", "")
    router.ctx.config = ConfigHolder(router.ctx.engine, VersionedConfig(2, parse_config(kept.format(s=router.s))))

    owners = await router.owners()
    assert name in owners and len(owners) == 3
    assert {k: (o["status"], o["open_leads"], o["available_now"]) for k, o in owners.items() if k == name} == {
        name: ("removed", 1, False)}
    # Reassigned away, they hold nothing and are gone from the list.
    assert (await router.client.post(f"/v1/leads/{lead_id}/reassign", json={"owner_id": None, "reason": "left"})).status_code == 202
    assert name not in await router.owners()


async def test_owner_endpoints_need_an_admin_key(router) -> None:
    source = {"Authorization": f"Bearer {router.source}"}
    assert (await router.client.get("/v1/owners", headers=source)).status_code == 403
    assert (await router.client.put(f"/v1/owners/{router.owner('ann')}", json={"status": "away"},
                                    headers=source)).status_code == 403
    assert (await router.client.get("/v1/owners", headers={"Authorization": ""})).status_code == 401


async def test_an_owner_change_takes_effect_at_once_and_is_an_event_on_the_owners_stream(router) -> None:
    response = await router.put("ann", status="away")
    assert response.status_code == 200 and response.json()["status"] == "away"
    first = await router.receive()
    assert (await router.events(first))[0].data["owner_id"] == router.owner("ben")

    response = await router.put("ann", status="active", capacity=5, daily_cap=10, weight=2)
    assert response.status_code == 200
    assert {k: response.json()[k] for k in ("status", "capacity", "daily_cap", "weight", "version")} == {
        "status": "active", "capacity": 5, "daily_cap": 10, "weight": 2, "version": 2}
    async with router.ctx.engine.connect() as conn:
        stream = await read_stream(conn, "router", router.owner("ann"))
    assert [(e.version, e.event.type) for e in stream] == [(1, "owner.updated"), (2, "owner.updated")]
    assert stream[0].event.data["changes"] == {"status": "away", "until": None}
    assert stream[1].event.data["actor"] == "ops"


async def test_owner_changes_are_validated_and_unknown_owners_are_404(router) -> None:
    missing = await router.client.put("/v1/owners/nobody", json={"status": "away"})
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    cases = [
        ({"status": "on_holiday"}, "status"),
        ({"capacity": -1}, "capacity"),
        ({"until": "2026-12-01T09:00:00Z"}, "until"),  # only with out_of_office
        ({"status": "out_of_office", "until": "2020-01-01T00:00:00Z"}, "until"),  # in the past
        ({"working_hours": "no-such-calendar"}, "working_hours"),
        ({"colour": "blue"}, "colour"),
        ({}, "(body)"),
    ]
    for body, field in cases:
        response = await router.put("ann", **body)
        assert response.status_code == 422, body
        assert field in {e["field"] for e in response.json()["errors"]}, (body, response.json())


async def test_an_absence_until_an_instant_with_none_in_utc_is_a_problem_naming_until(router) -> None:
    """Valid ISO 8601 whose offset takes it past the year 9999 in UTC: a 500 before."""
    response = await router.put("ann", status="out_of_office", until="9999-12-31T23:59:59-14:00")
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["until"]


async def test_a_queued_lead_leaves_the_queue_as_soon_as_an_owner_is_active_again(router) -> None:
    for name in ("ann", "ben"):
        assert (await router.put(name, status="out_of_office", until="2026-11-30T09:00:00Z")).status_code == 200
    older_b = await router.receive(tier="B")
    router.ctx.clock.advance(timedelta(seconds=1))
    a = await router.receive(tier="A")
    router.ctx.clock.advance(timedelta(seconds=1))
    newer_b = await router.receive(tier="B")
    assert await router.types(a) == ["lead.queued"]
    queued = (await router.client.get("/v1/queue")).json()["leads"]
    assert [q["lead_id"] for q in queued] == [a, older_b, newer_b]  # tier, then age
    assert (await refresh_queue_depth(router.ctx)) == {"A": 1, "B": 2}
    assert metrics.queue_depth.labels("B")._value.get() == 2
    # No SLA timer runs while a lead waits for an owner: how long the oldest has waited shows it.
    router.ctx.clock.advance(timedelta(minutes=5))
    await refresh_queue_depth(router.ctx)
    assert REGISTRY.get_sample_value("leadsla_queue_oldest_wait_seconds", {"tier": "B"}) == 302
    assert REGISTRY.get_sample_value("leadsla_queue_oldest_wait_seconds", {"tier": "A"}) == 301

    # One owner back with room for one lead: the highest tier goes first, in the same request.
    assert (await router.put("ann", status="active")).status_code == 200
    assert await router.types(a) == ["lead.queued", "lead.dequeued", "lead.assigned"]
    assigned = (await router.events(a))[-1].data
    assert assigned["owner_id"] == router.owner("ann") and assigned["assignment_no"] == 1
    assert assigned["source"] == "web" and assigned["received_at"] is not None
    assert await router.types(older_b) == ["lead.queued"]

    # Ann's lead is dispositioned: her capacity frees and the older B lead goes next.
    await router.activity(a, "disposition", Disposition(status="qualified"))
    assert await router.types(older_b) == ["lead.queued", "lead.dequeued", "lead.assigned"]
    assert await router.types(newer_b) == ["lead.queued"]
    assert (await refresh_queue_depth(router.ctx)) == {"B": 1}
    assert metrics.queue_depth.labels("A")._value.get() == 0
    assert REGISTRY.get_sample_value("leadsla_queue_oldest_wait_seconds", {"tier": "A"}) == 0
    # The configuration's default tier never queued here, and still has its series.
    assert REGISTRY.get_sample_value("leadsla_queue_depth", {"tier": "C"}) == 0


async def test_the_queue_drains_in_the_configurations_tier_order_not_by_the_tiers_names(ranked_router) -> None:
    router = ranked_router
    for name in ("ann", "ben"):
        assert (await router.put(name, status="out_of_office", until="2026-11-30T09:00:00Z")).status_code == 200
    leads = {}
    for tier in ("low", "high", "medium"):  # oldest first
        leads[tier] = await router.receive(tier=tier)
        router.ctx.clock.advance(timedelta(seconds=1))
        assert await router.types(leads[tier]) == ["lead.queued"]
    order = [leads["high"], leads["medium"], leads["low"]]
    # Drain order: by the rules' order (the default last); by name it was high, low, medium.
    assert [q["lead_id"] for q in (await router.client.get("/v1/queue")).json()["leads"]] == order

    # Ann is back with room for all three: they leave the queue in that order, in this request.
    assert (await router.put("ann", status="active", capacity=5)).status_code == 200
    outbox = EVENTS["router"]
    async with router.ctx.engine.connect() as conn:
        assigned = (await conn.execute(  # in commit order
            select(outbox.c.key).where(outbox.c.key.in_(order), outbox.c.event_type == "lead.assigned")
            .order_by(outbox.c.position))).scalars().all()
    assert assigned == order
    assert (await router.client.get("/v1/queue")).json()["leads"] == []


async def test_a_new_lead_does_not_jump_a_queued_lead_of_a_higher_ranked_tier(ranked_router) -> None:
    router = ranked_router
    waiting = await router.receive(tier="medium", source="night")  # cat starts at 12:00; it is 09:00
    router.ctx.clock.advance(timedelta(hours=3))  # 12:00: cat is free, the queue check has not run yet
    newcomer = await router.receive(tier="low", source="night")  # "low" < "medium" by name only
    [queued] = await router.events(newcomer)
    assert (queued.type, queued.data["reason"]) == ("lead.queued", "queue_ahead")
    assert await drain_all(router.ctx) == 2
    assert (await router.events(waiting))[-1].data["owner_id"] == router.owner("cat")


async def test_a_new_lead_waits_only_behind_queued_leads_that_could_take_its_owner(fallbacks_router) -> None:
    """Found by an acceptance sweep: a queued lead was taken to want any rule's fallback owner, so
    a new lead for an owner that lead can never reach (not in its rule's team, not its rule's
    fallback) was queued behind it (`queue_ahead`) and dequeued a moment later: a spurious
    queued/dequeued pair, an ownerless lead meanwhile, and a queue count in the routing report."""
    router = fallbacks_router
    waiting = await router.receive(source="night")  # only cat, outside her hours at 09:00: queued
    assert await router.types(waiting) == ["lead.queued"]
    newcomer = await router.receive()  # ann or ben, each another rule's fallback, never the night lead's
    [assigned] = await router.events(newcomer)
    assert (assigned.type, assigned.data["reason"]) == ("lead.assigned", "rule_match")
    assert assigned.data["owner_id"] in (router.owner("ann"), router.owner("ben"))
    assert [q["lead_id"] for q in (await router.client.get("/v1/queue")).json()["leads"]] == [waiting]


async def test_an_absence_that_ends_and_working_hours_that_start_drain_the_queue(router) -> None:
    until = router.ctx.clock.now() + timedelta(hours=1)
    assert (await router.put("ann", status="out_of_office", until=until.isoformat())).status_code == 200
    assert (await router.put("ben", status="away")).status_code == 200
    lead = await router.receive()
    night = await router.receive(source="night")  # cat works from 12:00; it is 09:00
    assert await router.types(lead) == ["lead.queued"] and await router.types(night) == ["lead.queued"]

    router.ctx.clock.advance(timedelta(hours=1))
    assert await drain_all(router.ctx) == 1
    assert (await router.events(lead))[-1].data["owner_id"] == router.owner("ann")
    assert (await router.owners())["ann"]["status"] == "active"

    router.ctx.clock.advance(timedelta(hours=2))
    assert await drain_all(router.ctx) == 1
    assert (await router.events(night))[-1].data["owner_id"] == router.owner("cat")


async def test_reassign_to_a_named_owner_and_route_again(router) -> None:
    lead = await router.receive()
    first = (await router.events(lead))[0].data["owner_id"]
    other = router.owner("ben") if first == router.owner("ann") else router.owner("ann")

    response = await router.client.post(f"/v1/leads/{lead}/reassign",
                                        json={"owner_id": router.owner("cat"), "reason": "speaks Welsh"})
    assert response.status_code == 202 and response.json()["assignment_no"] == 2
    reassigned = (await router.events(lead))[-1]
    assert reassigned.type == "lead.reassigned"
    assert {k: reassigned.data[k] for k in ("from_owner_id", "to_owner_id", "reason", "assignment_no")} == {
        "from_owner_id": first, "to_owner_id": router.owner("cat"), "reason": "speaks Welsh", "assignment_no": 2}
    assert reassigned.data["team_id"] == router.owner("late")  # cat's own team: reports by team count the lead

    response = await router.client.post(f"/v1/leads/{lead}/reassign", json={"owner_id": None, "reason": "rr"})
    assert response.status_code == 202
    again = (await router.events(lead))[-1].data
    assert again["from_owner_id"] == router.owner("cat") and again["assignment_no"] == 3
    assert again["to_owner_id"] in (first, other)
    # A form's empty field is "route again" too (it was a 422).
    response = await router.client.post(f"/v1/leads/{lead}/reassign", json={"owner_id": "", "reason": "rr"})
    assert response.status_code == 202 and (await router.events(lead))[-1].data["assignment_no"] == 4


async def test_an_owner_s_status_is_read_as_admins_and_crms_write_it(router) -> None:
    for sent, status in (("Out of office", "out_of_office"), ("Away", "away"), ("available", "active")):
        assert (await router.put("ann", status=sent)).status_code == 200, sent
        assert (await router.owners())["ann"]["status"] == status
    assert (await router.put("ann", status="busy")).status_code == 422


async def test_reassign_errors(router) -> None:
    lead = await router.receive()
    owner = (await router.events(lead))[0].data["owner_id"]
    post = router.client.post
    assert (await post(f"/v1/leads/{uuid.uuid4()}/reassign", json={"owner_id": None, "reason": "x"})).status_code == 404
    unknown = await post(f"/v1/leads/{lead}/reassign", json={"owner_id": "ghost", "reason": "x"})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "owner_id"
    assert (await post(f"/v1/leads/{lead}/reassign", json={"owner_id": owner, "reason": "x"})).status_code == 409
    assert (await post(f"/v1/leads/{lead}/reassign", json={"owner_id": None})).status_code == 422


@pytest.mark.parametrize("reason", [r"territory\u0000", r"territory \ud800"])  # JSON escapes, as sent
async def test_a_reassign_reason_postgres_cannot_store_is_a_problem_naming_it(router, reason) -> None:
    """It was accepted (202) and lead.reassigned carried it, so reporting, which keeps every event
    as jsonb, dead-lettered it: the read model never learned of the reassignment."""
    lead = await router.receive()
    response = await router.client.post(f"/v1/leads/{lead}/reassign", headers={"Content-Type": "application/json"},
                                        content=f'{{"owner_id": null, "reason": "{reason}"}}'.encode())
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["reason"]
    assert [e.type for e in await router.events(lead)] == ["lead.assigned"]


async def test_reassignment_releases_capacity_and_the_queue_moves(router) -> None:
    first, second = await router.receive(), await router.receive()  # ann and ben are both full now
    waiting = await router.receive()
    assert await router.types(waiting) == ["lead.queued"]
    owner = (await router.events(first))[0].data["owner_id"]
    response = await router.client.post(f"/v1/leads/{first}/reassign",
                                        json={"owner_id": router.owner("cat"), "reason": "rebalance"})
    assert response.status_code == 202
    assert await router.types(waiting) == ["lead.queued", "lead.dequeued", "lead.assigned"]
    assert (await router.events(waiting))[-1].data["owner_id"] == owner
    assert second


async def test_going_out_of_office_hands_back_open_untouched_leads(router) -> None:
    assert (await router.put("ann", capacity=5)).status_code == 200
    assert (await router.put("ben", capacity=5)).status_code == 200
    leads = [await router.receive() for _ in range(4)]
    anns = [lead for lead in leads if (await router.events(lead))[0].data["owner_id"] == router.owner("ann")]
    assert len(anns) == 2
    await router.activity(anns[0], "call")  # worked: stays with ann

    assert (await router.put("ann", status="out_of_office", until="2026-11-30T09:00:00Z")).status_code == 200
    assert await router.types(anns[0]) == ["lead.assigned"]
    handed_back = (await router.events(anns[1]))[-1]
    assert handed_back.type == "lead.reassigned"
    assert handed_back.data["to_owner_id"] == router.owner("ben")
    assert handed_back.data["reason"] == "owner_out_of_office"


async def test_an_open_lead_of_the_same_company_brings_the_next_one_to_its_owner(router) -> None:
    assert (await router.put("ann", capacity=5)).status_code == 200
    assert (await router.put("ben", capacity=5)).status_code == 200
    domain = f"acme-{router.s}.com"
    first = await router.receive(domain=domain)
    owner = (await router.events(first))[0].data["owner_id"]
    for _ in range(2):
        follow = await router.receive(domain=domain)
        data = (await router.events(follow))[0].data
        assert (data["owner_id"], data["method"]) == (owner, "account_match")


async def test_a_closed_lead_that_nobody_else_can_take_stays_where_it_is(router) -> None:
    lead = await router.receive()
    owner = (await router.events(lead))[0].data["owner_id"]
    await router.activity(lead, "disposition", Disposition(status="qualified"))
    other = "ben" if owner == router.owner("ann") else "ann"
    assert (await router.put(other, status="away")).status_code == 200  # and cat is outside her hours
    response = await router.client.post(f"/v1/leads/{lead}/reassign", json={"reason": "second opinion"})
    assert response.status_code == 409
    assert await router.types(lead) == ["lead.assigned"]
    assert (await router.client.get("/v1/queue")).json()["leads"] == []


async def test_a_new_lead_does_not_jump_older_queued_leads_when_working_hours_start(router) -> None:
    waiting = await router.receive(tier="A", source="night")  # cat starts at 12:00; it is 09:00
    assert await router.types(waiting) == ["lead.queued"]
    router.ctx.clock.advance(timedelta(hours=3))  # 12:00: cat is free, the queue check has not run yet
    newcomer = await router.receive(tier="B", source="night")
    [queued] = await router.events(newcomer)
    assert (queued.type, queued.data["reason"]) == ("lead.queued", "queue_ahead")
    assert await drain_all(router.ctx) == 2
    outbox = EVENTS["router"]
    async with router.ctx.engine.connect() as conn:
        assigned = (await conn.execute(  # in commit order
            select(outbox.c.key).where(outbox.c.key.in_([waiting, newcomer]),
                                       outbox.c.event_type == "lead.assigned").order_by(outbox.c.position))).scalars().all()
    assert assigned == [waiting, newcomer]
    assert (await router.events(newcomer))[-1].data["owner_id"] == router.owner("cat")


async def test_an_escalation_step_with_reassign_routes_the_lead_to_someone_else(router) -> None:
    lead = await router.receive()
    first = (await router.events(lead))[0].data["owner_id"]

    async def escalation(step: int) -> CloudEvent:
        event = new_event("escalation.triggered", service="notifier", lead_id=lead, time=router.ctx.clock.now(),
                          data=EscalationTriggered(lead_id=lead, escalation_id=str(uuid.uuid4()),
                                                   policy_id=f"breach-{router.s}", step=step,
                                                   trigger_event_id="breach", trigger_type="sla.breached",
                                                   recipients=[first]))
        async with router.ctx.uow() as uow:
            await on_escalation(uow, Received.of(event), RouterDeps(router.ctx.config.config, router.ctx.clock))
            await uow.commit()
        return event

    await escalation(1)  # notify only
    assert await router.types(lead) == ["lead.assigned"]
    trigger = await escalation(2)
    reassigned = (await router.events(lead))[-1]
    assert reassigned.type == "lead.reassigned"
    assert reassigned.causationid == trigger.id  # the escalation caused it (was the correlation id)
    assert reassigned.data["from_owner_id"] == first and reassigned.data["to_owner_id"] != first
    assert reassigned.data["reason"] == f"escalation:breach-{router.s}:2"
    assert reassigned.data["assignment_no"] == 2
    await escalation(2)  # the new owner's timer, restarted, reached the step too: it only notifies
    assert await router.types(lead) == ["lead.assigned", "lead.reassigned"]


async def test_owner_changes_out_of_range_or_in_the_wrong_shape_are_422_naming_the_field(router) -> None:
    cases = [
        ({"capacity": 10**30}, "capacity"),  # was a 500: too large to store
        ({"daily_cap": 10**20}, "daily_cap"),
        ({"weight": 10**19}, "weight"),
        ({"capacity": True}, "capacity"),  # was taken as a capacity of 1
        ({"working_hours": {"timezone": "Mars/Base"}}, "working_hours.timezone"),
        ({"working_hours": {"hours": {"mon": ["25:00-17:00"]}}}, "working_hours.hours.mon.0"),
        ({"working_hours": {"hours": {"funday": ["09:00-17:00"]}}}, "working_hours.hours.funday.[key]"),
        ({"working_hours": 5}, "working_hours"),
    ]
    for body, field in cases:
        response = await router.put("ann", **body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        # Exactly the field sent, not pydantic's union members (working_hours.str, working_hours.CalendarConfig...).
        assert [e["field"] for e in response.json()["errors"]] == [field], (body, response.json())
    own = {"timezone": "Europe/Berlin", "hours": {"mon": ["09:00-17:00"]}}
    response = await router.put("ann", working_hours=own, capacity=7)
    assert response.status_code == 200, response.text
    assert response.json()["working_hours"]["timezone"] == "Europe/Berlin" and response.json()["capacity"] == 7


async def test_a_body_that_is_not_json_is_422_on_the_body(router) -> None:
    response = await router.client.put(f"/v1/owners/{router.owner('ann')}", content=b'{"capacity": ',
                                       headers={"content-type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "(body)" and error["message"].startswith("is not valid JSON"), error


async def test_out_of_office_again_after_an_absence_ran_out_is_an_absence(router) -> None:
    until = router.ctx.clock.now() + timedelta(hours=1)
    assert (await router.put("ann", status="out_of_office", until=until.isoformat())).status_code == 200
    router.ctx.clock.advance(timedelta(hours=2))
    assert (await router.owners())["ann"]["status"] == "active"  # the absence is over by itself

    # Out of office again, with no end this time: the old end date, long past, must not end it at once.
    response = await router.put("ann", status="out_of_office")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["until"]) == ("out_of_office", None)
    lead = await router.receive()
    assert (await router.events(lead))[0].data["owner_id"] == router.owner("ben")


async def test_out_of_office_again_during_an_absence_keeps_its_end(router) -> None:
    until = router.ctx.clock.now() + timedelta(hours=1)
    assert (await router.put("ann", status="out_of_office", until=until.isoformat())).status_code == 200
    response = await router.put("ann", status="out_of_office")  # e.g. a client retrying
    assert response.status_code == 200 and response.json()["until"] is not None


async def test_routing_again_when_only_the_owner_can_take_the_lead_leaves_it_with_them(router) -> None:
    lead = await router.receive()
    owner = (await router.events(lead))[0].data["owner_id"]
    other = "ben" if owner == router.owner("ann") else "ann"
    assert (await router.put(other, status="away")).status_code == 200  # and cat is outside her hours
    response = await router.client.post(f"/v1/leads/{lead}/reassign", json={"owner_id": None, "reason": "rr"})
    # Was 202 with lead.queued, and the queue handed the lead straight back to the same owner.
    assert response.status_code == 409, response.text
    assert "stays with its owner" in response.json()["detail"]
    assert await router.types(lead) == ["lead.assigned"]
    assert (await router.client.get("/v1/queue")).json()["leads"] == []

    # Someone else can take it again: routing again moves it, lead.reassigned with assignment_no + 1.
    assert (await router.put(other, status="active")).status_code == 200
    response = await router.client.post(f"/v1/leads/{lead}/reassign", json={"owner_id": None, "reason": "rr"})
    assert response.status_code == 202
    moved = (await router.events(lead))[-1]
    assert (moved.type, moved.data["to_owner_id"], moved.data["assignment_no"]) == (
        "lead.reassigned", router.owner(other), 2)


async def test_an_owner_who_cannot_take_the_lead_either_sends_it_to_the_queue_when_routed_again(router) -> None:
    lead = await router.receive()
    owner = (await router.events(lead))[0].data["owner_id"]
    other = "ben" if owner == router.owner("ann") else "ann"
    assert (await router.put(other, status="away")).status_code == 200
    assert (await router.put(owner.removesuffix(f"-{router.s}"), status="away")).status_code == 200
    response = await router.client.post(f"/v1/leads/{lead}/reassign", json={"owner_id": None, "reason": "rr"})
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert await router.types(lead) == ["lead.assigned", "lead.queued"]


async def test_a_reassignment_that_waited_for_another_is_stamped_after_it(router, engine) -> None:
    """Found by an acceptance sweep: concurrent reassignments read the time before waiting for the
    routing state, so one that waited for another was stamped earlier than it, and a subscriber
    behind (a lead's deliveries go in event-time order) got the two swapped: the CRM kept the
    owner of the earlier one. Here the other one is the test, holding the routing state while the
    clock moves on."""
    lead = await router.receive()
    async with engine.connect() as blocker:
        await blocker.begin()
        await lock_routing(blocker)
        request = asyncio.create_task(router.client.post(
            f"/v1/leads/{lead}/reassign", json={"owner_id": router.owner("cat"), "reason": "speaks Welsh"}))

        async def waiting_for_the_routing_state() -> bool:
            async with engine.connect() as conn:
                return bool(await conn.scalar(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")))

        await eventually(waiting_for_the_routing_state, what="the reassignment waiting for the routing state")
        router.ctx.clock.advance(timedelta(minutes=1))
        moved_on = router.ctx.clock.now()
        await blocker.rollback()
    assert (await request).status_code == 202
    reassigned = (await router.events(lead))[-1]
    assert reassigned.type == "lead.reassigned" and reassigned.time == moved_on


async def test_routing_again_a_queued_lead_nobody_can_take_leaves_it_queued_without_an_event(router) -> None:
    for name in ("ann", "ben"):
        assert (await router.put(name, status="away")).status_code == 200
    lead = await router.receive()
    response = await router.client.post(f"/v1/leads/{lead}/reassign", json={"owner_id": None, "reason": "try"})
    assert response.status_code == 202
    assert response.json() == {"lead_id": lead, "status": "queued", "owner_id": None}
    assert await router.types(lead) == ["lead.queued"]
    assert [q["lead_id"] for q in (await router.client.get("/v1/queue")).json()["leads"]] == [lead]


async def test_assigning_a_queued_lead_by_hand_counts_without_the_free_text_reason_as_a_label(router) -> None:
    for name in ("ann", "ben"):
        assert (await router.put(name, status="away")).status_code == 200
    lead = await router.receive()
    assert await router.types(lead) == ["lead.queued"]
    reason = f"asked by jane-{router.s}@example.com"
    labels = {"team": router.owner("sdr"), "method": "manual", "reason": "reassigned"}
    before = REGISTRY.get_sample_value("leadsla_assignments_total", labels) or 0
    response = await router.client.post(f"/v1/leads/{lead}/reassign",
                                        json={"owner_id": router.owner("ann"), "reason": reason})
    assert response.status_code == 202 and response.json()["owner_id"] == router.owner("ann")
    assert await router.types(lead) == ["lead.queued", "lead.dequeued", "lead.assigned"]
    assert REGISTRY.get_sample_value("leadsla_assignments_total", labels) == before + 1
    exposed = [s for m in REGISTRY.collect() if m.name == "leadsla_assignments" for s in m.samples
               if s.labels.get("reason") == reason]
    assert exposed == []


async def test_a_lead_queued_for_missing_data_is_routed_as_soon_as_the_field_is_completed(router) -> None:
    lead = await router.receive(source="partner")  # the rule needs company.name; there is no fallback owner
    [queued] = await router.events(lead)
    assert (queued.type, queued.data["reason"], queued.data["missing_fields"]) == (
        "lead.queued", "missing_data", ["company.name"])

    # PATCH /v1/leads/{id} gives the company's name: the team can work it now (it waited for a fallback owner).
    await router.updated(lead, {"company.name": {"old": None, "new": "Big Corp"}}, tier="A")
    assert await router.types(lead) == ["lead.queued", "lead.dequeued", "lead.assigned"]
    assigned = (await router.events(lead))[-1].data
    assert assigned["rule_id"] == router.owner("big") and assigned["reason"] == "rule_match"
    assert assigned["owner_id"] in (router.owner("ann"), router.owner("ben"))
    assert (await router.client.get("/v1/queue")).json()["leads"] == []


async def test_a_queued_lead_whose_tier_is_raised_moves_up_the_queue(router) -> None:
    for name in ("ann", "ben"):
        assert (await router.put(name, status="away")).status_code == 200
    older_b = await router.receive(tier="B")
    router.ctx.clock.advance(timedelta(seconds=1))
    a = await router.receive(tier="A")
    queue_order = [(q["lead_id"], q["tier"]) for q in (await router.client.get("/v1/queue")).json()["leads"]]
    assert queue_order == [(a, "A"), (older_b, "B")]

    await router.updated(older_b, {"intent.type": {"old": "trial", "new": "demo_request"}}, tier="A",
                         previous_tier="B")
    queue_order = [(q["lead_id"], q["tier"]) for q in (await router.client.get("/v1/queue")).json()["leads"]]
    assert queue_order == [(older_b, "A"), (a, "A")]  # tier, then age
    assert (await router.put("ann", status="active")).status_code == 200
    assigned = (await router.events(older_b))[-1]
    assert (assigned.type, assigned.data["tier"]) == ("lead.assigned", "A")


async def test_an_update_of_an_assigned_lead_is_kept_for_routing_it_again(router) -> None:
    lead = await router.receive(tier="B")
    await router.updated(lead, {"intent.type": {"old": "trial", "new": "demo_request"}}, tier="A",
                         previous_tier="B")
    assert await router.types(lead) == ["lead.assigned"]  # an assigned lead stays where it is
    response = await router.client.post(f"/v1/leads/{lead}/reassign", json={"owner_id": None, "reason": "rr"})
    assert response.status_code == 202
    assert (await router.events(lead))[-1].data["tier"] == "A"


async def test_an_update_routing_does_not_use_waits_for_no_routing_decision(router) -> None:
    """A PATCH of a field no rule reads (a job title) while another router holds the routing lock
    (new leads being decided): it goes through at once, instead of queueing behind the decision and
    holding every later one up in turn until its batch commits."""
    lead = await router.receive(tier="A")
    async with router.ctx.engine.connect() as deciding:
        await lock_routing(deciding)
        await asyncio.wait_for(router.updated(lead, {"contact.title": {"old": None, "new": "CTO"}}, tier="A"), 20)
        await deciding.rollback()
    assert await router.types(lead) == ["lead.assigned"]


async def test_a_source_key_sees_only_its_own_leads_in_the_queue(router) -> None:
    for name in ("ann", "ben"):
        assert (await router.put(name, status="away")).status_code == 200
    own = await router.receive(source="webform")  # the source key's name
    other = await router.receive(source="partner-portal")
    source = {"Authorization": f"Bearer {router.source}"}
    response = await router.client.get("/v1/queue", headers=source)
    assert response.status_code == 200
    assert [q["lead_id"] for q in response.json()["leads"]] == [own]  # was every source's queued leads
    assert {q["lead_id"] for q in (await router.client.get("/v1/queue")).json()["leads"]} == {own, other}


async def test_a_queued_lead_that_opts_out_or_is_dispositioned_leaves_the_queue_unassigned(router) -> None:
    for name in ("ann", "ben"):
        assert (await router.put(name, status="away")).status_code == 200
    opted, disqualified, waiting = await router.receive(), await router.receive(), await router.receive()
    await router.activity(opted, "opt_out")
    await router.activity(disqualified, "disposition", Disposition(status="disqualified", reason="spam"))
    for lead, reason in ((opted, "opted_out"), (disqualified, "dispositioned")):
        assert await router.types(lead) == ["lead.queued", "lead.dequeued"]
        assert (await router.events(lead))[-1].data["reason"] == reason
    assert [q["lead_id"] for q in (await router.client.get("/v1/queue")).json()["leads"]] == [waiting]

    # Ann is back with room for one lead: it goes to the lead still waiting, not to one that opted out.
    assert (await router.put("ann", status="active", capacity=1)).status_code == 200
    assert await router.types(waiting) == ["lead.queued", "lead.dequeued", "lead.assigned"]
    assert await router.types(opted) == ["lead.queued", "lead.dequeued"]




async def test_the_router_s_config_shows_owners_as_routing_uses_them_runtime_changes_included(router) -> None:
    """GET /v1/config showed the file's capacity and status while routing used the ones set with
    PUT /v1/owners (which stay in force over later files): an admin reading it was misled."""
    assert (await router.put("ann", status="away", capacity=2)).status_code == 200
    body = (await router.client.get("/v1/config")).json()
    [ann] = [o for o in body["config"]["owners"] if o["id"] == router.owner("ann")]
    assert (ann["status"], ann["capacity"]) == ("away", 2)
    changed = body["runtime_changes"]["owners"][router.owner("ann")]
    assert (changed["status"], changed["capacity"]) == ("away", 2)

async def test_a_closed_lead_is_handed_to_nobody(router) -> None:
    """Opted out or dispositioned, a lead is out of the funnel: a reassignment, named or routing
    again, was 202 with a lead.reassigned (a rep got an opted-out buyer to call, and used up a
    round-robin turn). Now 409 naming the lead, and nothing is emitted."""
    opted, disqualified = await router.receive(), await router.receive()
    await router.activity(opted, "opt_out")
    await router.activity(disqualified, "disposition", Disposition(status="disqualified", reason="spam"))
    for lead in (opted, disqualified):
        before = await router.types(lead)
        owner = (await router.events(lead))[0].data["owner_id"]
        other = router.owner("ben") if owner == router.owner("ann") else router.owner("ann")
        for owner_id in (other, None):
            response = await router.client.post(f"/v1/leads/{lead}/reassign", json={"owner_id": owner_id, "reason": "x"})
            assert response.status_code == 409, response.text
            assert response.json()["errors"][0]["field"] == "lead_id" and "closed" in response.json()["detail"]
        assert await router.types(lead) == before

async def test_a_contact_consent_withdrawn_by_patch_closes_the_lead_as_an_opt_out_does(router) -> None:
    """Only the SLA clock took it as an opt-out: the queued lead was later assigned to a rep, and
    an assigned one kept its place in its owner's capacity."""
    withdrawn = {"consent.contact": {"old": True, "new": False}}
    for name in ("ann", "ben"):
        assert (await router.put(name, status="away")).status_code == 200
    queued = await router.receive()
    await router.updated(queued, withdrawn, tier="A")
    assert await router.types(queued) == ["lead.queued", "lead.dequeued"]
    assert (await router.events(queued))[-1].data["reason"] == "opted_out"

    assert (await router.put("ann", status="active", capacity=1)).status_code == 200
    assert await router.types(queued) == ["lead.queued", "lead.dequeued"]  # never handed to a rep
    taken = await router.receive()
    assert (await router.events(taken))[0].data["owner_id"] == router.owner("ann")
    assert (await router.owners())["ann"]["open_leads"] == 1
    await router.updated(taken, withdrawn, tier="A")
    assert (await router.owners())["ann"]["open_leads"] == 0
    after = await router.receive()  # ann has room again
    assert (await router.events(after))[0].data["owner_id"] == router.owner("ann")


async def test_going_out_of_office_again_after_an_absence_ran_out_hands_back_untouched_leads(router) -> None:
    assert (await router.put("ann", capacity=5)).status_code == 200
    assert (await router.put("ben", capacity=5)).status_code == 200
    until = router.ctx.clock.now() + timedelta(hours=1)
    assert (await router.put("ann", status="out_of_office", until=until.isoformat())).status_code == 200
    router.ctx.clock.advance(timedelta(hours=2))  # ann is back by herself, and gets leads again
    leads = [await router.receive() for _ in range(2)]
    anns = [lead for lead in leads if (await router.events(lead))[0].data["owner_id"] == router.owner("ann")]
    assert len(anns) == 1

    assert (await router.put("ann", status="out_of_office")).status_code == 200
    handed_back = (await router.events(anns[0]))[-1]
    # The absence that ran out was still the stored status: going out again was not seen as a change.
    assert (handed_back.type, handed_back.data["reason"], handed_back.data["to_owner_id"]) == (
        "lead.reassigned", "owner_out_of_office", router.owner("ben"))


async def test_back_from_an_absence_with_until_null_as_a_crm_sends_the_whole_record(router) -> None:
    # A CRM syncing owners sends every field: `until: null` with a status other than
    # out_of_office says "no absence end", which is what such a status means anyway.
    until = router.ctx.clock.now() + timedelta(hours=1)
    assert (await router.put("ann", status="out_of_office", until=until.isoformat())).status_code == 200
    response = await router.put("ann", status="active", until=None)
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["until"]) == ("active", None)
    assert (await router.put("ann", status="away", until=None)).status_code == 200
    assert (await router.owners())["ann"]["until"] is None
