"""Issue 5.3's experiment, rerun: leads with a short first-response target, half of them touched in
time, while a fault spans their deadlines. Counts the breaches blamed on a person although the lead
was touched in time (the false breaches), and the breach lag of the leads nobody touched.

    python bench/sla_chaos.py [--leads 200] [--fault freeze|kill] [--seconds 30]

freeze: the broker is SIGSTOPped from before the touches until `--seconds` later, across every
        deadline (intake accepts the touches meanwhile; nothing reaches the bus).
kill:   sla_clock is SIGKILLed before the touches and restarted `--seconds` later.
none:   no fault: the breach lag is then the cost of waiting for the watermark.
Intake, router and sla_clock run as `leadsla serve` processes on an embedded broker and Postgres.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).parents[1]))

from leadsla.devstack import EmbeddedBroker, EmbeddedPostgres, ServiceProcess, free_port, wait_until  # noqa: E402
from leadsla.services.sla_clock.tables import timers  # noqa: E402
from leadsla.shared.auth import create_key  # noqa: E402
from leadsla.shared.bus import ensure_topics  # noqa: E402
from leadsla.shared.config_store import apply_config  # noqa: E402
from leadsla.shared.db import make_engine  # noqa: E402
from leadsla.shared.migrate import upgrade  # noqa: E402

TARGET = 40  # seconds: room to post every lead and touch before the first deadline
CONFIG = """
owners: [{id: alice}, {id: bob}]
teams: [{id: sdr, members: [alice, bob]}]
routing: {rules: [{id: inbound, team: sdr}]}
sla_policies: [{id: chaos, metrics: {first_response: {target: %ds, warn_at: []}}}]
"""


async def main(n: int, fault: str, seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="leadsla-chaos-"))
    pg, broker = EmbeddedPostgres(tmp / "pg"), EmbeddedBroker()
    url = pg.start()
    broker.start()
    engine = make_engine(url)
    services: dict[str, ServiceProcess] = {}
    try:
        await upgrade(engine)
        await ensure_topics(broker.bootstrap, 6)
        async with engine.begin() as conn:
            await apply_config(conn, CONFIG % TARGET)
            key = await create_key(conn, "chaos", "source")
        env = {"LEADSLA_DATABASE_URL": url, "LEADSLA_KAFKA_BOOTSTRAP": broker.bootstrap,
               "LEADSLA_TIMER_POLL_SECONDS": "0.2"}
        services = {name: ServiceProcess(name, free_port(), env, tmp / f"{name}.log")
                    for name in ("intake", "router", "sla_clock")}
        for s in services.values():
            s.start()
        wait_until(lambda: all(s.ready() for s in services.values()), 120, "services ready", 0.2)
        auth = {"Authorization": f"Bearer {key}"}
        intake = services["intake"].url
        async with httpx.AsyncClient(timeout=30) as client:
            leads = []
            started = time.time()
            for _ in range(n):
                r = await client.post(f"{intake}/v1/leads", headers=auth, json={
                    "contact": {"email": f"{uuid.uuid4().hex[:12]}@example.com"}, "intent": {"type": "demo"}})
                leads.append(r.json()["lead_id"])
            posted = time.time() - started
            # Wait for every timer to start (routing and the clock are through the bus).
            async def started_count() -> int:
                async with engine.connect() as conn:
                    return len((await conn.execute(select(timers.c.sla_id))).all())
            deadline = time.time() + 120
            while await started_count() < n and time.time() < deadline:
                await asyncio.sleep(0.2)
            async with engine.connect() as conn:
                first_due = (await conn.execute(select(timers.c.due_at).order_by(timers.c.due_at).limit(1))).scalar()
            fault_on(fault, broker, services, True)
            fault_started = time.time()
            touched = set(leads[::2])
            for lead_id in touched:
                r = await client.post(f"{intake}/v1/leads/{lead_id}/activities", headers=auth,
                                      json={"type": "call", "actor": "alice", "outcome": "connected"})
                assert r.status_code == 202, r.text
            touches_done = time.time()
            late_touches = touches_done > first_due.timestamp()
            await asyncio.sleep(max(seconds - (time.time() - fault_started), 0))
            fault_on(fault, broker, services, False)
            # Every timer closes: met, or breached with its root cause.
            deadline = time.time() + 300
            while time.time() < deadline:
                async with engine.connect() as conn:
                    rows = (await conn.execute(select(timers.c.lead_id, timers.c.state, timers.c.root_cause,
                                                      timers.c.due_at, timers.c.closed_at))).all()
                if len(rows) >= n and all(r.state != "open" for r in rows):
                    break
                await asyncio.sleep(0.5)
        outcomes = Counter((r.lead_id in touched, r.state, r.root_cause) for r in rows)
        false = sum(c for (t, state, cause), c in outcomes.items() if t and state == "breached" and cause != "system_delay")
        lags = sorted((r.closed_at - r.due_at).total_seconds() for r in rows
                      if r.lead_id not in touched and r.state == "breached")
        print(f"{n} leads, fault={fault} for {seconds:.0f}s across the deadlines (target {TARGET}s); "
              f"posted in {posted:.1f}s; touches all accepted before the first deadline: {not late_touches}")
        for (was_touched, state, cause), count in sorted(outcomes.items(), key=str):
            print(f"  {'touched  ' if was_touched else 'untouched'} {state:9} {cause or '':13} {count}")
        print(f"  touched in time but breached on a person: {false}")
        if lags:
            print(f"  untouched breach lag (closed_at - due_at): p50 {statistics.median(lags):.1f}s "
                  f"p99 {lags[int(0.99 * (len(lags) - 1))]:.1f}s max {lags[-1]:.1f}s")
    finally:
        if broker._proc is not None:  # noqa: SLF001 - never leave it frozen
            os.kill(broker._proc.pid, signal.SIGCONT)  # noqa: SLF001
        for s in services.values():
            s.stop()
        await engine.dispose()
        broker.stop()
        pg.stop()


def fault_on(fault: str, broker: EmbeddedBroker, services: dict[str, ServiceProcess], on: bool) -> None:
    if fault == "none":
        return
    if fault == "freeze":
        os.kill(broker._proc.pid, signal.SIGSTOP if on else signal.SIGCONT)  # noqa: SLF001
    elif on:
        services["sla_clock"].kill()
    else:
        services["sla_clock"].start()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--leads", type=int, default=200)
    parser.add_argument("--fault", choices=["freeze", "kill", "none"], default="freeze")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    asyncio.run(main(args.leads, args.fault, args.seconds))
