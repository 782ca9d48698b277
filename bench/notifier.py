"""The notifier under a storm, against real local receivers.

    python bench/notifier.py [--events 2000]

Starts an embedded PostgreSQL (or uses LEADSLA_TEST_DATABASE_URL) and prints:
  storm         N breaches of one manager's team -> escalations planned (one tx per event, as the
                consumer runs them), fired, and the Slack messages the manager actually gets
  subscriptions N lead.assigned events over 100 leads -> signed POSTs to a local CRM receiver
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))

from leadsla.devstack import EmbeddedPostgres  # noqa: E402
from services.notifier.channels import Senders  # noqa: E402
from services.notifier.delivery import Deliverer  # noqa: E402
from services.notifier.domain import SubscriptionCreated  # noqa: E402
from services.notifier.handlers import HANDLERS, NotifierDeps, record  # noqa: E402
from services.notifier.projection import PROJECTION  # noqa: E402
from shared.clock import ManualClock, SystemClock  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.db import make_engine  # noqa: E402
from shared.events import LeadAssigned, SlaBreached, new_event  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.uow import UnitOfWork  # noqa: E402
from tests.integration.receivers import HttpReceiver, SlackLikeReceiver  # noqa: E402
from tests.support import handle_event  # noqa: E402

CONFIG = """
owners: [{id: alice, manager_id: maria}, {id: maria}]
channels:
  team-slack: {type: slack, url_env: BENCH_SLACK_URL}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps: [{step: 1, notify: [manager], channels: [team-slack]}]
notifier: {digest: {window: 5m, after: 10}}
"""


async def database(url: str | None) -> tuple[str, EmbeddedPostgres | None]:
    server = None
    if url is None:
        server = EmbeddedPostgres(Path(tempfile.mkdtemp()) / "pg")
        url = server.start()
    name = f"leadsla_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return make_url(url).set(database=name).render_as_string(hide_password=False), server


async def main(events: int) -> None:
    url, server = await database(os.environ.get("LEADSLA_TEST_DATABASE_URL"))
    engine = make_engine(url)
    await upgrade(engine)
    config = parse_config(CONFIG)
    clock = ManualClock(datetime.now(UTC))
    uow = lambda: UnitOfWork(engine, "notifier", projection=PROJECTION)  # noqa: E731
    try:
        with SlackLikeReceiver() as slack, HttpReceiver() as crm:
            os.environ["BENCH_SLACK_URL"] = slack.url
            async with httpx.AsyncClient() as http:
                deliverer = Deliverer(uow, lambda: config, Senders(http, engine, lambda: config), clock)
                started = time.perf_counter()
                for i in range(events):
                    lead_id = f"storm-{i}"
                    async with uow() as u:
                        await handle_event(HANDLERS, u, new_event("sla.breached", service="sla_clock", lead_id=lead_id,
                                       time=clock.now(), data=SlaBreached(
                                           lead_id=lead_id, sla_id=lead_id, metric="first_response", policy_id="p",
                                           policy_version=1, owner_id="alice", due_at=clock.now(),
                                           breached_at=clock.now(), root_cause="owner_missed")), NotifierDeps(config, clock.now()))
                        await u.commit()
                planned = time.perf_counter() - started
                started = time.perf_counter()
                while await deliverer.run_once():
                    pass
                fired = time.perf_counter() - started
                clock.advance(timedelta(minutes=5))
                while await deliverer.run_once():
                    pass
                print(f"storm: {events} breaches planned at {events / planned:,.0f}/s, "
                      f"fired at {events / fired:,.0f}/s; the manager got {len(slack.payloads)} Slack messages")
                print("BENCH " + json.dumps({"notifier_storm_planned_per_s": round(events / planned, 1),
                                             "notifier_storm_fired_per_s": round(events / fired, 1),
                                             "notifier_storm_messages_to_manager": len(slack.payloads)}))

                clock = SystemClock()  # the storm moved the manual clock ahead; CRM deliveries run on real time
                crm.secret = b"bench-secret-0123456789"
                async with uow() as u:
                    await record(u, SubscriptionCreated(
                        subscription_id="bench", url=crm.url, event_types=["lead.assigned"],
                        secret="bench-secret-0123456789", created_at=clock.now()), time=clock.now(), stream="bench")
                    await u.commit()
                for i in range(events):
                    lead_id = f"crm-{i % 100}"
                    async with uow() as u:
                        await handle_event(HANDLERS, u, new_event("lead.assigned", service="router", lead_id=lead_id,
                                       time=clock.now(), data=LeadAssigned(
                                           lead_id=lead_id, owner_id="alice", team_id=None, rule_id=None,
                                           method="round_robin", reason="rule", assignment_no=i, candidates=[],
                                           assigned_at=clock.now())), NotifierDeps(config, clock.now()))
                        await u.commit()
                live = Deliverer(uow, lambda: config, Senders(http, engine, lambda: config), clock)
                started = time.perf_counter()
                while len(crm.received) < events:
                    if not await live.start_round():
                        await asyncio.sleep(0.05)
                await live.drain()
                sent = time.perf_counter() - started
                print(f"subscriptions: {events} signed CloudEvents over 100 leads delivered at {events / sent:,.0f}/s "
                      f"(in order per lead: one in flight per lead)")
                print("BENCH " + json.dumps({"notifier_subscription_deliveries_per_s": round(events / sent, 1)}))
    finally:
        await engine.dispose()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    asyncio.run(main(parser.parse_args().events))
