"""Runs every benchmark and ends with one line, `BENCH {json}`, holding every figure.

    python bench/run_all.py [--quick] [--only pipeline,intake]

Each script prints its own table and one `BENCH {json}` line of its figures; this collects those
lines. A script that fails is reported (its figures are missing) and the others still run.
`--quick` passes each script its small-size flags, for a smoke run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# script -> (arguments for a full run, arguments for --quick)
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "pipeline.py": ([], ["--events", "2000"]),
    "intake.py": ([], ["--leads", "300"]),
    "router.py": ([], ["--seconds", "5", "--rate", "20"]),
    "notifier.py": ([], ["--events", "200"]),
    "replay.py": ([], ["--leads", "500"]),
    "eventstore.py": ([], ["--events", "1000", "--rounds", "1"]),
    "sla_clock.py": ([], ["--open", "20000", "--burst", "1000", "--events", "300"]),
    "faults.py": (["--restarts"], ["--restarts"]),
    # About 6 minutes: start-up, 5 minutes of load, at most 60 s of drain.
    "soak.py": (["--seconds", "300", "--drain", "60"], ["--seconds", "20", "--rate", "100", "--drain", "30"]),
}


# The headline figures (issue 12's keys): each taken from a script's own figure, with the peer
# or limit it is read against. Ratios are measured against their peer in the same run.
HEADLINES: dict[str, tuple[str, str]] = {
    "intake_http_vs_bare_fastapi": ("intake_post_vs_bare", "x a bare FastAPI endpoint (goal >= 0.4)"),
    "intake_http_vs_bare_fastapi_busy": ("intake_post_busy_vs_bare",
                                         "x a bare FastAPI endpoint, 32 requests in flight (goal >= 0.4)"),
    "intake_kafka_vs_raw_broker": ("intake_kafka_vs_broker", "x raw aiokafka produce"),
    "intake_kafka_touches_vs_raw_broker": ("intake_kafka_touches_vs_broker",
                                           "x raw aiokafka produce, a CRM's touches on the raw topic"),
    "consumer_vs_raw_postgres_tx": ("pipeline_consumer_vs_peer", "x one-row Postgres transactions (goal >= 1.0)"),
    "relay_vs_raw_produce": ("pipeline_outbox_relay_vs_peer", "x raw aiokafka produce (goal >= 0.8)"),
    "lead_to_assigned_p99_ms": ("router_latency_p99_ms", "ms at the offered rate (goal <= 50 at 200/s)"),
    "breach_lag_p99_s": ("sla_clock_breach_lag_p99_s", "s for a burst of timers due at once (goal <= 1)"),
    "open_timers_1m_rss_mb": ("sla_clock_rss_mb", "MB resident with the open timers loaded"),
    "replay_vs_raw_consume": ("replay_vs_raw_consume", "x raw aiokafka consume (goal >= 0.25)"),
    "pipeline_sustained_leads_per_s": ("soak_assigned_per_s",
                                       "leads/s reaching assignment; soak_lag_bounded says if lag stayed bounded (goal 1,000 for 5 min)"),
}


def headlines(figures: dict) -> dict:
    found = {name: figures[source] for name, (source, _) in HEADLINES.items() if source in figures}
    print(f"\n{'figure':<32} {'value':>10}  against")
    for name, (_, against) in HEADLINES.items():
        print(f"{name:<32} {found.get(name, 'missing')!s:>10}  {against}")
    return found


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs so far (Linux)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def settle(idle_share: float = 0.9, window: float = 0.5, at_most: float = 30.0) -> float:
    """Wait until the machine is quiet (at least `idle_share` of the CPUs idle over `window`
    seconds), at most `at_most` seconds; returns the seconds waited. The script before may leave
    work behind (a database checkpointing on its way down), which would count against the next."""
    began = time.monotonic()
    while time.monotonic() - began < at_most:
        idle0, total0 = _cpu_times()
        time.sleep(window)
        idle1, total1 = _cpu_times()
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= idle_share:
            break
    return time.monotonic() - began


def run(script: str, args: list[str]) -> dict:
    waited = settle()
    if waited > 1:
        print(f"-- waited {waited:.0f}s for the machine to be quiet", flush=True)
    began = time.monotonic()
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    figures: dict = {}
    prefix = script.removesuffix(".py") + "_"
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            # Named by script, so two scripts' figures never overwrite each other.
            figures.update({k if k.startswith(prefix) else prefix + k: v
                            for k, v in json.loads(line[len("BENCH "):]).items()})
    if proc.returncode != 0:
        sys.stdout.write(proc.stderr[-3000:])
        print(f"!! {script} exited with {proc.returncode}")
    print(f"-- {script}: {len(figures)} figures in {time.monotonic() - began:.0f}s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    only = {name if name.endswith(".py") else f"{name}.py" for name in args.only.split(",") if name}
    figures: dict = {}
    for script, (full, quick) in SCRIPTS.items():
        if (only and script not in only) or not (HERE / script).exists():
            continue
        print(f"== {script}", flush=True)
        figures.update(run(script, quick if args.quick else full))
    figures.update(headlines(figures))
    print("BENCH " + json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
