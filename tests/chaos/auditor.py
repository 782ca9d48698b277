"""The chaos auditor: reads every service's store, reporting's read model and the topics, and
checks them against what the load generator sent (the ledger), independently of the services'
code (plain SQL and a plain Kafka reader, no service module).

Checks, each violation naming the lead and what happened:
- every accepted lead exists once in intake and has exactly one lead.received;
- it has exactly one current owner in the router, or is queued (never both, never neither);
  no assignment_no appears twice among its lead.assigned events, and the last one names the
  owner the router's store holds;
- its first_response timer ended in exactly one of met / breached / cancelled (one terminal
  event, of the state's type), or is still open with its deadline ahead; the deadline is receipt
  + target (24x7), and the outcome matches a recomputation from the touches the generator sent:
  a touch that happened before the deadline is a met (whenever it arrived), no touch before it
  a breach (touches within `BOUNDARY` of the deadline accept either);
- every notification's idempotency key is recorded once and was delivered to the receiver at
  least once, and every breach notified someone;
- every event the services committed for the lead was published to its topic and is in
  reporting's timeline.

Run as a script on a finished run (the chaos test leaves its ledger next to its logs):

    python -m tests.chaos.auditor --database-url URL --ledger run/ledger.json [--bootstrap HOST:PORT]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from tests.chaos.ledger import Ledger

BOUNDARY = 0.5  # seconds either side of a deadline where a touch may count either way
OPEN_GRACE = 3.0  # an open timer this long past its deadline is overdue, not legitimately open
SERVICE_SCHEMAS = ("intake", "router", "sla_clock", "notifier")
PROJECTED_TOPICS = ("leads.intake", "leads.routing", "leads.sla", "leads.notifications")
TERMINAL = {"sla.met": "met", "sla.breached": "breached", "sla.cancelled": "cancelled"}


@dataclass
class Violation:
    lead_id: str
    what: str

    def __str__(self) -> str:
        return f"{self.lead_id}: {self.what}"


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def add(self, lead_id: str | None, what: str) -> None:
        self.violations.append(Violation(lead_id or "?", what))

    @property
    def ok(self) -> bool:
        return not self.violations

    def text(self, limit: int = 50) -> str:
        lines = [f"auditor: {len(self.violations)} violations; " + json.dumps(self.figures, sort_keys=True)]
        lines += [f"  {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more")
        return "\n".join(lines)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _epoch(value: datetime | str) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp()


async def published_events(conn: asyncpg.Connection, schema: str, where: str = "TRUE") -> list:
    """A service's events meant for a topic: key, topic, event_id, event_type, payload, created_at
    (when its transaction began), sent (published), parked. Reads either layout: the outbox
    (`<schema>.outbox`, sent_at per row) or the event store (`<schema>.events` with the relay's
    published position and its parked rows)."""
    if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.outbox"):
        return await conn.fetch(
            f"SELECT key, topic, event_id, event_type, payload, created_at, sent_at IS NOT NULL AS sent, "
            f"parked_at IS NOT NULL AS parked FROM {schema}.outbox WHERE {where} ORDER BY id")
    return await conn.fetch(
        f"SELECT e.key, e.topic, e.event_id, e.event_type, e.payload, e.recorded_at AS created_at, "
        f"(e.position <= coalesce((SELECT max(published_position) FROM {schema}.relay_position), 0) "
        f" AND p.position IS NULL) AS sent, p.position IS NOT NULL AS parked "
        f"FROM {schema}.events e LEFT JOIN {schema}.parked p ON p.position = e.position "
        f"WHERE e.topic IS NOT NULL AND ({where}) ORDER BY e.position")


async def read_topics(bootstrap: str, topics: tuple[str, ...], idle: float = 1.5, timeout: float = 60) -> dict[str, Counter]:
    """Event ids on each topic, read from the beginning until nothing more arrives for `idle`
    seconds (the broker's high watermark can lag, so it is not trusted as the end)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    seen: dict[str, Counter] = {topic: Counter() for topic in topics}
    try:
        tps = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()  # noqa: SLF001
                partitions = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        quiet_since, deadline = time.monotonic(), time.monotonic() + timeout
        while time.monotonic() - quiet_since < idle and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    try:
                        seen[tp.topic][json.loads(record.value)["id"]] += 1
                    except (ValueError, KeyError, TypeError):
                        seen[tp.topic]["(unreadable)"] += 1
                if records:
                    quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return seen


async def audit(database_url: str, ledger: Ledger, bootstrap: str | None = None,
                delivered_keys: set[str] | None = None, now: float | None = None) -> Report:
    """Check the stores (and the topics, given `bootstrap`; the receiver's deliveries, given
    `delivered_keys`) against the ledger."""
    now = time.time() if now is None else now
    report = Report()
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        intake_leads = await conn.fetch("SELECT lead_id, source, external_id, received_at FROM intake.leads")
        intake_events = await published_events(conn, "intake")
        recorded_at: dict[str, datetime] = {}
        for r in intake_events:
            if r["event_type"] == "activity.recorded" and r["key"] not in recorded_at:
                recorded_at[r["key"]] = r["created_at"]
        received = Counter(r["key"] for r in intake_events if r["event_type"] == "lead.received")
        assignments = {r["lead_id"]: r for r in await conn.fetch(
            "SELECT lead_id, owner_id, assignment_no, closed_at FROM router.assignments")}
        queued = {r["lead_id"] for r in await conn.fetch("SELECT lead_id FROM router.queue")}
        assigned_events = defaultdict(list)
        for r in await published_events(conn, "router", "event_type = 'lead.assigned'"):
            assigned_events[r["key"]].append(json.loads(r["payload"])["data"])
        timers = defaultdict(list)
        for r in await conn.fetch("SELECT sla_id, lead_id, metric, state, started_at, due_at, closed_at, root_cause "
                                  "FROM sla_clock.timers"):
            timers[r["lead_id"]].append(r)
        terminal = defaultdict(list)
        for r in await published_events(conn, "sla_clock",
                                         "event_type IN ('sla.met', 'sla.breached', 'sla.cancelled')"):
            event = json.loads(r["payload"])
            terminal[event["data"]["sla_id"]].append((r["event_type"], event))
        deliveries = defaultdict(list)
        for r in await conn.fetch("SELECT notification_id, lead_id, idempotency_key, state, channel "
                                  "FROM notifier.deliveries"):
            deliveries[r["lead_id"]].append(r)
        key_counts = Counter(r["idempotency_key"] for rows in deliveries.values() for r in rows)
        outbox = defaultdict(list)
        for schema in SERVICE_SCHEMAS:
            for r in (intake_events if schema == "intake" else await published_events(conn, schema)):
                outbox[r["key"]].append((schema, r))
        in_timeline = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM reporting.timeline")}
    finally:
        await conn.close()
    on_topics = await read_topics(bootstrap, PROJECTED_TOPICS) if bootstrap else None

    by_external = defaultdict(list)
    for r in intake_leads:
        if r["external_id"]:
            by_external[r["external_id"]].append(r)
    by_id = {r["lead_id"]: r for r in intake_leads}

    figures = Counter()
    lateness: list[float] = []
    after_recovery: list[float] = []
    causes: Counter = Counter()
    windows = [(_epoch(f["at"]), _epoch(f["at"]) + f["seconds"]) for f in ledger.faults]
    for sent in ledger.leads:
        if not sent.accepted:
            figures["not_accepted"] += 1
            continue
        figures[f"leads_{sent.via}"] += 1
        rows = by_external.get(sent.external_id, [])
        if len(rows) != 1:
            report.add(sent.lead_id or f"ext:{sent.external_id}",
                       f"accepted {sent.via} lead is in intake {len(rows)} times")
            if not rows:
                continue
        lead = rows[0]
        lead_id = lead["lead_id"]
        if sent.lead_id and sent.lead_id != lead_id:
            report.add(sent.lead_id, f"intake holds external id {sent.external_id} as {lead_id}")
        if received[lead_id] != 1:
            report.add(lead_id, f"{received[lead_id]} lead.received events")

        # Ownership.
        owner = assignments.get(lead_id)
        owned = owner is not None and owner["closed_at"] is None
        if owned and lead_id in queued:
            report.add(lead_id, f"owned by {owner['owner_id']} and queued at once")
        elif not owned and lead_id not in queued:
            report.add(lead_id, "neither owned nor queued")
        numbers = Counter(e["assignment_no"] for e in assigned_events[lead_id])
        for number, times in numbers.items():
            if times > 1:
                owners = [e["owner_id"] for e in assigned_events[lead_id] if e["assignment_no"] == number]
                report.add(lead_id, f"assignment_no {number} used {times} times (owners {owners})")
        if owned and assigned_events[lead_id] and assigned_events[lead_id][-1]["owner_id"] != owner["owner_id"]:
            report.add(lead_id, f"router store says {owner['owner_id']}, last lead.assigned says "
                                f"{assigned_events[lead_id][-1]['owner_id']}")

        # The first_response timer, recomputed.
        due = _epoch(lead["received_at"]) + ledger.target_seconds
        live = [t for t in timers[lead_id] if t["metric"] == "first_response" and t["state"] != "cancelled"]
        if len(live) != 1:
            report.add(lead_id, f"{len(live)} first_response timers not cancelled "
                                f"(states {[t['state'] for t in timers[lead_id]]})")
        for timer in timers[lead_id]:
            ends = terminal.get(timer["sla_id"], [])
            if timer["state"] in ("open", "paused"):
                if ends:
                    report.add(lead_id, f"timer {timer['sla_id']} is {timer['state']} but has {[e for e, _ in ends]}")
                if now - _epoch(timer["due_at"]) > OPEN_GRACE:
                    report.add(lead_id, f"timer still {timer['state']} {now - _epoch(timer['due_at']):.1f}s "
                                        "after its deadline")
                continue
            if len(ends) != 1 or TERMINAL[ends[0][0]] != timer["state"]:
                report.add(lead_id, f"timer {timer['state']} with terminal events {[e for e, _ in ends]}")
        for timer in live:
            if abs(_epoch(timer["due_at"]) - due) > 0.01:
                report.add(lead_id, f"due_at {timer['due_at'].isoformat()} is not receipt + "
                                    f"{ledger.target_seconds:g}s ({datetime.fromtimestamp(due, UTC).isoformat()})")
            touches = [t.occurred_at for t in sent.touches if t.accepted]
            if any(t < due - BOUNDARY for t in touches):
                expected = "met"
            elif all(t > due + BOUNDARY for t in touches):
                expected = "breached"
            else:
                expected = None
            state = timer["state"]
            figures[f"timers_{state}"] += 1
            if state in ("open", "paused"):
                continue
            if expected is not None and state != expected:
                first = min(touches, default=None)
                said = (f"touch at due{first - due:+.2f}s" if first is not None else "no touch")
                # When intake recorded the first touch: after the deadline, its sender was retrying
                # through an outage (the clock waits for such retries); before it, the clock had
                # the touch in time and misjudged anyway.
                taken = _epoch(recorded_at[lead_id]) if lead_id in recorded_at else None
                if taken is not None:
                    said += f", recorded by intake at due{taken - due:+.2f}s"
                report.add(lead_id, f"timer {state} (root cause {timer['root_cause']}), expected {expected}: "
                                    f"{said} (via {sent.via}, touches via {[t.via for t in sent.touches]})")
            if state == "breached":
                ends = terminal.get(timer["sla_id"], [])
                if ends:
                    lateness.append(_epoch(ends[0][1]["time"]) - _epoch(timer["due_at"]))
                    # Due while something was down: how soon after recovery it left, and as what.
                    for fault in windows:
                        if fault[0] <= _epoch(timer["due_at"]) <= fault[1]:
                            after_recovery.append(_epoch(ends[0][1]["time"]) - fault[1])
                            causes[ends[0][1]["data"].get("root_cause")] += 1
                            break
                    if ends[0][1]["data"].get("root_cause") == "system_delay":
                        figures["breaches_system_delay"] += 1
                if not deliveries[lead_id]:
                    report.add(lead_id, "breached, but no notification was recorded")

        # Notifications.
        for d in deliveries[lead_id]:
            figures["notifications"] += 1
            if key_counts[d["idempotency_key"]] != 1:
                report.add(lead_id, f"idempotency key {d['idempotency_key']} recorded {key_counts[d['idempotency_key']]} times")
            if d["state"] != "sent":
                report.add(lead_id, f"notification {d['notification_id']} is {d['state']}, not sent")
            if delivered_keys is not None and d["idempotency_key"] not in delivered_keys:
                report.add(lead_id, f"notification {d['notification_id']} never reached the receiver")

        # Publication and the timeline.
        for schema, row in outbox[lead_id]:
            if row["topic"] not in PROJECTED_TOPICS:
                continue
            figures["events"] += 1
            if row["event_id"] not in in_timeline:
                report.add(lead_id, f"reporting's timeline lacks {row['event_type']} ({schema}, {row['event_id']})")
            if not row["sent"]:
                report.add(lead_id, f"{schema}'s {row['event_type']} not published"
                                    f"{' (parked)' if row['parked'] else ''}")
            elif on_topics is not None and on_topics[row["topic"]][row["event_id"]] == 0:
                report.add(lead_id, f"{schema}'s {row['event_type']} marked sent but not on {row['topic']}")
            elif on_topics is not None and on_topics[row["topic"]][row["event_id"]] > 1:
                figures["events_published_more_than_once"] += 1
    unknown = set(by_id) - {r["lead_id"] for rows in by_external.values() for r in rows}
    if unknown:
        figures["leads_in_intake_not_sent"] = len(unknown)
    report.figures = dict(figures)
    report.figures["touches_accepted"] = sum(1 for lead in ledger.leads for t in lead.touches if t.accepted)
    if after_recovery:
        report.figures["breaches_due_during_faults"] = len(after_recovery)
        report.figures["breach_after_recovery_max_s"] = round(max(after_recovery), 2)
        report.figures["breach_during_faults_root_causes"] = {cause or "none": n for cause, n in causes.items()}
    if lateness:
        report.figures["breach_lateness_p50_s"] = round(statistics.median(lateness), 2)
        report.figures["breach_lateness_max_s"] = round(max(lateness), 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--bootstrap", help="read the topics too")
    args = parser.parse_args()
    ledger = Ledger.load(args.ledger)
    report = asyncio.run(audit(args.database_url, ledger, args.bootstrap,
                               set(ledger.delivered_keys) if ledger.delivered_keys else None))
    print(report.text(limit=1000))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
