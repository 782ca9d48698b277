"""The chaos run: the five services as processes on a Postgres and a broker of the run's own
(bench/faults.py's Stack), a load generator sending leads and touches over HTTP and both raw
Kafka topics, and a fault injector that kills services (-9), freezes the broker (SIGSTOP) and
stops Postgres while the load runs. While Postgres is down and while the broker is frozen it also
probes the outage contract (503 + Retry-After, /readyz false; intake accepting while the broker
is frozen). What was sent goes to a Ledger for the auditor."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.faults import Stack
from leadsla.devstack import free_port
from leadsla.webhook_receiver import WebhookReceiver
from shared.auth import create_key
from shared.bus import make_producer
from shared.db import make_engine
from tests.chaos.ledger import PROBE_PREFIX, Ledger, SentLead, Touch

WEBHOOK_SECRET = "chaos-webhook-secret"
CONFIG = """
tiers: {default: A}
owners:
  - {id: alice, manager_id: maria}
  - {id: bob, manager_id: maria}
  - {id: carol, manager_id: maria}
  - {id: maria}
teams: [{id: sdr, members: [alice, bob, carol]}]
lead_ops: [maria]  # so every breach reaches someone, owned or not
routing:
  rules: [{id: inbound, team: sdr}]
sla_policies:
  - id: chaos
    filter: {tiers: [A]}
    start_on: received
    calendar: always
    metrics: {first_response: {target: %(target)gs, warn_at: [50]}}
channels:
  hook: {url: "http://127.0.0.1:%(port)d/hook", secret: "%(secret)s"}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps: [{step: 1, notify: [owner, lead_ops], channels: [hook]}]
intake:
  rate_limit: {rate: 2000, burst: 4000}
  sources: {chat: {}}
