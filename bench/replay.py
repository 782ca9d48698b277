"""Replay throughput: `leadsla replay reporting` (rebuild of the read models from the timeline)
beside a raw aiokafka consume of the same records, measured in one run. Goal: >= 0.25x.

    python bench/replay.py [--leads 5000] [--rounds 3]

Both are measured `--rounds` times, alternating, and each side's best round is compared (the
machine is shared: the best round is the one least disturbed); every round is printed.

Starts an embedded PostgreSQL and broker (or uses LEADSLA_TEST_DATABASE_URL /
LEADSLA_TEST_KAFKA_BOOTSTRAP). The events are the reporting test scenario's (received,
queued, assigned, SLA started/met/breached/cancelled, touches, dispositions, meetings).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).parents[1]))

from infra import infrastructure

from services.reporting.replay import rebuild  # noqa: E402
from services.reporting.tables import timeline  # noqa: E402
from shared.bus import make_producer  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.db import make_engine  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from tests.integration import reporting_scenario as scenario  # noqa: E402

PARTITIONS = 6


def cpu_seconds() -> float:
    """User + system CPU of this process."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


async def publish(bootstrap: str, topic: str, events: list) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    futures = [await producer.send(topic, e.to_bytes(), key=e.subject.encode()) for e in events]
    await asyncio.gather(*futures)
    await producer.stop()


async def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    """Records read with hand-assigned partitions (no group join), values not even parsed."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                max_poll_records=2000)
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    count, start = 0, time.perf_counter()
    try:
        while count < n:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                count += len(records)
    finally:
        await consumer.stop()
    return n / (time.perf_counter() - start)


async def fill_timeline(engine, events: list) -> None:
    rows = [{"event_id": e.id, "lead_id": e.subject, "type": e.type, "source": e.source, "time": e.time,
             "correlation_id": e.correlationid, "causation_id": e.causationid, "data": e.data} for e in events]
    async with engine.begin() as conn:
        for i in range(0, len(rows), 5000):
            await conn.execute(insert(timeline), rows[i:i + 5000])


async def run(url: str, bootstrap: str, leads: int, rounds: int) -> None:
    engine = make_engine(url)
    try:
        await upgrade(engine)
        events = [e for _, e in scenario.build(seed=1, leads=leads).events]
        topic = f"bench.replay.{uuid.uuid4().hex[:6]}"
        kafka_admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await kafka_admin.start()
        await kafka_admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        await kafka_admin.close()
        await publish(bootstrap, topic, events)
        await fill_timeline(engine, events)

        config = parse_config(scenario.CONFIG)
        raws, replays, cpu = [], [], []
        for _ in range(rounds):
            raws.append(await raw_consume(bootstrap, topic, len(events)))
            started = cpu_seconds()
            result = await rebuild(engine, config)
            cpu.append(cpu_seconds() - started)
            assert result.events == len(events), result
            replays.append(result.events_per_second)
        raw, replay = max(raws), max(replays)
        print(f"\n{'stage':40} {'n':>7} {'events/s':>10} {'vs peer':>8}   rounds")
        print(f"{'raw aiokafka consume (assigned)':40} {len(events):7d} {raw:10.0f} {'peer':>8}   "
              + " ".join(f"{r:.0f}" for r in raws))
        print(f"{'replay reporting (rebuild read models)':40} {len(events):7d} {replay:10.0f} {replay / raw:7.2f}x   "
              + " ".join(f"{r:.0f}" for r in replays))
        # The replay's own CPU time hardly depends on what else the machine runs: compare versions by it.
        print(f"replay CPU time in this process: best {min(cpu):.3f}s "
              f"({len(events) / min(cpu):,.0f} events per CPU-second)")
        print("BENCH " + json.dumps({"replay_raw_consume_per_s": round(raw, 1), "replay_reporting_per_s": round(replay, 1),
                                     "replay_vs_raw_consume": round(replay / raw, 3), "rounds": rounds,
                                     "replay_cpu_seconds": round(min(cpu), 3)}))
    finally:
        await engine.dispose()


async def main(leads: int, rounds: int) -> None:
    async with infrastructure() as (url, bootstrap):
        await run(url, bootstrap, leads, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.leads, args.rounds))
