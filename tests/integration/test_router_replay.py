"""The router's state is a projection of its store: traffic through the handlers, then a rebuild
from the store matches the live tables; a damaged row is found; `leadsla replay router` restores
deleted rows. On a database of this module's own (other modules write the router's store and
tables by hand, which a rebuild would rightly report)."""
from __future__ import annotations

import asyncio
import os
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.router.entrypoints import drain_all
from services.router.handlers import (
    RouterDeps,
    on_activity,
    on_escalation,
    on_lead_updated,
    reassign,
    route_lead,
    update_owner,
)
from services.router.projection import PROJECTION
from services.router.tables import assignments, daily_assignments, owner_state, queue
from shared.clock import ManualClock
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig
from shared.events import (
    ActivityRecorded,
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
from shared.replay import rebuild
from shared.runtime import ServiceContext
from shared.settings import Settings
from tests.integration.own_database import OwnDatabase, own_database  # noqa: F401 - a fixture

CONFIG = """
calendars:
  late: {timezone: UTC, hours: {tue: ["12:00-18:00"], wed: ["12:00-18:00"]}}
owners:
  - {id: ann, capacity: 2}
  - {id: ben, capacity: 2, daily_cap: 4}
  - {id: cat, calendar: late}
  - {id: dan, weight: 3}
  - {id: eve, weight: 1}
  - {id: boss, capacity: 1}
teams:
  - {id: sdr, members: [ann, ben]}
  - {id: late, members: [cat]}
  - {id: ae, members: [dan, eve]}
channels:
  hook: {url: "http://127.0.0.1:9/hook", secret: s}
escalation_policies:
  - id: breach
    steps:
      - {step: 1, notify: [owner], channels: [hook], reassign: true}
routing:
  on_out_of_office: reroute_untouched
  fallback_owner: boss
  rules:
    - {id: night, match: {sources: [night]}, team: late}
    - {id: big, match: {tiers: [B]}, team: ae, method: weighted}
    - {id: least, match: {tiers: [C]}, team: ae, method: least_loaded}
    - {id: rr, team: sdr}
"""


@dataclass
class Traffic:
    ctx: ServiceContext
    clock: ManualClock
    database_url: str
    leads: dict[str, str] = field(default_factory=dict)  # name -> lead id

    @property
    def deps(self) -> RouterDeps:
        return RouterDeps(self.ctx.config.config, self.clock)

    async def receive(self, name: str, tier: str = "A", source: str = "web", domain: str | None = None) -> str:
        now = self.clock.now()
        lead_id = self.leads[name] = str(uuid.uuid4())
        event = new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
            lead_id=lead_id, source=source, tier=tier, contact=Contact(email=f"x@{lead_id[:8]}.example", country="GB"),
            company=Company(domain=domain), intent=Intent(type="demo_request"), consent=Consent(),
            contactable=True, received_at=now))
        async with self.ctx.uow() as uow:
            await route_lead(uow, Received.of(event), self.deps)
            await uow.commit()
        return lead_id

    async def activity(self, name: str, type: str, disposition: Disposition | None = None) -> None:
        now, lead_id = self.clock.now(), self.leads[name]
        event = new_event("activity.recorded", service="intake", lead_id=lead_id, time=now, data=ActivityRecorded(
            lead_id=lead_id, activity_id=str(uuid.uuid4()), type=type, occurred_at=now, disposition=disposition))
        async with self.ctx.uow() as uow:
            await on_activity(uow, Received.of(event), self.deps)
            await uow.commit()

    async def owner(self, owner_id: str, **changes) -> None:
        async with self.ctx.uow() as uow:
            await update_owner(uow, self.ctx.config.config, self.clock.now(), owner_id, changes, "admin")
            await uow.commit()

    async def reassign(self, name: str, to_owner: str | None) -> None:
        async with self.ctx.uow() as uow:
            await reassign(uow, self.ctx.config.config, self.clock, self.leads[name], to_owner, "test")
            await uow.commit()

    async def updated(self, name: str, changed: dict, tier: str) -> None:
        lead_id = self.leads[name]
        event = new_event("lead.updated", service="intake", lead_id=lead_id, time=self.clock.now(),
                          data=LeadUpdated(lead_id=lead_id, changed=changed, tier=tier, previous_tier="B",
                                           reason="patched"))
        async with self.ctx.uow() as uow:
            await on_lead_updated(uow, Received.of(event), self.deps)
            await uow.commit()

    async def escalate(self, name: str) -> None:
        lead_id = self.leads[name]
        event = new_event("escalation.triggered", service="notifier", lead_id=lead_id, time=self.clock.now(),
                          data=EscalationTriggered(lead_id=lead_id, escalation_id=str(uuid.uuid4()),
                                                   policy_id="breach", step=1, trigger_event_id="breach",
                                                   trigger_type="sla.breached", recipients=["x"]))
        async with self.ctx.uow() as uow:
            await on_escalation(uow, Received.of(event), self.deps)
            await uow.commit()


