"""The SLA clock's timers and leads rebuilt from its event store alone: realistic traffic through
the handlers, then `rebuild(verify=True)` finds no difference; a damaged row is found; `leadsla
replay sla_clock` restores deleted rows; two writers racing on one lead conflict and the loser is
retried from fresh state. In a database of its own, so that other tests' rows do not count."""
from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.sla_clock.adapters import PostgresClockStore
from services.sla_clock.handlers import (
    SlaDeps,
    fire_due,
    on_activity,
    on_lead_assigned,
    on_lead_queued,
    on_lead_reassigned,
    on_lead_received,
    on_lead_updated,
)
from services.sla_clock.projection import PROJECTION
from services.sla_clock.tables import leads, timers
from shared import metrics
from shared.clock import ManualClock
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig, apply_config
from shared.db import make_engine
from shared.events import (
    CloudEvent,
    Disposition,
    LeadQueued,
    LeadReassigned,
    LeadUpdated,
    Received,
    new_event,
)
from shared.eventstore import ConcurrencyConflict, retry_on_conflict
from shared.replay import rebuild
from shared.runtime import ServiceContext
from shared.settings import Settings
from tests.integration.own_database import fresh_database
from tests.integration.test_sla_clock_db import assigned, received
from tests.integration.test_sla_lifecycle_db import activity
from tests.support import eventually

CONFIG = """
owners: [{id: alice}, {id: bob}]
sla_policies:
  - id: full
    filter: {tiers: [A]}
    on_reassign: reset
    metrics:
      first_response: {target: 5m, warn_at: [50]}
      next_action: {target: 1h, touches: 2, warn_at: [50]}
      qualification: {target: 1d, warn_at: []}
  - id: fast
    filter: {tiers: [S]}
    metrics:
      first_response: {target: 2m, warn_at: [50]}
      qualification: {target: 1d, warn_at: []}
  - id: slow
    filter: {tiers: [B, C]}
    start_on: received
    metrics: {first_response: {target: 30m, warn_at: [25, 75]}}
"""


@pytest.fixture(scope="module")
async def own_database(postgres_server_url: str) -> AsyncIterator[str]:
    async with fresh_database(postgres_server_url, "leadsla_sla_replay") as database:
        async with database.engine.begin() as conn:
            await apply_config(conn, CONFIG)
        yield database.url


@dataclass
class Clock:
    ctx: ServiceContext
    engine: AsyncEngine
    url: str

    async def handle(self, fn, event: CloudEvent) -> None:
        cfg, now = self.ctx.config.config, self.ctx.clock.now()

        async def command() -> None:
            async with self.ctx.uow() as uow:
                await fn(PostgresClockStore(uow), Received.of(event), SlaDeps(cfg, 1, now))
                await uow.commit()

        await retry_on_conflict(command)

    async def fire(self) -> None:
        async with self.ctx.uow() as uow:
            now = self.ctx.clock.now()
            await fire_due(PostgresClockStore(uow), self.ctx.config.config, now, seen=now)
            await uow.commit()

    async def later(self, **delta: float) -> None:
        self.ctx.clock.advance(timedelta(**delta))
        await self.fire()


@pytest.fixture(scope="module")
async def sla(own_database: str, producer, kafka_bootstrap: str) -> AsyncIterator[Clock]:
    engine = make_engine(own_database)
    clock = ManualClock(datetime(2026, 11, 17, 9, 0, tzinfo=UTC))
    ctx = ServiceContext(name="sla_clock", settings=Settings(database_url=own_database, kafka_bootstrap=kafka_bootstrap),
                         engine=engine, producer=producer, clock=clock,
                         config=ConfigHolder(engine, VersionedConfig(1, parse_config(CONFIG))),
                         relay_wakeup=asyncio.Event(), projection=PROJECTION)
    yield Clock(ctx, engine, own_database)
    await engine.dispose()


def with_tier(event: CloudEvent, tier: str) -> CloudEvent:
    return event.model_copy(update={"data": {**event.data, "tier": tier}})


async def new_lead(sla: Clock, tier: str = "A", owner: str | None = "alice") -> str:
    lead_id = str(uuid.uuid4())
    now = sla.ctx.clock.now()
    await sla.handle(on_lead_received, with_tier(received(lead_id, now), tier))
    if owner is not None:
        await sla.handle(on_lead_assigned, with_tier(assigned(lead_id, now, owner), tier))
    return lead_id