"""
RAW_SUBMISSIONS, RAW_ACTIVITIES = "leads.submissions.raw", "leads.activities.raw"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


@dataclass
class Outage:
    """What the probes saw during one fault."""

    kind: str
    problems: list[str] = field(default_factory=list)
    checked: int = 0


class ChaosRun:
    def __init__(self, workdir: Path, target: float, seed: int) -> None:
        self.workdir, self.target, self.seed = workdir, target, seed
        self.rng = random.Random(seed)
        self.stack = Stack(workdir)
        self.ledger = Ledger(target_seconds=target, tolerance_seconds=float(
            os.environ.get("LEADSLA_SLA_DELAY_TOLERANCE_SECONDS", "60")))  # the services inherit this env
        self.outages: list[Outage] = []
        self.server_errors: list[str] = []
        self._lock = threading.Lock()
        self._delivered: list[str] = []
        self._faulting = asyncio.Event()

    # ---- the system ------------------------------------------------------------------------

    async def start(self) -> None:
        port = free_port()
        self.receiver = WebhookReceiver(port, WEBHOOK_SECRET.encode(), self._record_webhook)
        self.receiver.start()
        config = CONFIG % {"target": self.target, "port": port, "secret": WEBHOOK_SECRET}
        self.source_key, self.bootstrap = await self.stack.start(int(self.target), config)
        engine = make_engine(self.stack.database_url)
        async with engine.begin() as conn:
            self.admin_key = await create_key(conn, "chaos-admin", "admin")
        await engine.dispose()
        self.producer = make_producer(self.bootstrap)
        await self.producer.start()

    async def stop(self) -> None:
        if getattr(self, "producer", None) is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), 10)
            except Exception:  # noqa: BLE001 - the broker may be gone already
                pass
        await asyncio.to_thread(self.stack.stop)
        self.receiver.stop()

    @property
    def database_url(self) -> str:
        return self.stack.database_url

    def url(self, service: str) -> str:
        return self.stack.services[service].url

    def _record_webhook(self, message: dict, valid: bool) -> None:
        if valid:
            with self._lock:
                self._delivered.append(message.get("_headers", {}).get("idempotency-key", ""))

    def delivered_keys(self) -> set[str]:
        with self._lock:
            return set(self._delivered)

    # ---- load ------------------------------------------------------------------------------

    async def _post(self, client: httpx.AsyncClient, path: str, body: dict, ok: tuple[int, ...],
                    method: str = "POST", give_up_after: float = 90) -> tuple[httpx.Response | None, str]:
        """A real sender: retry 503/429 after Retry-After and connection errors after a moment.
        Returns the final response (None: gave up) and the last answer (a status or an error's name)."""
        route = path if "/activities" not in path else "/v1/leads/{id}/activities"
        deadline = time.monotonic() + give_up_after
        last = "never sent"
        while time.monotonic() < deadline:
            try:
                response = await client.request(method, f"{self.url('intake')}{path}", json=body)
            except httpx.HTTPError as exc:
                last = type(exc).__name__
                self.ledger.count(f"{method} {route} {last}")
                await asyncio.sleep(0.3)
                continue
            last = str(response.status_code)
            self.ledger.count(f"{method} {route} {response.status_code}")
            if response.status_code >= 500 and response.status_code != 503:
                self.server_errors.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
            if response.status_code in ok:
                return response, last
            if response.status_code in (429, 503):
                if "retry-after" not in response.headers:
                    self.server_errors.append(f"{method} {path}: {response.status_code} without Retry-After")
                await asyncio.sleep(min(float(response.headers.get("retry-after", "1")), 2.0))
                continue
            return response, last  # a refusal: not accepted
        return None, f"{last}, gave up after {give_up_after:g} s"

    async def _produce(self, topic: str, value: dict, key: str) -> tuple[bool, str]:
        """At least once, as a real producer: a send that times out (broker frozen) is sent
        again; intake takes a repeat of the same external id as the same lead or touch. Returns
        whether the broker acked it and the last answer ("acked" or the last error's name)."""
        last = "never sent"
        for _ in range(10):
            try:
                await self.producer.send_and_wait(topic, json.dumps(value).encode(), key=key.encode())
                return True, "acked"
            except Exception as exc:  # noqa: BLE001 - KafkaTimeoutError and kin: try again
                last = type(exc).__name__
                self.ledger.count(f"produce {topic} {last}")
                await asyncio.sleep(1)
        return False, f"{last}, gave up after 10 tries"

    def _lead_body(self, lead: SentLead) -> dict:
        body = {"external_id": lead.external_id,
                "contact": {"email": lead.email, "first_name": "Chaos", "country": "GB"},
                "company": {"name": "Acme"}, "intent": {"type": "demo_request"}}
        if lead.phone:
            body["contact"]["phone"] = lead.phone
        return body

    async def _touch(self, client: httpx.AsyncClient, lead: SentLead, ref: str, at: float, via: str) -> None:
        await asyncio.sleep(max(at - time.time(), 0))
        touch = Touch(occurred_at=time.time(), via=via)
        lead.touches.append(touch)
        body = {"type": "call", "actor": "alice", "outcome": "connected", "occurred_at": iso(touch.occurred_at),
                "external_id": f"{lead.external_id}-t{len(lead.touches)}"}
        if via == "http":
            response, touch.status = await self._post(client, f"/v1/leads/{ref}/activities", body, (202,))
            touch.accepted = response is not None and response.status_code == 202
        else:
            touch.accepted, touch.status = await self._produce(RAW_ACTIVITIES, {**body, "lead_id": ref}, ref)
        touch.accepted_at = time.time() if touch.accepted else None

    async def _one_lead(self, client: httpx.AsyncClient, lead: SentLead, plan: str, touch_via: str) -> None:
        await asyncio.sleep(max(lead.sent_at - time.time(), 0))
        lead.sent_at = time.time()
        if lead.via == "http":
            response, lead.status = await self._post(client, "/v1/leads", self._lead_body(lead), (200, 201))
            if response is None or response.status_code not in (200, 201):
                return
            lead.lead_id = response.json()["lead_id"]
        else:
            acked, lead.status = await self._produce(RAW_SUBMISSIONS, {**self._lead_body(lead), "source": "chat"},
                                                     lead.external_id)
            if not acked:
                return
        lead.accepted = True
        accepted_at = time.time()
        if plan == "none":
            return
        ref = lead.lead_id if lead.via == "http" and touch_via == "http" else (lead.lead_id or lead.external_id)
        if plan == "early":
            at = lead.sent_at + self.rng.uniform(0.2, 0.6) * self.target
        else:  # late: well after the deadline
            at = accepted_at + 1.5 * self.target
        await self._touch(client, lead, ref, at, touch_via)

    async def generate(self, seconds: float, rate: float) -> None:
        """Leads at `rate` a second for `seconds`, 60 % over HTTP, 40 % over Kafka; 45 % touched
        early, 15 % touched after the deadline, the rest never."""
        start = time.time() + 0.5
        count = max(1, int(seconds * rate))
        tasks = []
        # No pool timeout: many senders retrying through an outage queue for a connection, as
        # they would queue behind their own network stack, without counting that as a failure.
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {self.source_key}"},
                                     timeout=httpx.Timeout(10, pool=None),
                                     limits=httpx.Limits(max_connections=100)) as client:
            for n in range(count):
                via = "http" if self.rng.random() < 0.6 else "kafka"
                roll = self.rng.random()
                plan = "early" if roll < 0.45 else "late" if roll < 0.6 else "none"
                touch_via = "kafka" if via == "kafka" or self.rng.random() < 0.3 else "http"
                tag = f"{self.seed}-{n}-{uuid.uuid4().hex[:6]}"
                lead = SentLead(n=n, via=via, external_id=f"chaos-{tag}", email=f"chaos.{tag}@example.org",
                                phone=f"+447700900{n:03d}" if n < 1000 else "",
                                sent_at=start + seconds * n / count)
                self.ledger.leads.append(lead)
                tasks.append(asyncio.create_task(self._one_lead(client, lead, plan, touch_via)))
            await asyncio.gather(*tasks)

    # ---- faults ----------------------------------------------------------------------------

    def _note(self, kind: str, began: float, **more) -> None:
        self.ledger.faults.append({"kind": kind, "at": iso(began), "seconds": round(time.time() - began, 2), **more})

    async def kill(self, name: str | None = None, down: float | None = None) -> None:
        name = name or self.rng.choice(sorted(self.stack.services))
        service = self.stack.services[name]
        began = time.time()
        service.kill()
        await asyncio.sleep(self.rng.uniform(0.5, 2.5) if down is None else down)
        service.start()
        # Back by itself: the process is what an orchestrator restarts; the rest is up to it.
        if await self.wait_ready(90, [name]):
            self.server_errors.append(f"{name} not ready 90 s after a kill -9 and restart")
        self._note("kill -9", began, service=name)

    async def freeze_broker(self, seconds: float) -> Outage:
        outage = Outage("broker frozen")
        pid = self.stack.broker._proc.pid  # noqa: SLF001
        began = time.time()
        os.kill(pid, signal.SIGSTOP)
        try:
            await self._probe_frozen_broker(outage, began + max(seconds, 3))
            await asyncio.sleep(max(began + seconds - time.time(), 0))
        finally:
            os.kill(pid, signal.SIGCONT)
        self._note("broker SIGSTOP", began)
        self.outages.append(outage)
        return outage

    async def stop_postgres(self, seconds: float) -> Outage:
        outage = Outage("postgres stopped")
        began = time.time()
        await asyncio.to_thread(self.stack.postgres.stop)
        # The outage begins when the server is down, not when the stop began: a shutdown took seconds
        # on a loaded machine, and intake beat (accepted) until then: a deadline 3.5 s after the stop
        # began was still the owner's to miss.
        stopped = time.time()
        try:
            # The outage lasts at least until the probes are done (a slow machine must not turn
            # "no time to probe" into a failure), at most 20 s longer than asked.
            await self._probe_database_outage(outage, began + seconds + 20)
            await asyncio.sleep(max(began + seconds - time.time(), 0))
        finally:
            await asyncio.to_thread(self.stack.postgres.start)
        self._note("postgres stopped", stopped)
        self.outages.append(outage)
        return outage

    async def inject(self, seconds: float, pause: float, outage_seconds: float) -> None:
        """Faults one after another for `seconds`: every kind once first (a kill -9, then the
        broker frozen and Postgres stopped in either order), whatever the time (a slow machine
        must not cut one off), then at random while the time lasts."""
        end = time.time() + seconds
        first = ["kill", *self.rng.sample(["freeze", "postgres"], 2)]
        while first or time.time() < end - outage_seconds:
            kind = first.pop(0) if first else self.rng.choice(["kill", "kill", "freeze", "postgres"])
            if kind == "kill":
                await self.kill()
            elif kind == "freeze":
                await self.freeze_broker(outage_seconds)
            else:
                await self.stop_postgres(outage_seconds)
            await asyncio.sleep(self.rng.uniform(pause / 2, pause))

    # ---- outage probes ---------------------------------------------------------------------

    def _probe_lead(self, kind: str) -> SentLead:
        """A lead an outage probe sends, in the ledger (its external id says it is a probe)."""
        tag = f"{self.seed}-{uuid.uuid4().hex[:8]}"
        lead = SentLead(n=-1, via="http", external_id=f"{PROBE_PREFIX}{kind.split()[0]}-{tag}",
                        email=f"chaos.{tag}@example.org", phone="", sent_at=time.time(), probe=kind)
        self.ledger.leads.append(lead)
        return lead

    def write_requests(self) -> list[tuple[str, str, str, dict, str]]:
        """(service, method, path, body, key) for every write route: each must answer 503 +
        Retry-After while the database is down. The two leads are in the ledger as probes (the
        auditor checks that a 503 left nothing in intake); the other bodies would be refused if
        the database were up."""
        ghost = "00000000-0000-0000-0000-000000000000"
        src, adm = self.source_key, self.admin_key
        one, batched = self._probe_lead("postgres stopped"), self._probe_lead("postgres stopped")
        return [
            ("intake", "POST", "/v1/leads", self._lead_body(one), src),
            ("intake", "POST", "/v1/leads:batch", {"leads": [self._lead_body(batched)]}, src),
            ("intake", "PATCH", f"/v1/leads/{ghost}", {"company": {"name": "x"}}, src),
            ("intake", "POST", f"/v1/leads/{ghost}/activities", {"type": "call"}, src),
            ("router", "PUT", "/v1/owners/nobody", {"status": "away"}, adm),
            ("router", "POST", f"/v1/leads/{ghost}/reassign", {"owner_id": "nobody"}, adm),
            ("notifier", "POST", "/v1/subscriptions", {"url": "http://127.0.0.1:9/x", "event_types": ["sla.breached"]},
             adm),
            ("notifier", "DELETE", "/v1/subscriptions/nope", {}, adm),
            ("notifier", "POST", "/v1/subscriptions/nope/redeliver", {}, adm),
        ]

    async def _probe_database_outage(self, outage: Outage, until: float) -> None:
        """Every service's /readyz turns false and every write route answers 503 with Retry-After
        (never 500), within the outage."""
        async with httpx.AsyncClient(timeout=8) as client:
            async def not_ready(service: str) -> None:
                while time.time() < until:
                    try:
                        response = await client.get(f"{self.url(service)}/readyz")
                        if response.status_code == 503 and response.json()["checks"]["database"] != "ok":
                            outage.checked += 1
                            return
                    except httpx.HTTPError:
                        pass  # a service killed just before: not this probe's business
                    await asyncio.sleep(0.2)
                outage.problems.append(f"{service} /readyz never said the database was down")

            await asyncio.gather(*(not_ready(s) for s in self.stack.services))
            requests = self.write_requests()
            probes = {lead.external_id: lead for lead in self.ledger.leads if lead.probe and lead.status is None}
            for service, method, path, body, key in requests:
                sent = [probes[b["external_id"]] for b in body.get("leads", [body]) if b.get("external_id") in probes]
                try:
                    response = await client.request(method, f"{self.url(service)}{path}", json=body,
                                                    headers={"Authorization": f"Bearer {key}"})
                except httpx.HTTPError as exc:
                    outage.problems.append(f"{method} {service}{path}: {type(exc).__name__}")
                    for lead in sent:
                        lead.status = type(exc).__name__
                    continue
                answered = response.json() if response.status_code in (200, 201) else {}
                answers = answered.get("results", [answered])  # :batch answers one result per lead
                for i, lead in enumerate(sent):  # accepted only if intake said so (it should say 503)
                    lead.status = str(response.status_code)
                    answer = answers[i] if i < len(answers) else {}
                    if answer.get("lead_id") and answer.get("status") in ("accepted", "duplicate"):
                        lead.accepted, lead.lead_id = True, answer["lead_id"]
                outage.checked += 1
                if response.status_code != 503 or not response.headers.get("retry-after"):
                    outage.problems.append(f"{method} {service}{path} answered {response.status_code} "
                                           f"(Retry-After {response.headers.get('retry-after')}): {response.text[:160]}")

    async def _probe_frozen_broker(self, outage: Outage, until: float) -> None:
        """Intake keeps accepting leads over HTTP while the broker is frozen (they are in its
        store; the relay publishes them afterwards). The probe leads are audited like the rest;
        one answered 503 (intake just killed) must not be in intake."""
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=4, headers={"Authorization": f"Bearer {self.source_key}"}) as client:
            for i in range(3):
                if i and time.time() > until - 1:
                    break
                lead = self._probe_lead("broker frozen")
                try:
                    response = await client.post(f"{self.url('intake')}/v1/leads", json=self._lead_body(lead))
                except httpx.HTTPError as exc:
                    lead.status = type(exc).__name__
                    outage.problems.append(f"POST /v1/leads while the broker was frozen: {type(exc).__name__}")
                    continue
                lead.status = str(response.status_code)
                outage.checked += 1
                if response.status_code == 201:
                    lead.accepted, lead.lead_id = True, response.json()["lead_id"]
                elif response.status_code != 503:  # intake itself just killed and restarting: fine
                    outage.problems.append(f"POST /v1/leads while the broker was frozen: {response.status_code}")
                if i == 0 and response.status_code != 201:
                    outage.problems.append(f"intake did not accept a lead while the broker was frozen "
                                           f"({response.status_code})")

    # ---- after -----------------------------------------------------------------------------

    async def wait_ready(self, timeout: float, names: list[str] | None = None) -> list[str]:
        """Every service back to ready by itself; the names of those that are not."""
        deadline = time.monotonic() + timeout
        pending = set(names or self.stack.services)
        while pending and time.monotonic() < deadline:
            pending = {s for s in pending if not await asyncio.to_thread(self.stack.services[s].ready)}
            if pending:
                await asyncio.sleep(0.3)
        return sorted(pending)

    async def diagnostics(self) -> str:
        """Each service's /readyz and its consumer-lag lines, for a run that did not settle."""
        lines = []
        async with httpx.AsyncClient(timeout=5) as client:
            for name in self.stack.services:
                try:
                    lines.append(f"{name} readyz: {(await client.get(f'{self.url(name)}/readyz')).text}")
                    metrics = (await client.get(f"{self.url(name)}/metrics")).text
                    lines += [f"{name} {line}" for line in metrics.splitlines()
                              if "lag" in line and not line.startswith("#")]
                except httpx.HTTPError as exc:
                    lines.append(f"{name}: {type(exc).__name__}")
        return "\n".join(lines)

    async def metrics_text(self) -> str:
        async with httpx.AsyncClient(timeout=5) as client:
            texts = [(await client.get(f"{self.url(s)}/metrics")).text for s in self.stack.services]
        return "\n".join(texts)

    def logs_text(self) -> str:
        return "\n".join(s.log_path.read_text(errors="replace") for s in self.stack.services.values()
                         if s.log_path.exists())
