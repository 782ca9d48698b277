"""The whole slice, each step real: five `leadsla serve` processes, the broker, Postgres and a
webhook receiver. lead -> assignment -> SLA timer -> breach -> signed webhook -> timeline."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from leadsla.devstack import ServiceProcess, free_port, wait_until
from leadsla.webhook_receiver import WebhookReceiver
from shared import tracing
from shared.auth import create_key
from shared.config_store import apply_config
from shared.db import deadletters
from shared.events import TOPIC_DEADLETTER, TOPIC_INTAKE, TOPIC_SUBMISSIONS_RAW
from shared.eventstore import EVENTS, read_stream
from shared.settings import SERVICE_PORTS
from tests.integration.own_database import OwnDatabase, own_database  # noqa: F401 - a fixture
from tests.support import TopicReader, eventually, stored_events

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = "e2e-webhook-secret"
CONFIG = """
tiers:
  default: C
  rules:
    - {tier: A, when: {intent: [demo_request]}}
    - {tier: B, when: {intent: [trial]}}
    - {tier: R, when: {intent: [restart_probe]}}
owners:
  - {id: alice, manager_id: maria}
  - {id: bob, manager_id: maria}
  - {id: maria}
teams: [{id: sdr, members: [alice, bob]}]
routing:
  rules: [{id: inbound, team: sdr}]
sla_policies:
  - {id: demo-fast, filter: {tiers: [A]}, metrics: {first_response: {target: 3s, warn_at: [50]}}}
  - {id: trial-slow, filter: {tiers: [B]}, metrics: {first_response: {target: 10m}}}
  - {id: restart, filter: {tiers: [R]}, metrics: {first_response: {target: 8s, warn_at: []}}}
channels:
  hook: {url: "http://127.0.0.1:%(port)d/hook", secret: "%(secret)s"}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps: [{step: 1, notify: [owner], channels: [hook]}]
intake:
  sources: {chat: {}}  # a configured source: Kafka records naming it count under it
