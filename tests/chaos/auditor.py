"""The chaos auditor: reads every service's store, reporting's read model and the topics, and
checks them against what the load generator sent (the ledger), independently of the services'
code (plain SQL and a plain Kafka reader, no service module).

The stores are read in one REPEATABLE READ, read-only transaction (one snapshot), so tables read
by separate statements agree although the services still run.

Checks, each violation naming the lead and what happened:
- every accepted lead exists once in intake and has exactly one lead.received; every lead in
  intake was sent and accepted (one the ledger does not know, or whose sender was not told
  "accepted", such as an outage probe answered 503 and committed anyway, is a violation);
- every touch the generator sent was accepted (2xx over HTTP, acked over Kafka) in the end;
- it has exactly one current owner in the router, or is queued (never both, never neither);
  an owned lead has at least one lead.assigned / lead.reassigned; the assignment numbers of
  those are unique and exactly 1..n, each lead.dequeued's number is one of them (the assignment
  out of the queue carries it) and used once; the highest names the owner and the number the
  router's store holds;
- its first_response timer ended in exactly one of met / breached / cancelled (one terminal
  event, of the state's type), or is still open with its deadline ahead; the deadline is receipt
  + target (24x7), and the outcome matches a recomputation from the touches the generator sent:
  a touch that happened before the deadline is a met (whenever it arrived), no touch before it
  a breach (touches within `BOUNDARY` of the deadline accept either);
- a breach's root cause follows the README: one that left `tolerance` (the services'
  LEADSLA_SLA_DELAY_TOLERANCE_SECONDS) or more after its deadline is `system_delay`, one that left
  sooner is not, unless its deadline fell in an outage of the clock's inputs (near a window of
  Postgres stopped, the broker frozen or intake killed: `OUTAGE_MARGIN`); one due inside such a
  window (`INSIDE_OUTAGE` past its start) is `system_delay` however soon it left; and a breach due during
  a fault window (Postgres stopped, broker frozen, sla_clock killed) left at most
  `RECOVERY_BOUND` after the fault ended;
- for each escalation step (the breach's sla_id, step, recipient, channel) exactly one
  notification is recorded, sent and delivered to the receiver at least once, and every breach
  notified someone;
- every event the services committed for the lead was published to its topic (each partition
  read to its end offsets, see `read_topics`) and is in reporting's timeline.

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

from tests.chaos.ledger import PROBE_PREFIX, Ledger

BOUNDARY = 0.5  # seconds either side of a deadline where a touch may count either way
OPEN_GRACE = 3.0  # an open timer this long past its deadline is overdue, not legitimately open
# A breach due during a fault leaves at most this long after the fault ended. The README's long run
# measured at most 59 s (the clock waits out an outage and its 30 s grace, then the backlog); 90 s
# is that and half again for a loaded machine.
RECOVERY_BOUND = 90.0
# The clock's own view of an outage (from intake's last heartbeat to its first one back, or from its
# last watermark round to the next) starts before the injector's window and ends after it (intake
# reconnecting, the consumer rejoining): a breach due this near a window may carry system_delay
# however soon it left (before, after).
OUTAGE_MARGIN = (3.0, 20.0)
# A deadline this far into a fault is surely inside the outage the clock detects: intake's last
# beat, or the clock's last round, can come a little after the harness began the fault (Postgres's
# fast shutdown on a loaded machine: a beat 1.4 s after `pg_ctl stop` was issued was seen).
INSIDE_OUTAGE = 3.0
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


@dataclass
class TopicRead:
    """Event ids on each topic, and the partitions not read to their end offset in time."""

    seen: dict[str, Counter]
    short: list[str] = field(default_factory=list)  # "topic[partition]: read to 12 of 40"
    past_end: int = 0  # records read past the end offsets taken at the start


async def read_topics(bootstrap: str, topics: tuple[str, ...], expected: dict[str, set[str]] | None = None,
                      timeout: float = 60) -> TopicRead:
    """Event ids on each topic, each partition read from the beginning up to its end offset taken
    when the reading starts, and on until every `expected` id (topic -> the ids the stores' snapshot
    says were published) is seen, however slow the fetches: the embedded broker's end offsets can
    stop short of a partition's last acked records, even at 0, so they alone do not say when the
    reading is done. Then on until a fetch brings nothing (a copy read twice counts). A partition
    not read to its end in `timeout` is named in `short`: its events would look missing, so the
    caller says so instead of blaming each event."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    # "earliest", and positions set by seek, not seek_to_beginning: assign() starts a reset by the
    # consumer's own policy at once, and one to "latest" still in flight when seek_to_beginning
    # asks for the earliest is applied over it (aiokafka's fetcher), so the reading began at the
    # end and every event looked missing (two CI runs: 858 and 892 of ~900).
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    read = TopicRead({topic: Counter() for topic in topics})
    deadline = time.monotonic() + timeout
    try:
        tps = []
        for topic in topics:
            # A fresh client may not know a topic's partitions yet: ask until it does (reading none
            # of a topic, every event on it looked missing).
            while not (partitions := consumer.partitions_for_topic(topic)) and time.monotonic() < deadline:
                await consumer._client.add_topic(topic)  # noqa: SLF001 - tracked, so its metadata is fetched
                await consumer._client.force_metadata_update()  # noqa: SLF001
                await asyncio.sleep(0.2)
            if not partitions:
                read.short.append(f"{topic}: no partitions known in {timeout:g} s")
            tps += [TopicPartition(topic, p) for p in sorted(partitions or ())]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp, offset in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, offset)

        def take(records: list, tp: TopicPartition) -> None:
            for record in records:
                if record.offset >= ends[tp]:
                    read.past_end += 1
                try:
                    read.seen[tp.topic][json.loads(record.value)["id"]] += 1
                except (ValueError, KeyError, TypeError):
                    read.seen[tp.topic]["(unreadable)"] += 1

        wanted = expected or {}

        def unseen() -> bool:
            return any(ids - read.seen[topic].keys() for topic, ids in wanted.items() if topic in read.seen)

        pending = {tp for tp in tps if ends[tp] > 0}
        while (pending or unseen()) and time.monotonic() < deadline:  # however slow the fetches
            for tp, records in (await consumer.getmany(timeout_ms=500, max_records=5000)).items():
                take(records, tp)
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        read.short += [f"{tp.topic}[{tp.partition}]: read to offset {await consumer.position(tp)} of {ends[tp]} "
                      f"in {timeout:g} s" for tp in sorted(pending)]
        # Past the ends and the expected ids, read on until a fetch brings nothing.
        while not pending and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if not any(batch.values()):
                break
            for tp, records in batch.items():
                take(records, tp)
    finally:
        await consumer.stop()
    return read


