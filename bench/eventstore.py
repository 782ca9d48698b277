"""The event store's append, the one write every service makes for every event.

    python bench/eventstore.py [--events 10000] [--rounds 3]

Starts an embedded PostgreSQL (or uses LEADSLA_TEST_DATABASE_URL) and appends real lead.received
CloudEvents (intake's own, about 1.3 KB) in calls of 1, 10, 100 and 1000 events, each call its
own transaction (as a consumer batch or a request commits), every event on a new stream with
its expected version checked (as a unit of work does). Per path and batch size it prints events/s,
the Postgres backend's CPU per event (/proc/<pg_backend_pid()>/schedstat, robust to other load
on the machine) and this process's CPU per event (SQLAlchemy, asyncpg, building the parameters):

  json      the rows as one JSON document (0009's append_events, the path before 0016; kept in
            the database until a cleanup migration drops it, and this path with it)
  arrays    `eventstore.append` as shipped: a typed array per column, payloads as bytea[] (0016)
  peer      the physical limit: `INSERT ... SELECT FROM unnest(...)` of the same rows into a
            table shaped like the store (same indexes), versions numbered by the client; no
            lock, no version check

The paths' calls are interleaved, one of each in turn (so load elsewhere and the growing table
weigh on all alike); the median of the rounds is reported. Batches of 1 append a fifth of --events (a commit each).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

sys.path.insert(0, str(Path(__file__).parents[1]))

from infra import cpu_seconds  # noqa: E402
from intake import CONFIG, NOW, lead  # noqa: E402
from notifier import database  # noqa: E402

from services.intake.domain import classify_tier, intent_vocabulary  # noqa: E402
from services.intake.handlers import new_lead  # noqa: E402
from services.intake.normalize import read_submission  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.db import json_rows, make_engine  # noqa: E402
from shared.events import CloudEvent  # noqa: E402
from shared.eventstore import Pending, append, append_lock_key  # noqa: E402
from shared.migrate import upgrade  # noqa: E402

SCHEMA = "intake"
BATCHES = (1, 10, 100, 1000)

_JSON_APPEND = text(f"SELECT * FROM {SCHEMA}.append_events(:lock_key, CAST(:streams AS text[]), "
                    "CAST(:expected AS json), CAST(:rows AS json))")


async def append_json(conn: AsyncConnection, pending: list[Pending], expected: dict[str, int]) -> None:
    """`eventstore.append` as it was before migration 0016 (its parameters and call, byte for byte)."""
    payloads = [p.event.to_bytes() for p in pending]
    result = (await conn.execute(_JSON_APPEND, {
        "lock_key": append_lock_key(SCHEMA),
        "streams": list(dict.fromkeys([*(p.stream_id for p in pending), *expected])),
        "expected": json_rows([{"stream_id": k, "version": v} for k, v in expected.items()]),
        "rows": json_rows([{"stream_id": p.stream_id, "event_id": p.event.id, "event_type": p.event.type,
                            "topic": p.topic, "key": p.event.subject or "", "payload": payload}
                           for p, payload in zip(pending, payloads, strict=True)]),
    })).first()
    assert result is not None and result.moved_stream is None


async def append_arrays(conn: AsyncConnection, pending: list[Pending], expected: dict[str, int]) -> None:
    assert await append(conn, SCHEMA, pending, expected) is not None


_PEER = text("INSERT INTO bench.events (stream_id, version, event_id, event_type, topic, key, payload) "
             "SELECT * FROM unnest(CAST(:stream_ids AS text[]), CAST(:versions AS int[]), CAST(:event_ids AS text[]), "
             "CAST(:event_types AS text[]), CAST(:topics AS text[]), CAST(:keys AS text[]), "
             "CAST(:payloads AS bytea[]))")


async def insert_peer(conn: AsyncConnection, pending: list[Pending], expected: dict[str, int]) -> None:
    await conn.execute(_PEER, {
        "stream_ids": [p.stream_id for p in pending], "versions": [expected[p.stream_id] + 1 for p in pending],
        "event_ids": [p.event.id for p in pending], "event_types": [p.event.type for p in pending],
        "topics": [p.topic for p in pending], "keys": [p.event.subject or "" for p in pending],
        "payloads": [p.event.to_bytes() for p in pending]})


def on_cpu(pid: int) -> float:
    """Seconds a process has run on a CPU: /proc/<pid>/schedstat (nanoseconds; /proc/<pid>/stat
    counts 10 ms ticks, too coarse for a few microseconds an event), else `cpu_seconds`."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)


PATHS = {"json": append_json, "arrays": append_arrays, "peer": insert_peer}


def lead_received() -> CloudEvent:
    """A lead.received as intake builds it from a realistic form submission."""
    config = parse_config(CONFIG)
    source, vocabulary = config.intake.source("bench"), intent_vocabulary(config)
    submission = read_submission(json.loads(json.dumps(lead(1))), source, vocabulary)
    return new_lead(config, submission, "bench", classify_tier(submission, "bench", config.tiers), NOW, None)[0]


