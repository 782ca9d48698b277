"""Routing latency: `lead.received` on the bus to `lead.assigned` on the bus.

    python bench/router.py [--rate 200] [--seconds 30] [--owners 500] [--rules 50]

Starts an embedded PostgreSQL and broker (or uses LEADSLA_TEST_DATABASE_URL /
LEADSLA_TEST_KAFKA_BOOTSTRAP), applies a configuration with `--owners` owners in teams of ten and
`--rules` routing rules (country rules and a catch-all), runs the router as `leadsla serve router`
(the production shape: its consumer, outbox relay and HTTP in one process), publishes
`lead.received` events to leads.intake at `--rate` per second, and reads leads.routing.
Latency per lead: the broker's ack of lead.received to the arrival of its lead.assigned.
Prints p50 / p90 / p99 / max and the achieved rates, the hops of the latency (from the
lead.assigned record itself: its event time is the decision, its broker timestamp the relay's
send), the router process's CPU seconds per lead, then the decisions per second of the router's
handler called directly (its own cost, without consumer, relay and broker).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).parents[1]))

from infra import cpu_seconds, infrastructure

from leadsla.devstack import ServiceProcess, free_port  # noqa: E402
from services.router.handlers import RouterDeps, route_lead  # noqa: E402
from services.router.projection import PROJECTION  # noqa: E402
from shared.bus import ensure_topics, make_producer  # noqa: E402
from shared.clock import SystemClock  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.config_store import apply_config  # noqa: E402
from shared.db import make_engine  # noqa: E402
from shared.events import (  # noqa: E402
    TOPIC_INTAKE,
    TOPIC_ROUTING,
    CloudEvent,
    Company,
    Consent,
    Contact,
    Intent,
    LeadReceived,
    Received,
    new_event,
)
from shared.migrate import upgrade  # noqa: E402
from shared.uow import UnitOfWork  # noqa: E402

COUNTRIES = ["GB", "DE", "FR", "ES", "IT", "NL", "BE", "SE", "NO", "DK", "FI", "PL", "CZ", "AT", "CH", "IE",
             "PT", "GR", "HU", "RO", "BG", "HR", "SI", "SK", "LT", "LV", "EE", "US", "CA", "MX", "BR", "AR",
             "CL", "CO", "PE", "JP", "KR", "CN", "IN", "SG", "AU", "NZ", "ZA", "NG", "KE", "EG", "MA", "TR",
             "IL", "AE", "SA", "QA", "TH", "VN", "ID", "MY", "PH"]


def config_yaml(owners: int, rules: int) -> str:
    teams = max(owners // 10, 1)
    lines = ["owners:"] + [f"  - {{id: o{i}, capacity: 100000}}" for i in range(owners)]
    lines += ["teams:"] + [
        f"  - {{id: t{t}, members: [{', '.join(f'o{i}' for i in range(t * 10, min(t * 10 + 10, owners)))}]}}"
        for t in range(teams)
    ]
    lines += ["routing:", "  rules:"]
    for r in range(rules - 1):
        country = COUNTRIES[r % len(COUNTRIES)]  # quoted: YAML reads a bare NO (Norway) as false
        lines.append(f"    - {{id: r{r}, match: {{countries: ['{country}']}}, team: t{r % teams}}}")
    lines.append(f"    - {{id: catch-all, team: t{(rules - 1) % teams}}}")
    return "\n".join(lines) + "\n"


def lead_received(i: int) -> CloudEvent:
    now = datetime.now(UTC)
    lead_id = str(uuid.uuid4())
    return new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
        lead_id=lead_id, source="web", tier="ABC"[i % 3],
        contact=Contact(email=f"p{i}@c{i}.example", country=COUNTRIES[i % (len(COUNTRIES) + 3) % len(COUNTRIES)]),
        company=Company(name=f"Company {i}"), intent=Intent(type="demo_request"), consent=Consent(),
        contactable=True, received_at=now))


Hops = dict[str, list[float]]


async def measure(bootstrap: str, rate: float, seconds: float) -> tuple[list[float], float, float, Hops]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5)
    await reader.start()
    await reader._client.force_metadata_update()  # noqa: SLF001
    tps = [TopicPartition(TOPIC_ROUTING, p) for p in sorted(reader.partitions_for_topic(TOPIC_ROUTING) or [])]
    reader.assign(tps)
    for tp, offset in (await reader.end_offsets(tps)).items():
        reader.seek(tp, offset)
    producer = make_producer(bootstrap)
    await producer.start()
    acked: dict[str, float] = {}
    arrived: dict[str, float] = {}
    # lead -> (decided: the event's time, sent: the relay's send, the record's broker timestamp)
    stamps: dict[str, tuple[float, float]] = {}
    total = int(rate * seconds)

    async def read() -> None:
        while len(arrived) < total:
            batch = await reader.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                for record in records:
                    event = CloudEvent.from_bytes(record.value)
                    if event.type in ("lead.assigned", "lead.queued") and event.subject in acked:
                        arrived.setdefault(event.subject, now)
                        stamps.setdefault(event.subject, (event.time.timestamp(), record.timestamp / 1000))

    reading = asyncio.create_task(read())
    start = time.perf_counter()
    pending = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        event = lead_received(i)
        future = await producer.send(TOPIC_INTAKE, event.to_bytes(), key=event.subject.encode())
        future.add_done_callback(lambda _f, lead=event.subject: acked.setdefault(lead, time.time()))
        pending.append(future)
    await asyncio.gather(*pending)
    send_elapsed = time.perf_counter() - start
    try:
        await asyncio.wait_for(reading, timeout=120)
    except TimeoutError:
        print(f"warning: only {len(arrived)} of {total} leads were routed within 120 s after the last send")
    done_elapsed = time.perf_counter() - start
    await producer.stop()
    await reader.stop()
    latencies = [arrived[lead] - acked[lead] for lead in arrived]
    hops: Hops = {"acked -> decided (consumer fetch, waiting batches)": [],
                  "decided -> relay sent (handler, commit, relay wake-up and read)": [],
                  "relay sent -> read (broker ack, reader fetch)": []}
    for lead, (decided, sent) in stamps.items():
        for name, value in zip(hops, (decided - acked[lead], sent - decided, arrived[lead] - sent), strict=True):
            hops[name].append(value)
    return latencies, total / send_elapsed, len(arrived) / done_elapsed, hops


async def in_process(engine, owners: int, rules: int, n: int = 300) -> float:
    """Decisions per second calling the handler directly, one transaction each: the router's own
    cost without the consumer, the relay and the broker around it."""
    config = parse_config(config_yaml(owners, rules))
    clock = SystemClock()

    async def one(i: int) -> None:
        async with UnitOfWork(engine, "router", projection=PROJECTION) as uow:
            await route_lead(uow, Received.of(lead_received(i)), RouterDeps(config, clock))
            await uow.commit()

    for i in range(20):
        await one(i)
    start = time.perf_counter()
    for i in range(n):
        await one(i)
    return n / (time.perf_counter() - start)


async def run(url: str, bootstrap: str, rate: float, seconds: float, owners: int, rules: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="leadsla-bench-router-"))
    router = None
    engine = make_engine(url)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            await apply_config(conn, config_yaml(owners, rules))
        await ensure_topics(bootstrap, 6)
        router = ServiceProcess("router", free_port(), {"LEADSLA_DATABASE_URL": url,
                                                        "LEADSLA_KAFKA_BOOTSTRAP": bootstrap,
                                                        "LEADSLA_LOG_LEVEL": "WARNING"}, tmp / "router.log")
        router.start()
        deadline = time.monotonic() + 60
        while not router.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"router not ready; see {tmp / 'router.log'}")
            await asyncio.sleep(0.2)
        await measure(bootstrap, rate, 2)  # warm-up: connections, caches, the group settled
        assert router.proc is not None
        cpu_before = cpu_seconds(router.proc.pid)
        latencies, sent_rate, routed_rate, hops = await measure(bootstrap, rate, seconds)
        router_cpu = cpu_seconds(router.proc.pid) - cpu_before
        ms = sorted(x * 1000 for x in latencies)

        def pct(p: float, values: list[float] = ms) -> float:
            return values[min(int(len(values) * p), len(values) - 1)]

        print(f"\nrouter: {owners} owners, {rules} rules, {len(ms)} leads offered at {rate:.0f}/s "
              f"(sent {sent_rate:.0f}/s, routed {routed_rate:.0f}/s over the run)")
        print(f"lead.received acked -> lead.assigned read, ms: p50 {pct(0.50):.1f}  p90 {pct(0.90):.1f}  "
              f"p99 {pct(0.99):.1f}  max {ms[-1]:.1f}  mean {statistics.fmean(ms):.1f}")
        for name, values in hops.items():
            hop = sorted(v * 1000 for v in values)
            print(f"  {name:<66} p50 {pct(0.5, hop):7.1f}  p99 {pct(0.99, hop):7.1f} ms")
        print(f"router process CPU: {router_cpu:.1f} s for {len(ms)} leads ({router_cpu / len(ms) * 1000:.1f} ms per lead)")
        router.stop()
        router = None
        in_process_rate = await in_process(engine, owners, rules)
        print(f"route_lead in-process, one transaction per lead: {in_process_rate:.0f} leads/s")
        print("BENCH " + json.dumps({"router_offered_per_s": rate, "router_routed_per_s": round(routed_rate, 1),
                                     "router_latency_p50_ms": round(pct(0.50), 1),
                                     "router_latency_p99_ms": round(pct(0.99), 1),
                                     "router_cpu_ms_per_lead": round(router_cpu / len(ms) * 1000, 2),
                                     "router_in_process_per_s": round(in_process_rate, 1)}))
    finally:
        if router is not None:
            router.stop()
        await engine.dispose()


async def main(rate: float, seconds: float, owners: int, rules: int) -> None:
    async with infrastructure() as (url, bootstrap):
        await run(url, bootstrap, rate, seconds, owners, rules)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--owners", type=int, default=500)
    parser.add_argument("--rules", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.seconds, args.owners, args.rules))