def fault_windows(ledger: Ledger) -> list[tuple[str, float, float]]:
    """(what, began, ended) of each fault the injector recorded; what: "postgres stopped",
    "broker SIGSTOP" or "kill -9 <service>"."""
    return [(f["kind"] + (f" {f['service']}" if f.get("service") else ""), _epoch(f["at"]),
             _epoch(f["at"]) + f["seconds"]) for f in ledger.faults]


def clock_input_outage(what: str) -> bool:
    """A fault the SLA clock sees as an outage of its inputs (README, "Outages"): intake unable to
    accept touches (it or its database down), or the clock unable to read the broker."""
    return what in ("postgres stopped", "broker SIGSTOP", "kill -9 intake")


def recovery_fault(what: str) -> bool:
    """A fault whose due breaches wait for it: the clock's inputs or the clock itself down."""
    return what in ("postgres stopped", "broker SIGSTOP", "kill -9 sla_clock")


def check_root_cause(due: float, left: float, cause: str | None, tolerance: float,
                     windows: list[tuple[str, float, float]]) -> str | None:
    """What is wrong with a breach's root cause (None: nothing), by the README's rule: a breach
    that leaves `tolerance` or more after its deadline carries system_delay; one that leaves sooner
    does not, unless its deadline fell in an outage of the clock's inputs (near such a window)."""
    late = left - due
    if late >= tolerance and cause != "system_delay":
        return f"breach left {late:.1f}s after its deadline (tolerance {tolerance:g}s) with root cause {cause}"
    inside = [w for w in windows if clock_input_outage(w[0]) and w[1] + INSIDE_OUTAGE <= due <= w[2]]
    if inside and cause != "system_delay":
        return (f"breach due {due - inside[0][1]:.1f}s into {inside[0][0]} left {late:.1f}s late with root cause "
                f"{cause}, not system_delay (nobody could log a touch)")
    if late < tolerance and cause == "system_delay":
        near = [w for w in windows if clock_input_outage(w[0])
                and w[1] - OUTAGE_MARGIN[0] <= due <= w[2] + OUTAGE_MARGIN[1]]
        if not near:
            return (f"breach left {late:.1f}s after its deadline (under the {tolerance:g}s tolerance), "
                    "its deadline in no outage, yet root cause system_delay")
    return None


