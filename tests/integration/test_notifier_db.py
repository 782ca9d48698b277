"""Escalations and webhook delivery against a real receiver: retries with backoff, permanent
failures, signatures, and no double sends."""
from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from leadsla.devstack import free_port
from leadsla.services.notifier.handlers import deliver_due, escalate
from leadsla.shared.clock import ManualClock
from leadsla.shared.events import SlaEventData, new_event
from leadsla.webhook_receiver import WebhookReceiver
from tests.support import outbox_events

SECRET = "notifier-test-secret"


class ScriptedReceiver:
    """A real HTTP receiver answering with scripted statuses (204 once the script runs out)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.statuses: list[int] = []
        self.received: list[tuple[dict, bool]] = []
        self._lock = threading.Lock()
        self._server = WebhookReceiver(self.port, SECRET.encode(), self._record, self._status)

    def _status(self) -> int:
        with self._lock:
            return self.statuses.pop(0) if self.statuses else 204

    def _record(self, message: dict, valid: bool) -> None:
        with self._lock:
            self.received.append((message, valid))


@pytest.fixture
def clock() -> ManualClock:
    # Signatures carry the send time and receivers refuse old ones, so start from the real time.
    return ManualClock(datetime.now(UTC))


@pytest.fixture
def receiver():
    r = ScriptedReceiver()
    r._server.start()
    yield r
    r._server.stop()


def config_for(receiver: ScriptedReceiver, max_attempts: int = 3) -> str:
    return f"""
owners: [{{id: alice, manager_id: maria}}, {{id: maria}}]
channels:
  hook: {{url: "http://127.0.0.1:{receiver.port}/hook", secret: "{SECRET}", max_attempts: {max_attempts}}}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps: [{{step: 1, notify: [owner, manager], channels: [hook]}}]
"""


def breach(lead_id: str, now):
    return new_event("sla.breached", service="sla_clock", lead_id=lead_id, time=now, data=SlaEventData(
        lead_id=lead_id, sla_id="s", metric="first_response", policy_id="p", policy_version=1, owner_id="alice",
        due_at=now, breached_at=now, root_cause="owner_missed"))


async def run(ctx, fn, *args):
    async with ctx.uow() as uow:
        result = await fn(uow, *args)
        await uow.commit()
    return result


async def test_a_breach_notifies_owner_and_manager_once_even_if_redelivered(make_ctx, clock, engine, receiver):
    ctx = make_ctx("notifier", config_for(receiver))
    lead_id = str(uuid.uuid4())
    trigger = breach(lead_id, clock.now())
    await run(ctx, escalate, ctx.config.config, trigger, clock.now())
    await run(ctx, escalate, ctx.config.config, trigger, clock.now())  # the same event delivered again
    async with httpx.AsyncClient() as client:
        assert await run(ctx, deliver_due, ctx.config.config, client, clock.now()) == 2
        assert await run(ctx, deliver_due, ctx.config.config, client, clock.now() + timedelta(hours=1)) == 0

    assert sorted(m["recipient"]["id"] for m, _ in receiver.received) == ["alice", "maria"]
    assert all(valid for _, valid in receiver.received)
    events = await outbox_events(engine, "notifier", lead_id)
    assert [e.type for e in events] == ["escalation.triggered", "notification.sent", "notification.sent"]
    assert events[0].data["recipients"] == ["alice", "maria"] and events[0].causationid == trigger.id


async def test_server_errors_are_retried_with_backoff_then_sent(make_ctx, clock, engine, receiver):
    ctx = make_ctx("notifier", config_for(receiver).replace("notify: [owner, manager]", "notify: [owner]"))
    lead_id = str(uuid.uuid4())
    receiver.statuses = [503, 503]
    await run(ctx, escalate, ctx.config.config, breach(lead_id, clock.now()), clock.now())
    now = clock.now()
    async with httpx.AsyncClient() as client:
        assert await run(ctx, deliver_due, ctx.config.config, client, now) == 1  # 503
        assert await run(ctx, deliver_due, ctx.config.config, client, now) == 0  # not due again yet
        assert await run(ctx, deliver_due, ctx.config.config, client, now + timedelta(seconds=1)) == 1  # 503
        assert await run(ctx, deliver_due, ctx.config.config, client, now + timedelta(seconds=2)) == 0
        assert await run(ctx, deliver_due, ctx.config.config, client, now + timedelta(seconds=3)) == 1  # 204
    [sent] = [e for e in await outbox_events(engine, "notifier", lead_id) if e.type.startswith("notification.")]
    assert sent.type == "notification.sent" and sent.data["attempts"] == 3
    keys = {m["_headers"]["idempotency-key"] for m, _ in receiver.received}
    assert len(receiver.received) == 3 and keys == {sent.data["idempotency_key"]}


async def test_client_errors_fail_at_once_and_are_reported(make_ctx, clock, engine, receiver):
    ctx = make_ctx("notifier", config_for(receiver).replace("notify: [owner, manager]", "notify: [owner]"))
    lead_id = str(uuid.uuid4())
    receiver.statuses = [410]
    await run(ctx, escalate, ctx.config.config, breach(lead_id, clock.now()), clock.now())
    async with httpx.AsyncClient() as client:
        await run(ctx, deliver_due, ctx.config.config, client, clock.now())
        assert await run(ctx, deliver_due, ctx.config.config, client, clock.now() + timedelta(hours=1)) == 0
    [failed] = [e for e in await outbox_events(engine, "notifier", lead_id) if e.type.startswith("notification.")]
    assert failed.type == "notification.failed"
    assert failed.data["attempts"] == 1 and failed.data["error"] == "HTTP 410"
