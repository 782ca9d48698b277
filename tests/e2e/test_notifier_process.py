"""The notifier as `leadsla serve notifier`: SIGKILLed while a webhook is in flight, it sends the
message again after the restart with the same idempotency key (never a new one) and records it
once; and a CRM subscription made over HTTP gets assignments from Kafka, in order, signed."""
from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from leadsla.devstack import ServiceProcess, free_port, wait_until
from services.notifier.domain import SIGNATURE_HEADER, verify
from shared.config_store import apply_config
from shared.events import CONTENT_TYPE, TOPIC_SLA, CloudEvent, SlaBreached, new_event
from shared.eventstore import EVENTS
from shared.tracing import record_headers
from tests.integration.receivers import StallingReceiver
from tests.support import eventually

pytestmark = pytest.mark.e2e

SECRET = "crash-test-secret"
CONFIG = """
owners: [{id: alice}]
channels:
  hook: {url: "http://127.0.0.1:%(port)d/hook", secret: "%(secret)s", timeout_seconds: 60}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps: [{step: 1, notify: [owner], channels: [hook]}]
notifier: {lease_seconds: 2}
"""


async def test_notifier_killed_mid_delivery_resends_with_the_same_key(database_url, kafka_bootstrap, engine,
                                                                     producer, tmp_path_factory) -> None:
    lead_id = str(uuid.uuid4())
    receiver = StallingReceiver(holds=lambda body: lead_id.encode() in body)

    def mine() -> list[tuple[dict[str, str], bytes]]:
        return [(headers, body) for headers, body in receiver.arrivals if lead_id.encode() in body]

    async with engine.begin() as conn:
        await apply_config(conn, CONFIG % {"port": receiver.port, "secret": SECRET})
    env = {"LEADSLA_DATABASE_URL": database_url, "LEADSLA_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "LEADSLA_TOPIC_PARTITIONS": "3"}
    notifier = ServiceProcess("notifier", free_port(), env, Path(tmp_path_factory.mktemp("logs")) / "notifier.log")
    notifier.start()
    try:
        wait_until(notifier.ready, 90, "the notifier to be ready", 0.2)
        now = datetime.now(UTC)
        breach = new_event("sla.breached", service="sla_clock", lead_id=lead_id, time=now, data=SlaBreached(
            lead_id=lead_id, sla_id=f"sla-{lead_id}", metric="first_response", policy_id="p", policy_version=1,
            owner_id="alice", due_at=now, breached_at=now, root_cause="owner_missed"))
        await producer.send_and_wait(TOPIC_SLA, breach.to_bytes(), key=lead_id.encode(),
                                     headers=record_headers(breach.to_bytes(), CONTENT_TYPE))

        await eventually(mine, timeout=60, what="the webhook to arrive")
        notifier.kill()  # SIGKILL with the request in flight: sent, never recorded
        receiver.release.set()
        notifier.start()

        await eventually(lambda: len(mine()) >= 2, timeout=90, what="the resend after the restart")
        (first_headers, first_body), (second_headers, second_body) = mine()[:2]
        assert first_headers["idempotency-key"] == second_headers["idempotency-key"]
        assert first_body == second_body
        for headers, body in mine()[:2]:
            assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER.lower()], int(time.time()))

        table = EVENTS["notifier"]

        async def sent() -> list[CloudEvent]:
            async with engine.connect() as conn:
                rows = await conn.execute(select(table.c.payload).where(
                    table.c.key == lead_id, table.c.event_type.like("notification.%")))
                return [CloudEvent.from_bytes(r.payload) for r in rows]

        [result] = await eventually(sent, timeout=30, what="notification.sent")
        assert result.type == "notification.sent" and result.data["attempts"] == 2
        assert result.data["idempotency_key"] == first_headers["idempotency-key"]
        assert len(mine()) == 2
    finally:
        assert notifier.stop() == 0
        receiver.stop()


async def test_a_crm_subscription_gets_assignments_from_the_running_notifier(database_url, kafka_bootstrap, engine,
                                                                             producer, tmp_path_factory) -> None:
    from shared.auth import create_key
    from shared.events import TOPIC_ROUTING, LeadAssigned
    from tests.integration.receivers import HttpReceiver

    async with engine.begin() as conn:
        await apply_config(conn, "owners: [{id: alice}]\n")
        admin_key = await create_key(conn, "crm-e2e", "admin")
    env = {"LEADSLA_DATABASE_URL": database_url, "LEADSLA_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "LEADSLA_TOPIC_PARTITIONS": "3"}
    notifier = ServiceProcess("notifier", free_port(), env, Path(tmp_path_factory.mktemp("logs")) / "notifier.log")
    notifier.start()
    with HttpReceiver() as crm:
        try:
            wait_until(notifier.ready, 90, "the notifier to be ready", 0.2)
            async with httpx.AsyncClient() as client:
                response = await client.post(f"{notifier.url}/v1/subscriptions",
                                             headers={"Authorization": f"Bearer {admin_key}"},
                                             json={"url": crm.url, "event_types": ["lead.assigned"]})
            assert response.status_code == 201, response.text
            crm.secret = response.json()["secret"].encode()
            lead_id = str(uuid.uuid4())
            now = datetime.now(UTC)
            sent = [new_event("lead.assigned", service="router", lead_id=lead_id, time=now, data=LeadAssigned(
                lead_id=lead_id, owner_id="alice", team_id=None, rule_id=None, method="round_robin", reason="rule",
                assignment_no=n, candidates=[], assigned_at=now)) for n in (1, 2, 3)]
            for event in sent:
                await producer.send_and_wait(TOPIC_ROUTING, event.to_bytes(), key=lead_id.encode(),
                                             headers=record_headers(event.to_bytes(), CONTENT_TYPE))
            await eventually(lambda: len([m for m, _ in crm.received if m.get("subject") == lead_id]) >= 3,
                             timeout=60, what="three assignments at the CRM")
            got = [(m, ok) for m, ok in crm.received if m.get("subject") == lead_id]
            assert [m["id"] for m, _ in got] == [e.id for e in sent]
            assert all(ok for _, ok in got)
            assert [m["_headers"]["idempotency-key"] for m, _ in got] == [e.id for e in sent]
        finally:
            assert notifier.stop() == 0
