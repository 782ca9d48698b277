"""The fault experiment behind the README's reliability figures.

Runs the five services as processes on an embedded Postgres and the Tansu broker, sends leads
over HTTP (half of them touched well before their deadline), and during the window where the
touches and deadlines fall injects one fault: the broker frozen (SIGSTOP) for 30 s, Postgres
stopped or frozen (SIGSTOP: its connections stay open, nothing answers) for 30 s, intake killed
(kill -9) for 30 s, or kill -9 of random services. Senders behave like real ones: a 503 is retried
after Retry-After, and a touch keeps the time the call happened (`occurred_at`).

Then it reads sla_clock's events and counts, per fault, the touched leads that were breached
and blamed on a person (the defect), breaches with root cause `system_delay`, and how late the
untouched leads' breaches left.

    python bench/faults.py [--leads 200] [--target 20] [--fault none,freeze-broker,stop-postgres,freeze-postgres,kill-intake,kill]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from leadsla.devstack import EmbeddedBroker, EmbeddedPostgres, ServiceProcess, free_port, wait_until
from shared.auth import create_key
from shared.config_store import apply_config
from shared.db import make_engine
from shared.migrate import upgrade
from shared.settings import SERVICE_PORTS

CONFIG = """
tiers:
  default: A
owners:
  - {id: alice, manager_id: maria}
  - {id: bob, manager_id: maria}
  - {id: maria}
teams: [{id: sdr, members: [alice, bob]}]
routing:
  rules: [{id: inbound, team: sdr}]
sla_policies:
  - {id: fast, filter: {tiers: [A]}, calendar: always, metrics: {first_response: {target: %(target)ds, warn_at: []}}}
"""
PERSON = {"owner_missed", "no_owner", "capacity", "off_hours_coverage", "missing_data"}


@dataclass
class Lead:
    sent_at: float
    touch: bool
    lead_id: str | None = None
    touched_at: datetime | None = None


@dataclass
class Run:
    fault: str
    leads: list[Lead] = field(default_factory=list)
    http_503: int = 0
    http_timeouts: int = 0  # the sender gave up waiting (10 s) and tried again
    slowest_answer_s: float = 0.0


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.postgres = EmbeddedPostgres(workdir / "pg")
        self.broker = EmbeddedBroker()
        self.services: dict[str, ServiceProcess] = {}

    async def start(self, target: int, config: str | None = None,
                    extra_env: dict[str, str] | None = None) -> tuple[str, str]:
        """Postgres, broker, schema, `config` (default: CONFIG with `target`), a source key and the
        five services, ready; returns (source key, bootstrap). tests/chaos runs on this too."""
        server_url = self.postgres.start()
        admin = await asyncpg.connect(server_url)
        await admin.execute("DROP DATABASE IF EXISTS faults WITH (FORCE)")
        await admin.execute("CREATE DATABASE faults")
        await admin.close()
        self.database_url = make_url(server_url).set(database="faults").render_as_string(hide_password=False)
        bootstrap = self.broker.start()
        engine = make_engine(self.database_url)
        await upgrade(engine)
        async with engine.begin() as conn:
            await apply_config(conn, config if config is not None else CONFIG % {"target": target})
            key = await create_key(conn, "webform", "source")
        await engine.dispose()
        env = {"LEADSLA_DATABASE_URL": self.database_url, "LEADSLA_KAFKA_BOOTSTRAP": bootstrap,
               "LEADSLA_TOPIC_PARTITIONS": "3", "LEADSLA_TIMER_POLL_SECONDS": "0.2",
               "LEADSLA_KAFKA_SESSION_TIMEOUT_MS": os.environ.get("LEADSLA_KAFKA_SESSION_TIMEOUT_MS", "2000"),
               **(extra_env or {})}
        self.services = {name: ServiceProcess(name, free_port(), env, self.workdir / "logs" / f"{name}.log")
                         for name in SERVICE_PORTS}
        for service in self.services.values():
            service.start()
        wait_until(lambda: all(s.ready() for s in self.services.values()), 120, "five services ready", 0.2)
        return key, bootstrap

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()
        self.broker.stop()
        self.postgres.stop()


async def send_with_retries(client: httpx.AsyncClient, run: Run, url: str, body: dict) -> httpx.Response | None:
    """What a real sender does: retry 503s and connection errors after Retry-After, for a while."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sent = time.monotonic()
        try:
            response = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            run.http_timeouts += isinstance(exc, httpx.TimeoutException)
            await asyncio.sleep(1)
            continue
        finally:
            run.slowest_answer_s = max(run.slowest_answer_s, time.monotonic() - sent)
        if response.status_code != 503:
            return response
        run.http_503 += 1
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
    return None