async def traffic(sla: Clock) -> list[str]:
    """Every path the clock has: warnings and breaches, touches, a cadence run to its end, pause and
    resume, opt-out, disqualification, a queued lead assigned later, reassignments (reset and
    continue), re-plans on tier changes (also of a paused lead), leads arriving out of order."""
    now = sla.ctx.clock.now
    missed, touched, cadence, paused, opted, disq = [await new_lead(sla) for _ in range(6)]
    queued, moved, kept, upgraded, downgraded = (await new_lead(sla, owner=None), await new_lead(sla),
                                                 await new_lead(sla, "B"), await new_lead(sla, "B"),
                                                 await new_lead(sla, "S"))
    overtaken = str(uuid.uuid4())  # its assignment arrives before it
    await sla.handle(on_lead_assigned, assigned(overtaken, now()))
    await sla.handle(on_lead_queued, new_event("lead.queued", service="router", lead_id=queued, time=now(),
                                               data=LeadQueued(lead_id=queued, tier="A", queue="q",
                                                               reason="at_capacity")))
    await sla.later(minutes=1)
    await sla.handle(on_activity, activity(touched, now()))
    await sla.handle(on_activity, activity(cadence, now()))
    await sla.handle(on_activity, activity(paused, now(), "pause", None))
    await sla.handle(on_activity, activity(opted, now(), "opt_out", None))
    await sla.handle(on_activity, activity(disq, now(), "disposition", None,
                                           disposition=Disposition(status="disqualified")))
    await sla.handle(on_lead_received, received(overtaken, now()))
    await sla.later(minutes=2)  # warnings
    await sla.handle(on_lead_reassigned, new_event(
        "lead.reassigned", service="router", lead_id=moved, time=now(),
        data=LeadReassigned(lead_id=moved, from_owner_id="alice", to_owner_id="bob", reason="manual",
                            assignment_no=2)))
    await sla.handle(on_lead_reassigned, new_event(
        "lead.reassigned", service="router", lead_id=kept, time=now(),
        data=LeadReassigned(lead_id=kept, from_owner_id="alice", to_owner_id="bob", reason="manual",
                            assignment_no=2)))
    for lead_id, tier, before in ((upgraded, "S", "B"), (downgraded, "B", "S"), (paused, "S", "A")):
        await sla.handle(on_lead_updated, new_event(
            "lead.updated", service="intake", lead_id=lead_id, time=now(),
            data=LeadUpdated(lead_id=lead_id, changed={"tier": {"old": before, "new": tier}}, tier=tier,
                             previous_tier=before, reason="upgraded")))
    await sla.later(minutes=3)  # breaches
    await sla.handle(on_activity, activity(queued, now()))
    await sla.handle(on_lead_assigned, assigned(queued, now(), "bob"))
    await sla.handle(on_activity, activity(cadence, now(), "call", "no_answer"))
    await sla.later(minutes=40)  # follow-up warnings
    await sla.handle(on_activity, activity(paused, now(), "resume", None))
    await sla.handle(on_activity, activity(cadence, now(), "email", None))  # the cadence's last touch
    await sla.later(hours=2)
    await sla.later(days=2)
    return [missed, touched, cadence, paused, opted, disq, queued, moved, kept, upgraded, downgraded, overtaken]


async def test_traffic_through_the_handlers_rebuilds_to_the_same_timers_and_leads(sla: Clock) -> None:
    lead_ids = await traffic(sla)
    async with sla.engine.connect() as conn:
        states = dict((await conn.execute(
            select(timers.c.state, func.count()).where(timers.c.lead_id.in_(lead_ids)).group_by(timers.c.state)
        )).tuples().all())
    # The traffic reached every kind of ending, so the comparison below covers them.
    assert {"met", "breached", "cancelled"} <= set(states), states

    result = await rebuild(sla.engine, PROJECTION, verify=True)
    assert result.differences == {}, result.examples
    assert result.events > 0


async def test_verify_reports_a_damaged_timer_and_a_rebuild_repairs_it(sla: Clock) -> None:
    lead_id = await new_lead(sla)
    async with sla.engine.begin() as conn:
        await conn.execute(update(timers).where(timers.c.lead_id == lead_id, timers.c.metric == "first_response")
                           .values(due_at=timers.c.due_at + timedelta(hours=1)))
    damaged = await rebuild(sla.engine, PROJECTION, verify=True)
    assert damaged.differences == {"timers": 2}  # the live row, and the row a rebuild gives
    assert any(lead_id in example for example in damaged.examples["timers"])

    await rebuild(sla.engine, PROJECTION, verify=False)
    assert (await rebuild(sla.engine, PROJECTION, verify=True)).differences == {}


