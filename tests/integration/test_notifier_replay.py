"""The notifier's state tables are a projection of its own event store: after realistic traffic
(escalation chains fired and stopped, retries, failures, a crash mid-delivery, a storm's digest,
CRM subscriptions created, deleted and redelivered, a lead's news held for its lead.received,
retention), a rebuild from the store equals the live tables; verify notices a damaged row; and
`leadsla replay notifier` restores deleted rows.

The scenario runs in a database of its own: other modules' fixtures tidy the shared one by
writing tables directly, which a replay would rightly report."""
from __future__ import annotations

import asyncio
import importlib
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.notifier.bootstrap import bootstrap
from services.notifier.channels import Senders
from services.notifier.delivery import Deliverer, prune_delivered
from services.notifier.domain import HOLD_FOR_RECEIVED
from services.notifier.handlers import HANDLERS, NotifierDeps
from services.notifier.projection import PROJECTION
from services.notifier.tables import deliveries, escalations, leads, subscription_deliveries
from shared.auth import create_key
from shared.clock import ManualClock
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig
from shared.events import (
    Company,
    Consent,
    Contact,
    Intent,
    LeadAssigned,
    LeadReassigned,
    LeadReceived,
    LeadUpdated,
    SlaBreached,
    SlaMet,
    new_event,
)
from shared.http import create_app
from shared.replay import rebuild
from shared.runtime import ServiceContext
from shared.settings import Settings
from tests.integration.own_database import fresh_database
from tests.integration.receivers import HttpReceiver, SlackLikeReceiver
from tests.support import handle_event

MIGRATION_0013 = importlib.import_module("shared.migrations.versions.0013_notacc_delivery_tries")
SECRET = "notifier-replay-secret"
SLACK_ENV = "LEADSLA_TEST_REPLAY_SLACK_URL"


def night_zone(now: datetime) -> str:
    """A whole-hour zone where it is 03:xx now (receivers check signatures against the real time,
    so the scenario runs now; the manager is to be asleep)."""
    offset = (3 - now.hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return f"Etc/GMT{-offset:+d}"  # POSIX sign: Etc/GMT-5 is UTC+5


def config(hook: HttpReceiver, now: datetime) -> str:
    day = '["09:00-17:30"]'
    return f"""
calendars:
  night: {{timezone: {night_zone(now)}, hours: {{mon: {day}, tue: {day}, wed: {day}, thu: {day}, fri: {day},
                                             sat: {day}, sun: {day}}}}}
owners: [{{id: alice, manager_id: maria}}, {{id: bob, manager_id: maria}}, {{id: maria, calendar: night}}, {{id: ops}}]
lead_ops: [ops]
channels:
  hook: {{url: "{hook.url}", secret: "{SECRET}", max_attempts: 3}}
  team-slack: {{type: slack, url_env: {SLACK_ENV}}}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps:
      - {{step: 1, notify: [owner], channels: [hook]}}
      - {{step: 2, after: 15m, notify: [manager], channels: [team-slack]}}
      - {{step: 3, after: 30m, notify: [lead_ops], channels: [hook]}}
notifier: {{subscription_max_attempts: 2, digest: {{window: 5m, after: 5}}, quiet_hours: {{urgent_tiers: [A]}}}}
"""


@dataclass
class Traffic:
    engine: AsyncEngine
    database_url: str
    lead_ids: list[str]


def received(lead_id: str, now: datetime, tier: str = "B"):
    return new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
        lead_id=lead_id, source="webform", tier=tier, contact=Contact(first_name="Ada", last_name="Byron"),
        company=Company(name="Analytical"), intent=Intent(type="demo_request"), consent=Consent(),
        contactable=True, received_at=now))


def assigned(lead_id: str, now: datetime, owner: str = "alice"):
    return new_event("lead.assigned", service="router", lead_id=lead_id, time=now, data=LeadAssigned(
        lead_id=lead_id, owner_id=owner, team_id="sdr", rule_id="r", method="round_robin", reason="rule",
        assignment_no=1, candidates=[], assigned_at=now, tier="B"))


def sla(kind, lead_id: str, now: datetime, tier: str = "B"):
    cls = SlaBreached if kind == "breached" else SlaMet
    return new_event(f"sla.{kind}", service="sla_clock", lead_id=lead_id, time=now, data=cls(
        lead_id=lead_id, sla_id=f"sla-{lead_id}", metric="first_response", policy_id="p", policy_version=1,
        owner_id="alice", due_at=now, tier=tier, breached_at=now if kind == "breached" else None,
        root_cause="owner_missed" if kind == "breached" else None))