async def drive(stack: Stack, key: str, run: Run, count: int, target: int) -> None:
    intake = stack.services["intake"].url
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        async def one(lead: Lead, n: int) -> None:
            await asyncio.sleep(max(lead.sent_at - time.monotonic(), 0))
            body = {"contact": {"email": f"f{n}-{uuid.uuid4().hex[:8]}@example.com"}, "intent": {"type": "demo"}}
            response = await send_with_retries(client, run, f"{intake}/v1/leads", body)
            if response is None or response.status_code != 201:
                return
            lead.lead_id = response.json()["lead_id"]
            if lead.touch:
                await asyncio.sleep(max(lead.sent_at + target * 0.5 - time.monotonic(), 0))
                lead.touched_at = datetime.now(UTC)
                await send_with_retries(client, run, f"{intake}/v1/leads/{lead.lead_id}/activities", {
                    "type": "call", "actor": "alice", "outcome": "connected",
                    "occurred_at": lead.touched_at.isoformat()})

        await asyncio.gather(*(one(lead, n) for n, lead in enumerate(run.leads)))


async def inject(stack: Stack, fault: str, at: float, duration: float) -> None:
    await asyncio.sleep(max(at - time.monotonic(), 0))
    if fault == "freeze-broker":
        os.kill(stack.broker._proc.pid, signal.SIGSTOP)  # noqa: SLF001
        await asyncio.sleep(duration)
        os.kill(stack.broker._proc.pid, signal.SIGCONT)  # noqa: SLF001
    elif fault == "stop-postgres":
        await asyncio.to_thread(stack.postgres.stop)
        await asyncio.sleep(duration)
        await asyncio.to_thread(stack.postgres.start)
    elif fault == "freeze-postgres":
        with stack.postgres.frozen():
            await asyncio.sleep(duration)
    elif fault == "kill-intake":  # senders' posts are refused until it is back, then retried
        intake = stack.services["intake"]
        intake.kill()
        await asyncio.sleep(duration)
        intake.start()
    elif fault == "kill":
        end = time.monotonic() + duration
        rng = random.Random(7)
        while time.monotonic() < end:
            victim = stack.services[rng.choice(sorted(stack.services))]
            victim.kill()
            await asyncio.sleep(rng.uniform(1, 4))
            victim.start()
            await asyncio.sleep(rng.uniform(2, 6))


