"""The SLA clock at scale: memory with 1,000,000 open timers, breach lag when 10,000 timers fall
due in the same second, and how many input events per second its handlers take.

    python bench/sla_clock.py [--open 1000000] [--burst 10000] [--events 2000]

Uses LEADSLA_TEST_DATABASE_URL (or an embedded PostgreSQL) and a database of its own, dropped at
the end. Timers live in Postgres: the process holds only the batches it is firing, so its RSS is
measured while it runs the timer loop's queries (fire_due, next_due) beside the open timers, and
the gauge refresh (every 5 s: the open counts by metric and tier, which the projection keeps) is
timed too. The burst is fired as the timer loop fires it (entrypoints.Firing, real time: batches of
FIRE_BATCH, FIRE_WORKERS side by side while a full batch was due, breaches drafted up to
PREPARE_AHEAD before their deadlines), each breach's lag being the time from its deadline to the
commit of the transaction that published it to the outbox; burst_cpu_s is this process's CPU time
from the timers' insert to the last commit, drafting included (the figure that depends least on
what else the machine runs). Events/s: lead.received + lead.assigned through the handlers,
without the broker, one transaction each (`handler_*`), and as the consumer takes them now, a
fetched batch of RUN (the consumer's max_poll_records) as one run in one transaction (`run_*`);
two alternating rounds of each, each side's best.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))

from leadsla.devstack import EmbeddedPostgres  # noqa: E402
from services.sla_clock.adapters import PostgresClockStore  # noqa: E402
from services.sla_clock.domain import ClockRules  # noqa: E402
from services.sla_clock.entrypoints import FIRE_BATCH, Firing, on_run  # noqa: E402
from services.sla_clock.handlers import (  # noqa: E402
    HANDLERS,
    SlaDeps,
    fire_due,
    next_due,
    open_timer_counts,
)
from shared.config import parse_config  # noqa: E402
from shared.db import make_engine  # noqa: E402
from shared.events import (  # noqa: E402
    Company,
    Consent,
    Contact,
    Intent,
    LeadAssigned,
    LeadReceived,
    Received,
    new_event,
)
from shared.migrate import upgrade  # noqa: E402
from shared.uow import UnitOfWork  # noqa: E402

CONFIG = parse_config("""
owners: [{id: alice}]
sla_policies:
  - id: p
    filter: {tiers: [A]}
    metrics: {first_response: {target: 5m, warn_at: []}}
""")


CAUGHT_UP = datetime.max.replace(tzinfo=UTC)
RUN = 200  # the consumer's max_poll_records: a fetched batch at most


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def insert_timers(engine, n: int, due: str, prefix: str) -> None:
    """n open timers (and their leads) written by Postgres itself; `due`: SQL for row i's deadline."""
    async with engine.begin() as conn:
        await conn.execute(text(f"""
            INSERT INTO sla_clock.leads (lead_id, tier, source, contactable, received_at, owner_id)
            SELECT '{prefix}' || i, 'A', 'web', true, now(), 'alice' FROM generate_series(1, {n}) i"""))
        await conn.execute(text(f"""
            INSERT INTO sla_clock.timers (sla_id, lead_id, metric, policy_id, policy_version, calendar,
                owner_id, tier, started_at, due_at, warnings, warned, state, next_fire_at, target_seconds)
            SELECT '{prefix}' || i, '{prefix}' || i, 'first_response', 'p', 1, 'always', 'alice', 'A',
                   now(), {due}, '[]', '[]', 'open', {due}, 300 FROM generate_series(1, {n}) i"""))
        # Written around the projection: their count too (the projection keeps it for its own writes).
        await conn.execute(text(f"""
            INSERT INTO sla_clock.open_timer_counts (metric, tier, open) VALUES ('first_response', 'A', {n})
            ON CONFLICT (metric, tier) DO UPDATE SET open = open_timer_counts.open + excluded.open"""))


async def timed(coro) -> tuple[object, float]:
    start = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - start


class TimedUnitOfWork(UnitOfWork):
    """Notes each breach's lag, from its deadline to its transaction's commit."""

    lags: list[float] = []

    async def commit(self) -> None:
        await super().commit()
        committed = datetime.now(UTC)
        self.lags.extend((committed - datetime.fromisoformat(e.data["due_at"])).total_seconds()
                         for e in self.emitted if e.type == "sla.breached")


async def burst(engine, n: int) -> tuple[list[float], float]:
    """n timers due within one second, 3 s from now, fired as the timer loop fires them
    (entrypoints.Firing: FIRE_WORKERS batches side by side while a full batch was due, else one,
    drafting what falls due next, and sleeping until the next deadline); the lags, and the CPU
    seconds this process spent, drafting included."""
    due0 = datetime.now(UTC) + timedelta(seconds=12)
    await insert_timers(engine, n, f"'{due0.isoformat()}'::timestamptz + (i % 1000) * interval '1 millisecond'",
                        "burst-")
    lags: list[float] = []
    TimedUnitOfWork.lags = lags
    firing = Firing(lambda: TimedUnitOfWork(engine, "sla_clock"), ClockRules(), lambda: datetime.now(UTC))
    cpu = 0.0
    while len(lags) < n:
        started = time.process_time()
        # Its inputs always consumed: no breach waits for the watermark.
        wait = await firing.round(CONFIG, seen=CAUGHT_UP, poll=1.0)
        cpu += time.process_time() - started
        await asyncio.sleep(wait)
    return lags, cpu


