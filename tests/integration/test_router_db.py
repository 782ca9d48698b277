"""Round robin survives across leads (the cursor is in Postgres) and a lead is routed once."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete

from services.router.handlers import RouterDeps, route_lead
from services.router.tables import queue
from shared.events import (
    CloudEvent,
    Company,
    Consent,
    Contact,
    Intent,
    LeadReceived,
    Received,
    new_event,
)
from tests.support import stored_events

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
    return await stored_events(engine, "router", lead_id)


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