async def audit(database_url: str, run: Run) -> dict:
    conn = await asyncpg.connect(database_url)
    rows = await conn.fetch("SELECT key, event_type, payload FROM sla_clock.events "
                            "WHERE event_type IN ('sla.met', 'sla.breached', 'sla.cancelled') ORDER BY position")
    await conn.close()
    outcome: dict[str, list[dict]] = {}
    for row in rows:
        event = json.loads(row["payload"])
        outcome.setdefault(row["key"], []).append({"type": row["event_type"], "time": event["time"], **event["data"]})
    touched = [lead for lead in run.leads if lead.touch and lead.lead_id]
    untouched = [lead for lead in run.leads if not lead.touch and lead.lead_id]
    blamed = [lead.lead_id for lead in touched if any(
        e["type"] == "sla.breached" and e.get("root_cause") in PERSON for e in outcome.get(lead.lead_id, []))]
    system_delay = sum(1 for events in outcome.values() for e in events
                       if e["type"] == "sla.breached" and e.get("root_cause") == "system_delay")
    met = sum(1 for lead in touched if any(e["type"] == "sla.met" for e in outcome.get(lead.lead_id, [])))
    late = [(datetime.fromisoformat(e["time"]) - datetime.fromisoformat(e["due_at"])).total_seconds()
            for lead in untouched for e in outcome.get(lead.lead_id, []) if e["type"] == "sla.breached"]
    undecided = sum(1 for lead in touched + untouched if not outcome.get(lead.lead_id))
    return {
        "fault": run.fault, "leads_accepted": len(touched) + len(untouched), "touched_in_time": len(touched),
        "met": met, "touched_but_blamed_on_a_person": len(blamed), "system_delay_breaches": system_delay,
        "untouched_breached": len(late), "no_outcome": undecided, "http_503_retried": run.http_503,
        "http_timeouts_retried": run.http_timeouts, "slowest_answer_s": round(run.slowest_answer_s, 1),
        "breach_lateness_p50_s": round(statistics.median(late), 2) if late else None,
        "breach_lateness_max_s": round(max(late), 2) if late else None,
        "blamed_examples": blamed[:5],
    }


async def one_fault(fault: str, count: int, target: int, duration: float, spread: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"leadsla-faults-{fault}-") as tmp:
        stack = Stack(Path(tmp))
        try:
            key, _ = await stack.start(target)
            start = time.monotonic() + 1
            run = Run(fault, [Lead(start + spread * n / count, touch=n % 2 == 0) for n in range(count)])
            fault_at = start + target * 0.4
            await asyncio.gather(drive(stack, key, run, count, target),
                                 inject(stack, fault, fault_at, duration) if fault != "none" else asyncio.sleep(0))
            settle = start + spread + target + duration + 45
            await asyncio.sleep(max(settle - time.monotonic(), 0))
            return await audit(stack.database_url, run)
        finally:
            stack.stop()


async def restart_times() -> dict:
    """Seconds from restart to ready, per service, after SIGTERM and after kill -9."""
    with tempfile.TemporaryDirectory(prefix="leadsla-restart-") as tmp:
        stack = Stack(Path(tmp))
        figures = {}
        try:
            await stack.start(60)
            for name, service in stack.services.items():
                for how, sig in (("sigterm", signal.SIGTERM), ("kill9", signal.SIGKILL)):
                    service.stop(sig)
                    began = time.monotonic()
                    service.start()
                    await asyncio.to_thread(wait_until, service.ready, 120, f"{name} ready", 0.05)
                    figures[f"restart_ready_{how}_{name}_s"] = round(time.monotonic() - began, 2)
        finally:
            stack.stop()
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=200)
    parser.add_argument("--target", type=int, default=20, help="first-response target, seconds")
    parser.add_argument("--duration", type=float, default=30, help="how long each fault lasts, seconds")
    parser.add_argument("--spread", type=float, default=10, help="seconds over which leads arrive")
    parser.add_argument("--fault", default="none,freeze-broker,stop-postgres,freeze-postgres,kill-intake,kill")
    parser.add_argument("--restarts", action="store_true", help="measure restart-to-ready times instead")
    args = parser.parse_args()
    if args.restarts:
        figures = asyncio.run(restart_times())
        print(json.dumps(figures))
        print("BENCH " + json.dumps(figures))
        return
    results = []
    for fault in args.fault.split(","):
        result = asyncio.run(one_fault(fault, args.leads, args.target, args.duration, args.spread))
        print(json.dumps(result), flush=True)
        results.append(result)
    print("BENCH " + json.dumps({f"faults_{r['fault']}_blamed_on_person": r["touched_but_blamed_on_a_person"]
                                 for r in results}))
    sys.exit(0)


if __name__ == "__main__":
    main()
