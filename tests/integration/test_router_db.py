"""Round robin survives across leads (the cursor is in Postgres), a lead is routed once, and two
writers racing on one lead's stream: one wins, the other decides again from fresh state."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete, select

from services.router.handlers import RouterDeps, on_activity, route_lead, route_leads, update_owner
from services.router.tables import assignments, queue
from shared.events import (
    ActivityRecorded,
    CloudEvent,
    Company,
    Consent,
    Contact,
    Intent,
    LeadReceived,
    Received,
    new_event,
)
from shared.eventstore import ConcurrencyConflict, retry_on_conflict
from shared.uow import UnitOfWork
from tests.support import published_events, stored_events

CONFIG = """
owners: [{id: alice}, {id: bob}, {id: carol, status: away}]
teams: [{id: sdr, members: [alice, bob, carol]}]
routing:
  rules: [{id: rr-%s, team: sdr}]
"""


def received(now) -> CloudEvent:
    lead_id = str(uuid.uuid4())
    return new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
        lead_id=lead_id, source="web", tier="A", contact=Contact(email=f"a@{lead_id[:8]}.example"), company=Company(),
        intent=Intent(type="demo_request"), consent=Consent(), contactable=True, received_at=now))


@pytest.fixture(autouse=True)
async def empty_queue(engine) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(queue))  # queued leads of other tests would go first


async def routed(engine, lead_id: str) -> list[CloudEvent]:
    return await published_events(engine, "router", lead_id)


async def test_round_robin_alternates_and_skips_the_unavailable(make_ctx, clock, engine) -> None:
    ctx = make_ctx("router", CONFIG % uuid.uuid4().hex[:6])
    owners = []
    for _ in range(4):
        event = received(clock.now())
        async with ctx.uow() as uow:
            await route_lead(uow, Received.of(event), RouterDeps(ctx.config.config, clock))
            await uow.commit()
        [assigned] = await routed(engine, event.subject)
        owners.append(assigned.data["owner_id"])
        assert assigned.causationid == event.id and assigned.correlationid == event.correlationid
    assert owners == ["alice", "bob", "alice", "bob"]


async def test_a_lead_received_twice_is_assigned_once(make_ctx, clock, engine) -> None:
    ctx = make_ctx("router", CONFIG % uuid.uuid4().hex[:6])
    event = received(clock.now())
    for _ in range(2):
        async with ctx.uow() as uow:
            await route_lead(uow, Received.of(event), RouterDeps(ctx.config.config, clock))
            await uow.commit()
    assert len(await routed(engine, event.subject)) == 1


async def test_two_writers_racing_on_one_lead_one_wins_and_the_other_decides_again(make_ctx, clock, engine) -> None:
    ctx = make_ctx("router", CONFIG % uuid.uuid4().hex[:6])
    deps = RouterDeps(ctx.config.config, clock)
    lead = received(clock.now())
    async with ctx.uow() as uow:
        await route_lead(uow, Received.of(lead), deps)
        await uow.commit()

    def touch(kind: str) -> CloudEvent:
        return new_event("activity.recorded", service="intake", lead_id=lead.subject, time=clock.now(),
                         data=ActivityRecorded(lead_id=lead.subject, activity_id=str(uuid.uuid4()), type=kind,
                                               occurred_at=clock.now()))

    attempts: list[str] = []

    class CutIn(UnitOfWork):
        """Lets the other writer touch the lead, and commit, right after this one read the lead
        untouched and before it records."""

        async def record(self, topic, event, *, stream=None) -> None:
            if len(attempts) == 1:
                async with ctx.uow() as other:
                    await on_activity(other, Received.of(touch("call")), deps)
                    await other.commit()
            await super().record(topic, event, stream=stream)

    async def touch_by_email() -> None:
        attempts.append("email")
        async with CutIn(engine, "router", projection=ctx.projection) as uow:
            await on_activity(uow, Received.of(touch("email")), deps)
            await uow.commit()

    await retry_on_conflict(touch_by_email)

    # The second lost the race (its read version moved), ran again from fresh state, and found the
    # lead touched: one touch event, not two.
    assert attempts == ["email", "email"]
    kept = [e.type for e in await stored_events(engine, "router", lead.subject)]
    assert kept.count("router.lead_touched") == 1
    async with engine.connect() as conn:
        assert await conn.scalar(select(assignments.c.touched_at).where(assignments.c.lead_id == lead.subject))


async def test_a_writer_that_read_an_old_version_of_the_lead_conflicts(make_ctx, clock, engine) -> None:
    ctx = make_ctx("router", CONFIG % uuid.uuid4().hex[:6])
    deps = RouterDeps(ctx.config.config, clock)
    lead = received(clock.now())
    async with ctx.uow() as uow:
        await route_lead(uow, Received.of(lead), deps)
        await uow.commit()
    closing = new_event("activity.recorded", service="intake", lead_id=lead.subject, time=clock.now(),
                        data=ActivityRecorded(lead_id=lead.subject, activity_id=str(uuid.uuid4()), type="opt_out",
                                              occurred_at=clock.now()))
    async with ctx.uow() as stale:
        await stale.load_version(lead.subject)  # read before another writer appends
        async with ctx.uow() as other:
            await on_activity(other, Received.of(closing), deps)
            await other.commit()
        stale.emit(None, closing, stream=lead.subject)
        with pytest.raises(ConcurrencyConflict):
            await stale.commit()


def received_from(now, domain: str, tier: str) -> CloudEvent:
    lead_id = str(uuid.uuid4())
    return new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
        lead_id=lead_id, source="web", tier=tier, contact=Contact(email=f"a@{domain}"), company=Company(),
        intent=Intent(type="demo_request"), consent=Consent(), contactable=True, received_at=now))


OUTSIDE = """
owners: [{id: alice}, {id: bob, status: away}, {id: dana}, {id: zed}]
teams: [{id: sdr, members: [alice]}, {id: vip, members: [dana]}, {id: gone, members: [bob]}]
routing:
  fallback_owner: zed
  rules:
    - {id: vip-%(s)s, match: {tiers: [B]}, team: vip}
    - {id: gone-%(s)s, match: {tiers: [C]}, team: gone}
    - {id: rr-%(s)s, team: sdr}