def check_assignment_numbers(events: list[tuple[str, dict]], owner: str | None,
                             store_no: int | None) -> list[str]:
    """What is wrong with a lead's routing events (type, data), in store order: lead.assigned and
    lead.reassigned each use a new assignment number, together exactly 1..n; a lead.dequeued
    announces the number of the assignment out of the queue (one of those, once); the highest
    names `owner` (the router's store, None: not owned) and `store_no`."""
    problems = []
    made = [(d["assignment_no"], d["owner_id"] if kind == "lead.assigned" else d["to_owner_id"], kind)
            for kind, d in events if kind in ("lead.assigned", "lead.reassigned")]
    numbers = Counter(no for no, _, _ in made)
    if owner is not None and not made:
        problems.append(f"owned by {owner}, but no lead.assigned or lead.reassigned")
    for number, times in sorted(numbers.items()):
        if times > 1:
            problems.append(f"assignment_no {number} used {times} times "
                            f"({[(k, o) for no, o, k in made if no == number]})")
    if made and all(t == 1 for t in numbers.values()) and sorted(numbers) != list(range(1, len(numbers) + 1)):
        problems.append(f"assignment numbers {sorted(numbers)} are not 1..{len(numbers)}")
    dequeued = Counter(d.get("assignment_no") for kind, d in events if kind == "lead.dequeued")
    for number, times in sorted(dequeued.items(), key=lambda x: (x[0] is None, x[0] or 0)):
        if number is None:
            continue  # stored before the number was carried
        if times > 1:
            problems.append(f"lead.dequeued with assignment_no {number} {times} times")
        if number not in numbers:
            problems.append(f"lead.dequeued announces assignment_no {number}, no assignment carries it")
    if owner is not None and made:
        last_no, last_owner, kind = max(made)
        if last_owner != owner:
            problems.append(f"router store says {owner}, the last assignment ({kind} {last_no}) says {last_owner}")
        if store_no is not None and store_no != last_no:
            problems.append(f"router store holds assignment_no {store_no}, the last event {last_no}")
    return problems


async def _read_stores(conn: asyncpg.Connection) -> dict:
    """Everything the audit reads of the stores, in one snapshot."""
    got: dict = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        got["intake_leads"] = await conn.fetch("SELECT lead_id, source, external_id, received_at FROM intake.leads")
        got["intake_events"] = await published_events(conn, "intake")
        got["assignments"] = await conn.fetch("SELECT lead_id, owner_id, assignment_no, closed_at FROM router.assignments")
        got["queued"] = await conn.fetch("SELECT lead_id FROM router.queue")
        got["timers"] = await conn.fetch("SELECT sla_id, lead_id, metric, state, started_at, due_at, closed_at, "
                                         "root_cause FROM sla_clock.timers")
        got["escalations"] = await conn.fetch("SELECT escalation_id, sla_id, step, trigger_event_id "
                                              "FROM notifier.escalations")
        got["deliveries"] = await conn.fetch("SELECT notification_id, escalation_id, lead_id, idempotency_key, state, "
                                             "channel, recipient, step, kind FROM notifier.deliveries")
        got["events"] = {schema: got["intake_events"] if schema == "intake" else await published_events(conn, schema)
                         for schema in SERVICE_SCHEMAS}
        got["in_timeline"] = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM reporting.timeline")}
    return got