async def run_traffic(t: Traffic) -> None:
    """Every kind of decision the router makes, each changing state a rebuild must reproduce."""
    for i in range(4):
        await t.receive(f"a{i}")  # round robin ann/ben up to their capacity
    await t.receive("a4")  # the fallback owner
    await t.receive("a5")  # nobody: queued
    await t.receive("night", source="night")  # cat is off until 12:00: queued
    for i in range(4):
        await t.receive(f"b{i}", tier="B")  # weighted dan 3 : eve 1
    await t.receive("c0", tier="C")  # least loaded
    await t.receive("acme1", tier="B", domain="acme.example")
    await t.receive("acme2", tier="B", domain="acme.example")  # account match
    await t.activity("a0", "call")  # touched: stays with ann when she leaves
    await t.activity("a1", "email", Disposition(status="disqualified", reason="spam"))  # ben has room: a5 drains
    await t.owner("ann", status="out_of_office", until=(t.clock.now() + timedelta(days=1)).isoformat())
    await t.reassign("b0", "eve")  # named
    await t.reassign("b1", None)  # routed again
    await t.escalate("b2")
    await t.owner("ben", capacity=6, weight=2)
    t.clock.advance(timedelta(hours=4))  # 13:00: cat's hours
    await drain_all(t.ctx)
    await t.activity("night", "call")
    await t.activity("a0", "opt_out")
    t.clock.advance(timedelta(days=1))  # another day for the daily counts; ann is back
    for i in range(3):
        await t.receive(f"d{i}")
    await drain_all(t.ctx)
    await t.owner("cat", status="away")
    await t.receive("night2", source="night")  # cat away, the fallback owner full: it waits
    await t.updated("night2", {"company.name": {"old": None, "new": "Night Corp"}}, tier="A")  # still waits
    await t.updated("c0", {"company.domain": {"old": None, "new": "c0.example"}}, tier="B")  # assigned: facts kept


@pytest.fixture(scope="module")
async def traffic(own_database: OwnDatabase, producer, kafka_bootstrap: str) -> Traffic:  # noqa: F811
    own_engine = own_database.engine
    clock = ManualClock(datetime(2026, 11, 17, 9, 0, tzinfo=UTC))  # a Tuesday
    settings = Settings(database_url=own_database.url, kafka_bootstrap=kafka_bootstrap)
    ctx = ServiceContext(name="router", settings=settings, engine=own_engine, producer=producer, clock=clock,
                         config=ConfigHolder(own_engine, VersionedConfig(1, parse_config(CONFIG))),
                         relay_wakeup=asyncio.Event(), projection=PROJECTION)
    t = Traffic(ctx, clock, own_database.url)
    await run_traffic(t)
    return t


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {table.name: await conn.scalar(select(func.count()).select_from(table)) for table in PROJECTION.tables}


async def snapshot(engine: AsyncEngine) -> dict[str, list[tuple]]:
    async with engine.connect() as conn:
        return {table.name: sorted((tuple(r) for r in await conn.execute(select(table))), key=repr)
                for table in PROJECTION.tables}


async def test_a_rebuild_from_the_store_matches_the_live_state_after_real_traffic(traffic: Traffic) -> None:
    engine = traffic.ctx.engine
    # Every table holds state, so agreeing is not two empty tables agreeing.
    assert all(n > 0 for n in (await counts(engine)).values()), await counts(engine)
    async with engine.connect() as conn:
        closed = await conn.scalar(select(func.count()).where(assignments.c.closed_at.is_not(None)))
        touched = await conn.scalar(select(func.count()).where(assignments.c.touched_at.is_not(None)))
        days = await conn.scalar(select(func.count(func.distinct(daily_assignments.c.day))))
        reassigned = await conn.scalar(select(func.count()).where(assignments.c.assignment_no > 1))
    assert closed >= 2 and touched >= 2 and days == 2 and reassigned >= 3
    before = await snapshot(engine)
    result = await rebuild(engine, PROJECTION, verify=True)
    assert result.differences == {}, result.examples
    assert result.events > 40
    assert await snapshot(engine) == before  # verify changes nothing
    # One event per page: a decision's two events applied one by one (not fused into one
    # statement as the live path and full pages do) give the same state.
    assert (await rebuild(engine, PROJECTION, verify=True, page=1)).differences == {}


async def test_verify_reports_a_damaged_row(traffic: Traffic) -> None:
    engine = traffic.ctx.engine
    lead_id = traffic.leads["b3"]
    async with engine.begin() as conn:
        owner = await conn.scalar(select(assignments.c.owner_id).where(assignments.c.lead_id == lead_id))
        version = await conn.scalar(select(owner_state.c.version).where(owner_state.c.owner_id == "ben"))
        await conn.execute(update(assignments).where(assignments.c.lead_id == lead_id).values(owner_id="nobody"))
        await conn.execute(update(owner_state).where(owner_state.c.owner_id == "ben").values(version=99))
    try:
        result = await rebuild(engine, PROJECTION, verify=True)
        assert result.differences == {"assignments": 2, "owner_state": 2}  # each live row and its rebuilt twin
        assert any("nobody" in example for example in result.examples["assignments"])
    finally:
        async with engine.begin() as conn:
            await conn.execute(update(assignments).where(assignments.c.lead_id == lead_id).values(owner_id=owner))
            await conn.execute(update(owner_state).where(owner_state.c.owner_id == "ben").values(version=version))
    assert (await rebuild(engine, PROJECTION, verify=True)).differences == {}


async def test_the_replay_command_restores_deleted_rows(traffic: Traffic) -> None:
    engine = traffic.ctx.engine
    before = await snapshot(engine)
    async with engine.begin() as conn:
        await conn.execute(delete(assignments).where(assignments.c.owner_id == "ben"))
        await conn.execute(delete(queue))
        await conn.execute(delete(daily_assignments))
    assert await snapshot(engine) != before
    # The code under test, even where the installed `leadsla` points at another checkout.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "LEADSLA_DATABASE_URL": traffic.database_url,
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    leadsla = str(Path(sys.executable).parent / "leadsla")

    async def run(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(leadsla, "replay", "router", *args, env=env,
                                                       stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
        return process.returncode, out.decode()

    code, out = await run("--verify")
    assert code == 1 and "assignments" in out, out
    code, out = await run()
    assert code == 0 and "events/s" in out, out
    assert await snapshot(engine) == before
    code, out = await run("--verify")
    assert code == 0 and "match" in out, out