"""


@dataclass
class System:
    services: dict[str, ServiceProcess]
    source_key: str
    admin_key: str
    webhooks: list[tuple[dict, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, service: str) -> str:
        return self.services[service].url

    def hooks_for(self, lead_id: str) -> list[tuple[dict, bool]]:
        with self.lock:
            return [(m, ok) for m, ok in self.webhooks if m.get("lead_id") == lead_id]


@pytest.fixture(scope="module")
def engine(own_database: OwnDatabase) -> AsyncEngine:  # noqa: F811
    """A database of the pipeline's own: integration tests change state tables by hand (an
    emptied queue, cancelled deliveries), and the replay test here verifies every table whole."""
    return own_database.engine


@pytest.fixture(scope="module")
def database_url(own_database: OwnDatabase) -> str:  # noqa: F811
    return own_database.url


@pytest.fixture(scope="module")
async def system(database_url: str, kafka_bootstrap: str, engine, tmp_path_factory) -> AsyncIterator[System]:
    receiver_port = free_port()
    async with engine.begin() as conn:
        await apply_config(conn, CONFIG % {"port": receiver_port, "secret": WEBHOOK_SECRET})
        source_key = await create_key(conn, "webform", "source")
        admin_key = await create_key(conn, "e2e-admin", "admin")
    logs = Path(tmp_path_factory.mktemp("logs"))
    env = {"LEADSLA_DATABASE_URL": database_url, "LEADSLA_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "LEADSLA_TIMER_POLL_SECONDS": "0.2", "LEADSLA_TOPIC_PARTITIONS": "3",
           "LEADSLA_KAFKA_SESSION_TIMEOUT_MS": "2000"}
    services = {name: ServiceProcess(name, free_port(), env, logs / f"{name}.log") for name in SERVICE_PORTS}
    system = System(services, source_key, admin_key)

    def record(message: dict, valid: bool) -> None:
        with system.lock:
            system.webhooks.append((message, valid))

    receiver = WebhookReceiver(receiver_port, WEBHOOK_SECRET.encode(), record)
    receiver.start()
    for service in services.values():
        service.start()
    try:
        wait_until(lambda: all(s.ready() for s in services.values()), 90, "all five services ready", 0.2)
        yield system
    finally:
        for service in services.values():
            service.stop()
        receiver.stop()


async def post_lead(system: System, intent: str, headers: dict[str, str] | None = None) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{system.url('intake')}/v1/leads",
            headers={"Authorization": f"Bearer {system.source_key}", **(headers or {})},
            json={"contact": {"email": f"{uuid.uuid4().hex[:10]}@example.com", "country": "US"},
                  "company": {"name": "Acme"}, "intent": {"type": intent}},
        )
    assert response.status_code == 201, response.text
    return response.json()["lead_id"]


async def timeline(system: System, lead_id: str) -> list[dict]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{system.url('reporting')}/v1/leads/{lead_id}",
                                    headers={"Authorization": f"Bearer {system.admin_key}"})
    return response.json()["timeline"] if response.status_code == 200 else []


async def wait_for_types(system: System, lead_id: str, types: set[str], timeout: float = 40) -> list[dict]:
    async def probe() -> list[dict] | None:
        events = await timeline(system, lead_id)
        return events if types <= {e["type"] for e in events} else None

    return await eventually(probe, timeout=timeout, what=f"{sorted(types)} in the timeline of {lead_id}")


async def test_unanswered_lead_breaches_and_the_owner_is_notified(system: System) -> None:
    lead_id = await post_lead(system, "demo_request")

    hooks = await eventually(lambda: system.hooks_for(lead_id), timeout=40, what="the breach webhook")
    message, signature_ok = hooks[0]
    assert signature_ok
    assert message["trigger"]["type"] == "sla.breached"
    assert message["trigger"]["root_cause"] == "owner_missed"
    assert message["recipient"]["role"] == "owner"
    assert message["_headers"]["idempotency-key"] == message["notification_id"]

    events = await wait_for_types(system, lead_id, {
        "lead.received", "lead.assigned", "sla.started", "sla.warning", "sla.breached",
        "escalation.triggered", "notification.sent"})
    order = [e["type"] for e in events]
    assert order.index("lead.received") < order.index("lead.assigned") < order.index("sla.started")
    assert order.index("sla.warning") < order.index("sla.breached") < order.index("notification.sent")
    assigned = next(e for e in events if e["type"] == "lead.assigned")["data"]
    assert message["recipient"]["id"] == assigned["owner_id"] in ("alice", "bob")
    breach = next(e for e in events if e["type"] == "sla.breached")["data"]
    # The breach leaves at the deadline, not at the next morning's batch job.
    assert breach["breached_at"] == breach["due_at"]


async def test_the_callers_traceparent_follows_the_lead_through_every_hop(system: System, engine) -> None:
    """W3C trace context from the HTTP request through intake, router, sla_clock (a breach fired by
    its timer loop) and notifier (an escalation step fired by its loop, then the delivery): every
    event is a span of the caller's trace, and the webhook carries it too. (The Kafka headers of
    the same records are checked by tests/e2e/conftest.py.)"""
    caller_trace = uuid.uuid4().hex
    lead_id = await post_lead(system, "demo_request", {"traceparent": f"00-{caller_trace}-{'ab' * 8}-01"})
    chain = ["lead.received", "lead.assigned", "sla.started", "sla.warning", "sla.breached",
             "escalation.triggered", "notification.sent"]
    await wait_for_types(system, lead_id, set(chain))
    events = [e for service in SERVICE_PORTS for e in await stored_events(engine, service, lead_id)]
    assert set(chain) <= {e.type for e in events}
    spans = {e.type: tracing.parse(e.traceparent) for e in events}
    assert {t.trace_id for t in spans.values()} == {caller_trace}, {k: str(v) for k, v in spans.items()}
    assert len({t.span_id for t in spans.values()}) == len(spans)  # each event a span of its own
    [(hook, valid)] = system.hooks_for(lead_id)
    assert valid and tracing.parse(hook["trigger"]["traceparent"]).trace_id == caller_trace


async def test_a_touch_in_time_meets_the_sla(system: System) -> None:
    lead_id = await post_lead(system, "trial")
    await wait_for_types(system, lead_id, {"sla.started"})
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{system.url('intake')}/v1/leads/{lead_id}/activities",
                                     headers={"Authorization": f"Bearer {system.source_key}"},
                                     json={"type": "call", "actor": "alice", "outcome": "connected"})
        assert response.status_code == 202
        await wait_for_types(system, lead_id, {"activity.recorded", "sla.met"})
        sla = (await client.get(f"{system.url('sla_clock')}/v1/leads/{lead_id}/sla",
                                headers={"Authorization": f"Bearer {system.source_key}"})).json()
    [timer] = sla["timers"]
    assert timer["state"] == "met" and timer["remaining_seconds"] > 500
    assert system.hooks_for(lead_id) == []


async def test_kafka_submissions_are_accepted_and_bad_records_dead_lettered(
    system: System, kafka_bootstrap: str, producer
) -> None:
    external_id = f"kafka-{uuid.uuid4().hex[:8]}"
    body = (b'{"source": "chat", "external_id": "%s", "contact": {"email": "k@example.com"},'
            b' "intent": {"type": "trial"}}') % external_id.encode()
    garbage = b"{this is not json"
    async with TopicReader(kafka_bootstrap, TOPIC_INTAKE) as intake, \
            TopicReader(kafka_bootstrap, TOPIC_DEADLETTER) as deadletter:
        await producer.send_and_wait(TOPIC_SUBMISSIONS_RAW, garbage, key=b"whatever")
        await producer.send_and_wait(TOPIC_SUBMISSIONS_RAW, body)
        received = await intake.wait_for(
            lambda es: any(e.data.get("external_id") == external_id for e in es), what="the Kafka lead")
        letters = await deadletter.wait_for(
            lambda es: any(base64.b64decode(e.data["original_bytes_b64"]) == garbage for e in es),
            what="the dead letter")
    lead = next(e for e in received if e.data.get("external_id") == external_id)
    assert lead.type == "lead.received" and lead.data["source"] == "chat"
    letter = next(e for e in letters if base64.b64decode(e.data["original_bytes_b64"]) == garbage).data
    assert letter["topic"] == TOPIC_SUBMISSIONS_RAW and letter["service"] == "intake"
    assert letter["error"].startswith("undecodable: not JSON")


async def test_compressed_kafka_submissions_are_read_with_every_codec(system: System, kafka_bootstrap: str) -> None:
    """Producers compress (Java clients often with lz4, snappy or zstd). Once, a batch in any codec
    but gzip crash-looped intake's consumer: the libraries to read it were not installed."""
    external_ids = {codec: f"{codec}-{uuid.uuid4().hex[:8]}" for codec in ("gzip", "snappy", "lz4", "zstd")}
    async with TopicReader(kafka_bootstrap, TOPIC_INTAKE) as intake:
        for codec, external_id in external_ids.items():
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type=codec)
            await producer.start()
            try:
                await producer.send_and_wait(TOPIC_SUBMISSIONS_RAW, json.dumps(
                    {"source": "chat", "external_id": external_id, "contact": {"email": f"{external_id}@example.com"},
                     "intent": {"type": "trial"}}).encode(), key=external_id.encode())
            finally:
                await producer.stop()
        received = await intake.wait_for(lambda es: set(external_ids.values()) <= {
            e.data.get("external_id") for e in es}, what="a lead from each compressed batch")
    assert {e.data.get("external_id") for e in received} >= set(external_ids.values())
    assert system.services["intake"].ready()