@pytest.fixture(scope="module")
async def traffic(postgres_server_url: str, producer) -> Traffic:
    async with fresh_database(postgres_server_url, "leadsla_notifier_replay") as own:
        database_url, engine = own.url, own.engine
        clock = ManualClock(datetime.now(UTC))
        with HttpReceiver(SECRET) as hook, HttpReceiver() as crm, HttpReceiver() as other, \
                SlackLikeReceiver() as slack:
            os.environ[SLACK_ENV] = slack.url
            ctx = ServiceContext(name="notifier", settings=Settings(database_url=database_url), engine=engine,
                                 producer=producer, clock=clock, projection=PROJECTION, relay_wakeup=asyncio.Event(),
                                 config=ConfigHolder(engine, VersionedConfig(1, parse_config(config(hook, clock.now())))))
            app = create_app(ctx, bootstrap(ctx).routers)
            async with engine.begin() as conn:
                admin_key = await create_key(conn, "crm-admin", "admin")
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier",
                                         headers={"Authorization": f"Bearer {admin_key}"}) as api, \
                    httpx.AsyncClient() as http:
                async def subscribe(receiver: HttpReceiver, types: list[str]) -> str:
                    response = await api.post("/v1/subscriptions", json={"url": receiver.url, "event_types": types})
                    assert response.status_code == 201, response.text
                    receiver.secret = response.json()["secret"].encode()
                    return response.json()["id"]

                await subscribe(crm, ["lead.*", "sla.*"])
                with HttpReceiver() as gone:
                    pass
                dead = await subscribe(gone, ["lead.assigned"])
                dropped = await subscribe(other, ["sla.breached"])

                async def consume(*events) -> None:
                    for event in events:
                        async with ctx.uow() as uow:
                            await handle_event(HANDLERS, uow, event, NotifierDeps(ctx.config.config, clock.now()))
                            await uow.commit()

                deliverer = Deliverer(ctx.uow, lambda: ctx.config.config,
                                      Senders(http, engine, lambda: ctx.config.config), clock, jitter=lambda: 0.5)
                crashed = Deliverer(ctx.uow, lambda: ctx.config.config,
                                    Senders(http, engine, lambda: ctx.config.config), clock, jitter=lambda: 0.5)

                lead_ids = [str(uuid.uuid4()) for _ in range(6)]
                now = clock.now()
                # Assignments read before their lead.received (held), one lead never received.
                await consume(*(assigned(lead_id, now + timedelta(milliseconds=5)) for lead_id in lead_ids))
                await consume(*(received(lead_id, now, tier="A" if i == 0 else "B")
                                for i, lead_id in enumerate(lead_ids[:-1])))
                await consume(new_event("lead.updated", service="intake", lead_id=lead_ids[1], time=now,
                                        data=LeadUpdated(lead_id=lead_ids[1], changed={}, tier="A", previous_tier="B",
                                                         reason="upgraded")),
                              new_event("lead.reassigned", service="router", lead_id=lead_ids[2], time=now,
                                        data=LeadReassigned(lead_id=lead_ids[2], from_owner_id="alice",
                                                            to_owner_id="bob", reason="manual", assignment_no=2)))
                hook.statuses = [503, 410]  # a retry, and a delivery that fails at once
                await consume(*(sla("breached", lead_id, now, tier="A" if i == 0 else "B")
                                for i, lead_id in enumerate(lead_ids[:5])))
                await deliverer.run_once()
                clock.advance(timedelta(seconds=2))
                await deliverer.run_once()

                # A crash between send and record: the lease expires and a survivor sends it again.
                await consume(sla("breached", lead_ids[5], clock.now()))
                await crashed.fire(clock.now())
                leased = await crashed.lease(clock.now())
                await crashed.send(leased, clock.now())
                clock.advance(timedelta(seconds=ctx.config.config.notifier.lease_seconds))
                await deliverer.run_once()
                await crashed.record(leased, await crashed.send(leased, clock.now()), clock.now())  # too late

                assert (await api.delete(f"/v1/subscriptions/{dropped}")).status_code == 204
                clock.advance(timedelta(minutes=15))  # step 2: the manager, asleep: held (tier B), then digested
                for _ in range(3):
                    await deliverer.run_once()
                    clock.advance(timedelta(seconds=30))
                await consume(sla("met", lead_ids[3], clock.now()))  # its held message and step 3 are dropped
                clock.advance(HOLD_FOR_RECEIVED)  # the lead never received goes at last
                await deliverer.run_once()
                assert (await api.post(f"/v1/subscriptions/{dead}/redeliver")).json()["requeued"] > 0
                await deliverer.run_once()
                clock.advance(timedelta(minutes=15))  # step 3: lead ops
                await deliverer.run_once()
                async with ctx.uow() as uow:  # retention, with a cut-off that takes what is done so far
                    assert await prune_delivered(uow, clock.now() - timedelta(minutes=30), clock.now()) > 0
                    await uow.commit()
                await consume(received(str(uuid.uuid4()), clock.now()), assigned(lead_ids[0], clock.now(), "bob"))
                await deliverer.run_once()
                # (the later sends are refused: signatures older than 5 min of real time; failures are traffic too)
                assert sum(ok for _, ok in crm.received) > 10 and hook.received and slack.payloads
        os.environ.pop(SLACK_ENV, None)
        yield Traffic(engine, database_url, lead_ids)


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {t.name: await conn.scalar(select(func.count()).select_from(t)) for t in PROJECTION.tables}