async def audit(database_url: str, ledger: Ledger, bootstrap: str | None = None,
                delivered_keys: set[str] | None = None, now: float | None = None,
                recovery_bound: float = RECOVERY_BOUND) -> Report:
    """Check the stores (and the topics, given `bootstrap`; the receiver's deliveries, given
    `delivered_keys`) against the ledger."""
    report = Report()
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        got = await _read_stores(conn)
    finally:
        await conn.close()
    # The snapshot's moment, near enough: a timer open past its deadline is judged against it.
    now = time.time() if now is None else now
    published: dict[str, set[str]] = defaultdict(set)  # what the snapshot says is on the topics
    for rows in got["events"].values():
        for r in rows:
            if r["sent"] and r["topic"] in PROJECTED_TOPICS:
                published[r["topic"]].add(r["event_id"])
    topics = await read_topics(bootstrap, PROJECTED_TOPICS, published) if bootstrap else None
    on_topics = topics.seen if topics is not None and not topics.short else None
    for short in topics.short if topics is not None else []:
        report.add(None, f"topic not read to its end: {short}")
    if topics is not None:
        report.figures["topic_records_past_end_offsets"] = topics.past_end

    intake_events = got["intake_events"]
    recorded_at: dict[str, datetime] = {}
    for r in intake_events:
        if r["event_type"] == "activity.recorded" and r["key"] not in recorded_at:
            recorded_at[r["key"]] = r["created_at"]
    received = Counter(r["key"] for r in intake_events if r["event_type"] == "lead.received")
    assignments = {r["lead_id"]: r for r in got["assignments"]}
    queued = {r["lead_id"] for r in got["queued"]}
    routing_events = defaultdict(list)
    terminal = defaultdict(list)
    outbox = defaultdict(list)
    for schema, rows in got["events"].items():
        for r in rows:
            outbox[r["key"]].append((schema, r))
            if schema == "router" and r["event_type"] in ("lead.assigned", "lead.reassigned", "lead.dequeued"):
                routing_events[r["key"]].append((r["event_type"], json.loads(r["payload"])["data"]))
            elif schema == "sla_clock" and r["event_type"] in TERMINAL:
                event = json.loads(r["payload"])
                terminal[event["data"]["sla_id"]].append((r["event_type"], event))
    timers = defaultdict(list)
    for r in got["timers"]:
        timers[r["lead_id"]].append(r)
    # Notifications by what they notify: the escalation step of one breach (its sla_id), to one
    # recipient, on one channel. (The notification id is derived from the escalation, and the
    # escalation from the breach event's id: a second breach event of one timer would notify again.)
    sla_of_event = {event["id"]: sla_id for sla_id, ends in terminal.items() for _, event in ends}
    escalations = {r["escalation_id"]: r for r in got["escalations"]}
    deliveries = defaultdict(list)
    per_step: dict[tuple, list[str]] = defaultdict(list)
    notified_slas: set[str] = set()
    for d in got["deliveries"]:
        deliveries[d["lead_id"]].append(d)
        esc = escalations.get(d["escalation_id"])
        sla_id = (esc["sla_id"] or sla_of_event.get(esc["trigger_event_id"], esc["trigger_event_id"])) if esc else None
        if sla_id is not None:
            notified_slas.add(sla_id)
        if d["kind"] == "single":
            step = d["step"] if d["step"] is not None else esc["step"] if esc else None
            per_step[(sla_id or f"escalation {d['escalation_id']}", step, d["recipient"], d["channel"])].append(
                d["notification_id"])

    by_external = defaultdict(list)
    for r in got["intake_leads"]:
        by_external[r["external_id"]].append(r)
    sent_by_external = {lead.external_id: lead for lead in ledger.leads}

    figures = Counter()
    lateness: list[float] = []
    after_recovery: list[float] = []
    causes: Counter = Counter()
    windows = fault_windows(ledger)
    tolerance = ledger.tolerance_seconds
    in_intake_not_sent = 0
    for r in got["intake_leads"]:
        sent = sent_by_external.get(r["external_id"])
        if sent is None:
            in_intake_not_sent += 1
            report.add(r["lead_id"], f"in intake (external id {r['external_id']}), never sent")
        elif not sent.accepted:
            in_intake_not_sent += 1
            what = f"{sent.probe} probe" if sent.probe else f"{sent.via} lead"
            report.add(r["lead_id"], f"{what} {sent.external_id} is in intake, but its sender was never told it "
                                     f"was accepted (last answer {sent.status}): half-written")
    figures["leads_in_intake_not_sent"] = in_intake_not_sent
    for sent in ledger.leads:
        if sent.probe:
            figures["probe_leads"] += 1
            if sent.external_id and not sent.external_id.startswith(PROBE_PREFIX):
                report.add(sent.lead_id, f"probe lead {sent.external_id} lacks the prefix {PROBE_PREFIX}")
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
        for i, touch in enumerate(sent.touches, 1):
            if not touch.accepted:
                report.add(lead_id, f"touch {i} (via {touch.via}, made at {datetime.fromtimestamp(touch.occurred_at, UTC).isoformat()}) "
                                    f"never accepted: last answer {touch.status}")

        # Ownership.
        owner = assignments.get(lead_id)
        owned = owner is not None and owner["closed_at"] is None
        if owned and lead_id in queued:
            report.add(lead_id, f"owned by {owner['owner_id']} and queued at once")
        elif not owned and lead_id not in queued:
            report.add(lead_id, "neither owned nor queued")
        for problem in check_assignment_numbers(routing_events[lead_id], owner["owner_id"] if owned else None,
                                                owner["assignment_no"] if owned else None):
            report.add(lead_id, problem)

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
            # Touches never accepted are violations above; the system could not know of them.
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
                    due_at, left = _epoch(timer["due_at"]), _epoch(ends[0][1]["time"])
                    cause = ends[0][1]["data"].get("root_cause")
                    lateness.append(left - due_at)
                    problem = check_root_cause(due_at, left, cause, tolerance, windows)
                    if problem:
                        report.add(lead_id, f"{problem} (due {datetime.fromtimestamp(due_at, UTC).isoformat()})")
                    # Due while something was down: how soon after recovery it left, and as what.
                    for what, began, ended in windows:
                        if recovery_fault(what) and began <= due_at <= ended:
                            after_recovery.append(left - ended)
                            causes[cause] += 1
                            if left - ended > recovery_bound:
                                report.add(lead_id, f"breach due during {what} left {left - ended:.1f}s after the "
                                                    f"fault ended (bound {recovery_bound:g}s)")
                            break
                    if cause == "system_delay":
                        figures["breaches_system_delay"] += 1
                if timer["sla_id"] not in notified_slas:
                    report.add(lead_id, f"breached ({timer['sla_id']}), but no notification was recorded")

        # Notifications.
        for d in deliveries[lead_id]:
            figures["notifications"] += 1
            esc = escalations.get(d["escalation_id"])
            if esc is None:
                report.add(lead_id, f"notification {d['notification_id']} of escalation {d['escalation_id']}, "
                                    "which the notifier does not hold")
            if d["state"] != "sent":
                report.add(lead_id, f"notification {d['notification_id']} is {d['state']}, not sent")
            if delivered_keys is not None and d["idempotency_key"] not in delivered_keys:
                report.add(lead_id, f"notification {d['notification_id']} never reached the receiver")

        # Publication and the timeline.
        for schema, row in outbox[lead_id]:
            if row["topic"] not in PROJECTED_TOPICS:
                continue
            figures["events"] += 1
            if row["event_id"] not in got["in_timeline"]:
                report.add(lead_id, f"reporting's timeline lacks {row['event_type']} ({schema}, {row['event_id']})")
            if not row["sent"]:
                report.add(lead_id, f"{schema}'s {row['event_type']} not published"
                                    f"{' (parked)' if row['parked'] else ''}")
            elif on_topics is not None and on_topics[row["topic"]][row["event_id"]] == 0:
                report.add(lead_id, f"{schema}'s {row['event_type']} marked sent but not on {row['topic']}")
            elif on_topics is not None and on_topics[row["topic"]][row["event_id"]] > 1:
                figures["events_published_more_than_once"] += 1
    lead_of_sla = {t["sla_id"]: t["lead_id"] for rows in timers.values() for t in rows}
    for (sla_id, step, recipient, channel), ids in per_step.items():
        if len(ids) != 1:
            report.add(lead_of_sla.get(sla_id), f"{len(ids)} notifications for {sla_id} step {step} to {recipient} "
                                                f"via {channel}: {sorted(ids)}")
    report.figures = {**report.figures, **figures}
    report.figures["touches_accepted"] = sum(1 for lead in ledger.leads for t in lead.touches if t.accepted)
    report.figures["tolerance_s"] = tolerance
    report.figures["recovery_bound_s"] = recovery_bound
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