async def test_sla_clock_killed_mid_timer_still_breaches_exactly_once(system: System, engine) -> None:
    lead_id = await post_lead(system, "restart_probe")
    async with httpx.AsyncClient() as client:
        async def open_timer() -> dict | None:
            r = await client.get(f"{system.url('sla_clock')}/v1/leads/{lead_id}/sla",
                                 headers={"Authorization": f"Bearer {system.source_key}"})
            return r.json()["timers"][0] if r.status_code == 200 else None

        timer = await eventually(open_timer, what="the timer to start")
    assert timer["state"] == "running"
    due = datetime.fromisoformat(timer["due_at"]).timestamp()

    sla_clock = system.services["sla_clock"]
    sla_clock.kill()  # SIGKILL: no shutdown hooks, the timer is only in Postgres now
    wait_until(lambda: time.time() > due + 1, 30, "the deadline to pass while sla_clock is down")
    assert system.hooks_for(lead_id) == []  # nobody fired it while the clock was dead
    sla_clock.start()

    hooks = await eventually(lambda: system.hooks_for(lead_id), timeout=60,
                             what="the breach webhook after restart")
    events = await wait_for_types(system, lead_id, {"sla.breached", "notification.sent"}, timeout=60)
    assert [e["type"] for e in events].count("sla.breached") == 1
    assert len(hooks) == 1 and hooks[0][1]
    async with engine.connect() as conn:
        table = EVENTS["sla_clock"]
        breaches = await conn.scalar(select(func.count()).select_from(table).where(
            table.c.key == lead_id, table.c.event_type == "sla.breached"))
    assert breaches == 1
    # Leave the system as we found it: every service ready (the restarted one has rejoined its group).
    wait_until(sla_clock.ready, 90, "sla_clock to rejoin", 0.2)
    assert len(system.hooks_for(lead_id)) == 1