async def test_a_rebuild_from_the_store_equals_the_live_tables_after_realistic_traffic(traffic: Traffic) -> None:
    result = await rebuild(traffic.engine, PROJECTION, verify=True)
    assert result.differences == {}, result.examples
    found = await counts(traffic.engine)
    assert all(found[t] > 0 for t in found), found  # every table took part
    async with traffic.engine.connect() as conn:
        states = set((await conn.execute(select(deliveries.c.state).distinct())).scalars())
        crm_states = set((await conn.execute(select(subscription_deliveries.c.state).distinct())).scalars())
    assert {"sent", "failed", "cancelled"} <= states and "failed" in crm_states  # the sent ones were pruned


async def test_verify_reports_a_damaged_row_and_a_rebuild_repairs_it(traffic: Traffic) -> None:
    async with traffic.engine.begin() as conn:
        await conn.execute(update(escalations).where(escalations.c.lead_id == traffic.lead_ids[3],
                                                     escalations.c.step == 3).values(cancelled_at=None))
        await conn.execute(update(deliveries).where(deliveries.c.lead_id == traffic.lead_ids[1])
                           .values(attempts=deliveries.c.attempts + 7))
    result = await rebuild(traffic.engine, PROJECTION, verify=True)
    assert set(result.differences) == {"escalations", "deliveries"}
    assert result.differences["escalations"] == 2  # the live row and the rebuilt one
    await rebuild(traffic.engine, PROJECTION, verify=False)
    assert (await rebuild(traffic.engine, PROJECTION, verify=True)).differences == {}


async def test_the_replay_command_restores_deleted_rows(traffic: Traffic) -> None:
    before = await counts(traffic.engine)
    async with traffic.engine.begin() as conn:
        await conn.execute(delete(leads))
        await conn.execute(delete(subscription_deliveries).where(subscription_deliveries.c.state == "sent"))
        await conn.execute(delete(deliveries))
    leadsla = str(Path(sys.executable).parent / "leadsla")
    # This tree's code, also when the installed package points at another checkout.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "LEADSLA_DATABASE_URL": traffic.database_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}

    async def run(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(leadsla, "replay", "notifier", *args, env=env,
                                                       stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
        return process.returncode, out.decode()

    code, out = await run("--verify")
    assert code == 1 and "leads" in out, out
    code, out = await run()
    assert code == 0 and "events/s" in out, out
    assert await counts(traffic.engine) == before
    code, out = await run("--verify")
    assert code == 0 and "matches" in out, out


async def test_migration_0013_backfills_each_deliverys_last_try_as_a_rebuild_would(traffic: Traffic) -> None:
    # A database with deliveries from before `tried_at` existed: backfilled from sent_at only, the
    # failed and retrying ones were left empty and `replay notifier --verify` exited 1.
    async with traffic.engine.begin() as conn:
        await conn.execute(update(deliveries).values(tried_at=None))
        await conn.execute(text(MIGRATION_0013.BACKFILL))
        tried = await conn.scalar(select(func.count()).select_from(deliveries).where(deliveries.c.tried_at.is_not(None)))
    assert tried > 0
    assert (await rebuild(traffic.engine, PROJECTION, verify=True)).differences == {}