def batches(template: CloudEvent, n: int, size: int) -> list[list[Pending]]:
    """`n` events in calls of `size`, each on a stream of its own (fresh ids: new leads)."""
    events = []
    for _ in range(n):
        lead_id = str(uuid.uuid4())
        events.append(Pending("leads.received", template.model_copy(update={"id": str(uuid.uuid4()),
                                                                            "subject": lead_id}), lead_id))
    return [events[i:i + size] for i in range(0, n, size)]


async def measure(conn: AsyncConnection, backend: int, calls: dict[str, list[list[Pending]]]) -> dict[str, dict]:
    """Runs the paths' calls interleaved, one call of each in turn (the first path rotating), so
    that load elsewhere on the machine, which slows even CPU time (caches, a shared core), and the
    growing table weigh on every path alike; only the calls themselves are timed."""
    spent = {name: [0.0, 0.0, 0.0] for name in calls}  # wall, this process's CPU, the backend's CPU
    names = list(calls)
    for i in range(len(calls[names[0]])):
        for name in names[i % len(names):] + names[:i % len(names)]:
            pending, path = calls[name][i], PATHS[name]
            expected = {p.stream_id: 0 for p in pending}
            pg0, own0, wall0 = on_cpu(backend), time.process_time(), time.perf_counter()
            async with conn.begin():
                await path(conn, pending, expected)
            wall, own, pg = time.perf_counter() - wall0, time.process_time() - own0, on_cpu(backend) - pg0
            for k, v in enumerate((wall, own, pg)):
                spent[name][k] += v
    n = sum(len(c) for c in calls[names[0]])
    return {name: {"per_s": n / wall, "pg_us": pg / n * 1e6, "client_us": own / n * 1e6}
            for name, (wall, own, pg) in spent.items()}


async def main(events: int, rounds: int) -> None:
    url, server = await database(os.environ.get("LEADSLA_TEST_DATABASE_URL"))
    engine = make_engine(url, service=SCHEMA)  # a service's connection settings (plan_cache_mode)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(text("CREATE SCHEMA bench"))
            await conn.execute(text(f"CREATE TABLE bench.events (LIKE {SCHEMA}.events INCLUDING ALL)"))
        template = lead_received()
        print(f"payload: a lead.received of {len(template.to_bytes())} bytes; {rounds} rounds, median shown")
        results: dict[tuple[str, int], list[dict]] = {}
        async with engine.connect() as conn:
            backend = await conn.scalar(text("SELECT pg_backend_pid()"))
            await conn.commit()
            for path in PATHS.values():  # warm: statements prepared, functions compiled
                warm = batches(template, 10, 10)[0]
                async with conn.begin():
                    await path(conn, warm, {p.stream_id: 0 for p in warm})
            for _ in range(rounds):
                for size in BATCHES:
                    n = max(size, events // 5 if size == 1 else events)
                    measured = await measure(conn, backend, {name: batches(template, n, size) for name in PATHS})
                    for name, figures in measured.items():
                        results.setdefault((name, size), []).append(figures)
        figures: dict = {}
        print(f"\n{'path':8} {'batch':>5} {'events/s':>9} {'PG us/ev':>9} {'client us/ev':>12} {'PG vs json':>10}"
              f" {'total vs json':>13}")
        for size in BATCHES:
            med = {name: {k: statistics.median(r[k] for r in results[(name, size)]) for k in ("per_s", "pg_us",
                                                                                               "client_us")}
                   for name in PATHS}
            base = med["json"]
            for name in PATHS:
                m = med[name]
                pg_ratio = m["pg_us"] / base["pg_us"] if base["pg_us"] else float("nan")
                total_ratio = (m["pg_us"] + m["client_us"]) / (base["pg_us"] + base["client_us"])
                print(f"{name:8} {size:>5} {m['per_s']:>9,.0f} {m['pg_us']:>9.1f} {m['client_us']:>12.1f}"
                      f" {pg_ratio:>10.2f} {total_ratio:>13.2f}")
                figures.update({f"eventstore_{name}_b{size}_per_s": round(m["per_s"], 1),
                                f"eventstore_{name}_b{size}_pg_us": round(m["pg_us"], 1),
                                f"eventstore_{name}_b{size}_client_us": round(m["client_us"], 1)})
                if name != "json":
                    figures[f"eventstore_{name}_b{size}_pg_vs_json"] = round(pg_ratio, 3)
        print("BENCH " + json.dumps(figures))
    finally:
        await engine.dispose()
        if server is not None:
            server.stop()
            shutil.rmtree(server.data_dir.parent, ignore_errors=True)  # a full run writes about 2 GB


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds))