async def test_a_1mb_record_and_a_poison_record_stop_nothing(system: System, producer, engine) -> None:
    """Once, a 1 MB record's dead letter (base64, over the broker's limit) blocked intake's relay
    for good, and a 5,000-digit number crash-looped intake (it is a lead now, the number kept as
    sent). The 1 MB record and JSON nested 100,000 deep are dead letters, and the leads behind
    them, from Kafka and from HTTP, reach reporting."""
    big = b'{"contact": {"email": "big@example.com"}, "intent": {"type": "trial"}, "x": "' + \
        b"y" * 1_000_000 + b'"}'
    poison = b"[" * 100_000 + b"]" * 100_000
    external_id = f"after-{uuid.uuid4().hex[:8]}"
    follower = json.dumps({"source": "chat", "external_id": external_id,
                           "contact": {"email": f"{external_id}@example.com"}, "intent": {"type": "trial"}}).encode()
    for value in (big, poison, follower):
        await producer.send_and_wait(TOPIC_SUBMISSIONS_RAW, value, key=b"one-partition")
    http_lead = await post_lead(system, "trial")

    async def follower_id() -> str | None:
        t = EVENTS["intake"]
        async with engine.connect() as conn:
            return await conn.scalar(select(t.c.key).where(
                t.c.event_type == "lead.received", t.c.payload.like(f'%"{external_id}"%'.encode())))

    kafka_lead = await eventually(follower_id, timeout=60, what="the lead behind the 1 MB and poison records")
    for lead_id in (kafka_lead, http_lead):
        await wait_for_types(system, lead_id, {"lead.received", "lead.assigned"})
    async with engine.connect() as conn:
        kept = (await conn.execute(select(deadletters.c.original, deadletters.c.error)
                                   .where(deadletters.c.key == "one-partition"))).all()
    assert {row.original for row in kept} >= {big, poison}
    assert system.services["intake"].ready()  # alive and ready, never restarted in between


async def test_every_services_state_is_a_replay_of_its_store(system: System, engine, database_url: str,
                                                             kafka_bootstrap: str) -> None:
    """After the traffic above (breaches, touches, a restart, dead letters) plus a touched lead and
    a reassignment, `leadsla replay <service> --verify` rebuilds each service's state aside from
    its store (reporting: from the topics) and finds it equal to the live tables."""
    lead_id = await post_lead(system, "trial")
    await wait_for_types(system, lead_id, {"lead.assigned", "sla.started"})
    headers = {"Authorization": f"Bearer {system.admin_key}"}
    async with httpx.AsyncClient() as client:
        touched = await client.post(f"{system.url('intake')}/v1/leads/{lead_id}/activities",
                                    headers={"Authorization": f"Bearer {system.source_key}"},
                                    json={"type": "call", "outcome": "connected"})
        assert touched.status_code in (201, 202), touched.text
        moved = await client.post(f"{system.url('router')}/v1/leads/{lead_id}/reassign", headers=headers,
                                  json={"owner_id": None, "reason": "e2e"})
        assert moved.status_code == 202, moved.text
    await wait_for_types(system, lead_id, {"activity.recorded", "sla.met", "lead.reassigned"})

    # The lead's events, read back from each service's own store, in order.
    expected = {"intake": ["lead.received", "activity.recorded"], "router": ["lead.assigned", "lead.reassigned"],
                "sla_clock": ["sla.started", "sla.met"]}
    for service, types in expected.items():
        async with engine.connect() as conn:
            stream = await read_stream(conn, service, lead_id)
        emitted = [e.event.type for e in stream]
        assert set(types) <= set(emitted) and emitted.index(types[0]) < emitted.index(types[1]), (service, emitted)
        assert [e.version for e in stream] == list(range(1, len(stream) + 1))
        assert [e.position for e in stream] == sorted(e.position for e in stream)

    env = {**os.environ, "LEADSLA_DATABASE_URL": database_url, "LEADSLA_KAFKA_BOOTSTRAP": kafka_bootstrap}
    for service in SERVICE_PORTS:
        done = subprocess.run([sys.executable, "-m", "leadsla.cli", "replay", service, "--verify"], env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{service}: {done.stdout}\n{done.stderr}"
        said = done.stdout + done.stderr  # the CLI's console writes to stderr
        assert "live state matches a rebuild" in said and "events/s" in said, said


async def test_every_service_stops_cleanly_on_sigterm(system: System) -> None:
    """Last in the module: what an orchestrator does on deploy. A hang would end in SIGKILL (-9)."""
    codes = {name: service.stop() for name, service in system.services.items()}
    assert codes == {name: 0 for name in system.services}


def test_service_logs_are_json_lines_without_contact_details(system: System) -> None:
    """After the run above (services stopped): every line each service wrote, its own and its
    libraries', is one JSON object, and no lead's email address reached a log."""
    for name, service in system.services.items():
        lines = service.log_path.read_text().splitlines()
        assert lines, name
        for line in lines:
            record = json.loads(line)
            assert isinstance(record, dict) and {"event", "level", "timestamp"} <= set(record), (name, line)
        assert "@example.com" not in service.log_path.read_text(), name