def inputs(n: int) -> list[Received]:
    """n input events: lead.received then lead.assigned for n/2 new leads."""
    now = datetime.now(UTC)
    events = []
    for _ in range(n // 2):
        lead_id = str(uuid.uuid4())
        events.append(new_event("lead.received", service="intake", lead_id=lead_id, time=now,
                      data=LeadReceived(lead_id=lead_id, source="web", tier="A", contact=Contact(email="a@b.c"),
                                        company=Company(), intent=Intent(type="demo_request"), consent=Consent(),
                                        contactable=True, received_at=now)))
        events.append(new_event("lead.assigned", service="router", lead_id=lead_id, time=now,
                      data=LeadAssigned(lead_id=lead_id, owner_id="alice", team_id="t", rule_id="r",
                                        method="round_robin", reason="rule_match", assignment_no=1, candidates=[],
                                        assigned_at=now, tier="A")))
    return [Received.of(event) for event in events]


async def consume(engine, n: int, run: int) -> tuple[float, float]:
    """Input events through the handlers without the broker: `run` 1, one transaction per event
    (the shape before runs); else the consumer's shape, a transaction per fetched batch of `run`
    events handled as one run (`on_run`). Events per second, and this process's CPU ms per event."""
    events = inputs(n)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(events), run):
        async with UnitOfWork(engine, "sla_clock") as uow:
            deps = SlaDeps(CONFIG, 1, datetime.now(UTC))
            if run == 1:
                await HANDLERS[type(events[i].data)](PostgresClockStore(uow), events[i], deps)
            else:
                await on_run(uow, events[i:i + run], deps)
            await uow.commit()
    return len(events) / (time.perf_counter() - start), (time.process_time() - cpu) / len(events) * 1000


async def main(open_timers: int, burst_size: int, events: int) -> None:
    tmp = tempfile.mkdtemp(prefix="leadsla-bench-")
    pg = None
    server_url = os.environ.get("LEADSLA_TEST_DATABASE_URL")
    if not server_url:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        server_url = pg.start()
    raw = server_url.replace("postgresql+asyncpg://", "postgresql://")
    name = f"leadsla_bench_sla_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(raw)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url, pool_size=5)
    figures: dict[str, float] = {}
    try:
        await upgrade(engine)
        rss_before = rss_mb()
        _, load = await timed(insert_timers(engine, open_timers, "now() + interval '30 days' + i * interval '1 second'",
                                            "open-"))
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE sla_clock.timers, sla_clock.leads"))
        # The timer loop's rounds beside a million open timers: nothing due, nothing loaded.
        rounds = []
        for _ in range(50):
            async with UnitOfWork(engine, "sla_clock") as uow:
                now = datetime.now(UTC)
                _, took = await timed(fire_due(PostgresClockStore(uow), CONFIG, now, seen=now, limit=FIRE_BATCH))
                await next_due(PostgresClockStore(uow))
                await uow.commit()
            rounds.append(took)
        async with UnitOfWork(engine, "sla_clock") as uow:
            counts, gauge = await timed(open_timer_counts(PostgresClockStore(uow)))
        figures.update(open_timers=sum(c for _, _, c in counts), load_s=round(load, 1), rss_mb=round(rss_mb(), 1),
                       rss_before_load_mb=round(rss_before, 1),
                       idle_round_ms_p50=round(statistics.median(rounds) * 1000, 2),
                       gauge_refresh_ms=round(gauge * 1000, 1))
        lags, cpu = await burst(engine, burst_size)
        lags.sort()
        figures.update(burst=burst_size, burst_cpu_s=round(cpu, 2), breach_lag_p50_s=round(lags[len(lags) // 2], 3),
                       breach_lag_p99_s=round(lags[int(len(lags) * 0.99) - 1], 3),
                       breach_lag_max_s=round(lags[-1], 3))
        for name, run in (("handler", 1), ("run", RUN)) * 2:  # alternating rounds, each side's best
            per_s, cpu_ms = await consume(engine, events, run)
            figures[f"{name}_events_per_s"] = max(round(per_s, 1), figures.get(f"{name}_events_per_s", 0))
            figures[f"{name}_cpu_ms_per_event"] = min(round(cpu_ms, 3), figures.get(f"{name}_cpu_ms_per_event", 1e9))
        figures["rss_end_mb"] = round(rss_mb(), 1)
        print("BENCH " + json.dumps(figures))
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(raw)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if pg:
            pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--open", type=int, default=1_000_000)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.open, args.burst, args.events))