async def test_the_replay_command_restores_deleted_timers_and_leads(sla: Clock) -> None:
    await traffic(sla)
    async with sla.engine.connect() as conn:
        before = {t.name: (await conn.execute(select(t).order_by(*t.primary_key.columns))).all()
                  for t in (timers, leads)}
    async with sla.engine.begin() as conn:
        await conn.execute(delete(timers))
        await conn.execute(delete(leads).where(leads.c.lead_id.in_(
            select(leads.c.lead_id).limit(5).scalar_subquery())))
    leadsla = str(Path(sys.executable).parent / "leadsla")
    process = await asyncio.create_subprocess_exec(
        leadsla, "replay", "sla_clock", env={**os.environ, "LEADSLA_DATABASE_URL": sla.url,
                                                  # this checkout's code, whichever is installed
                                                  "PYTHONPATH": str(Path(__file__).parents[2])},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0 and "events/s" in out.decode(), out.decode()
    async with sla.engine.connect() as conn:
        after = {t.name: (await conn.execute(select(t).order_by(*t.primary_key.columns))).all()
                 for t in (timers, leads)}
    assert after == before


async def test_an_assignment_racing_the_receipt_of_its_lead_conflicts_and_is_retried_from_fresh_state(
    sla: Clock,
) -> None:
    """lead.received and lead.assigned come on two topics, so two consumers may take them at once.
    The assignment, not seeing the lead yet, would note it with what it knows (source unknown) over
    the receipt's facts; its stream moved, so it conflicts and runs again on the received lead."""
    lead_id, now = str(uuid.uuid4()), sla.ctx.clock.now()
    deps = SlaDeps(sla.ctx.config.config, 1, now)
    attempts: list[str] = []

    async def assign() -> None:
        async with sla.ctx.uow() as uow:
            try:
                await on_lead_assigned(PostgresClockStore(uow), Received.of(assigned(lead_id, now)), deps)
                await uow.commit()
                attempts.append("committed")
            except ConcurrencyConflict:
                attempts.append("conflict")
                raise

    async with sla.ctx.uow() as first:
        await on_lead_received(PostgresClockStore(first), Received.of(received(lead_id, now)), deps)
        racing = asyncio.create_task(retry_on_conflict(assign))
        await eventually(lambda: _waiting_on_a_lock(sla.engine), what="the assignment to wait for the receipt")
        await first.commit()
    await racing

    assert attempts == ["conflict", "committed"]
    async with sla.engine.connect() as conn:
        lead = (await conn.execute(select(leads).where(leads.c.lead_id == lead_id))).one()
        started = await conn.scalar(select(func.count()).select_from(timers).where(timers.c.lead_id == lead_id))
    assert (lead.source, lead.owner_id, started) == ("web", "alice", 2)
    assert (await rebuild(sla.engine, PROJECTION, verify=True)).differences == {}


async def _waiting_on_a_lock(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")))


def breaches_counted(tier: str) -> float:
    [family] = metrics.sla_breaches.collect()
    return sum(s.value for s in family.samples
               if s.name.endswith("_total") and s.labels["tier"] == tier and s.labels["metric"] == "first_response")


async def test_a_breach_is_counted_once_it_has_committed_and_never_for_a_rolled_back_attempt(sla: Clock) -> None:
    lead_id = await new_lead(sla, "C")  # tier C: this test's own label
    due = sla.ctx.clock.now() + timedelta(minutes=30)
    before = breaches_counted("C")
    async with sla.ctx.uow() as uow:
        assert await fire_due(PostgresClockStore(uow), sla.ctx.config.config, due, seen=due) >= 1
        # rolled back: a replica lost its database, say
    assert breaches_counted("C") == before
    async with sla.ctx.uow() as uow:
        await fire_due(PostgresClockStore(uow), sla.ctx.config.config, due, seen=due)
        assert breaches_counted("C") == before  # decided, not yet committed
        await uow.commit()
    assert breaches_counted("C") == before + 1
    async with sla.engine.connect() as conn:
        assert await conn.scalar(select(timers.c.state).where(timers.c.lead_id == lead_id)) == "breached"