"""


async def test_decisions_that_leave_the_rules_team_lock_their_owner_first(make_ctx, clock, engine) -> None:
    """An account's owner outside the rule's team (looked up by the run's lock statement) and a
    fallback owner outside it (the scope widened under a savepoint) both get the lead."""
    s = uuid.uuid4().hex[:6]
    ctx = make_ctx("router", OUTSIDE % {"s": s})
    domain = f"{s}.example"
    vip, same_account, nobody_in_team = (received_from(clock.now(), domain, "B"),
                                         received_from(clock.now(), domain, "A"),
                                         received_from(clock.now(), f"other-{s}.example", "C"))
    for event in (vip, [same_account, nobody_in_team]):
        async with ctx.uow() as uow:
            run = [Received.of(e) for e in (event if isinstance(event, list) else [event])]
            await route_leads(uow, run, RouterDeps(ctx.config.config, clock))
            await uow.commit()
    owners = {}
    for event in (vip, same_account, nobody_in_team):
        [assigned] = await routed(engine, event.subject)
        owners[event.subject] = (assigned.data["owner_id"], assigned.data["method"])
    assert owners == {vip.subject: ("dana", "round_robin"), same_account.subject: ("dana", "account_match"),
                      nobody_in_team.subject: ("zed", "fallback")}


ACCOUNT = """
owners: [{id: amy-%(s)s}, {id: abe-%(s)s}]
teams: [{id: t-%(s)s, members: [amy-%(s)s, abe-%(s)s]}]
routing:
  account_match: true
  rules: [{id: rr-%(s)s, team: t-%(s)s}]
"""


async def test_lead_assigned_lists_each_candidate_once(make_ctx, clock, engine) -> None:
    """An account's owner who cannot take the lead, and is next in the rule's turn as well, is one
    candidate: a CRM reading `candidates` sees each owner once, with why they were passed over."""
    s = uuid.uuid4().hex[:6]
    ctx = make_ctx("router", ACCOUNT % {"s": s})
    deps = RouterDeps(ctx.config.config, clock)
    first, other, same_account = (received_from(clock.now(), f"{s}.example", "A"),
                                  received_from(clock.now(), f"other-{s}.example", "A"),
                                  received_from(clock.now(), f"{s}.example", "A"))
    for event in (first, other):  # amy, then abe: amy is next in turn
        async with ctx.uow() as uow:
            await route_lead(uow, Received.of(event), deps)
            await uow.commit()
    async with ctx.uow() as uow:
        await update_owner(uow, ctx.config.config, clock.now(), f"amy-{s}", {"status": "away"}, "test")
        await uow.commit()
    async with ctx.uow() as uow:
        await route_lead(uow, Received.of(same_account), deps)
        await uow.commit()
    [assigned] = await routed(engine, same_account.subject)
    assert assigned.data["owner_id"] == f"abe-{s}"
    assert assigned.data["candidates"] == [
        {"owner_id": f"amy-{s}", "eligible": False, "why": "status away"},
        {"owner_id": f"abe-{s}", "eligible": True, "why": "next in turn"}]
