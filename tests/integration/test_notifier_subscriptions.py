"""CRM subscriptions end to end against real local receivers: the admin API, signed CloudEvents
with the event id as idempotency key, order per lead under failures, a dead subscriber that
holds up nobody else, and giving up after the last try."""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from leadsla.devstack import free_port
from services.notifier.bootstrap import bootstrap
from services.notifier.channels import Senders
from services.notifier.delivery import Deliverer
from services.notifier.domain import HOLD_FOR_RECEIVED, ORDER_WINDOW, SIGNATURE_HEADER, verify
from services.notifier.handlers import HANDLERS, NotifierDeps, on_run
from services.notifier.tables import (
    deliveries,
    escalations,
    leads,
    subscription_deliveries,
    subscriptions,
)
from shared.auth import create_key
from shared.clock import ManualClock
from shared.events import (
    SLA_PAYLOADS,
    Company,
    Consent,
    Contact,
    Intent,
    LeadAssigned,
    LeadReassigned,
    LeadReceived,
    LeadUpdated,
    Received,
    SlaStarted,
    new_event,
)
from shared.eventstore import retry_on_conflict
from shared.http import create_app
from tests.integration.receivers import HttpReceiver, StallingReceiver
from tests.support import eventually, handle_event, stored_events

CONFIG = """
owners: [{id: alice}, {id: bob}]
notifier: {subscription_max_attempts: 3, subscription_timeout_seconds: 30}
"""


@pytest.fixture
def clock() -> ManualClock:
    # Signatures carry the send time and receivers refuse old ones, so start from the real time.
    return ManualClock(datetime.now(UTC))


@pytest.fixture
async def ctx(make_ctx, engine):
    ctx = make_ctx("notifier", CONFIG)
    yield ctx
    # The database is shared by the session: leave no live subscription or due delivery behind.
    async with engine.begin() as conn:
        await conn.execute(update(subscriptions).where(subscriptions.c.deleted_at.is_(None))
                           .values(deleted_at=datetime.now(UTC)))
        for table in (subscription_deliveries, deliveries):
            await conn.execute(update(table).where(table.c.state == "pending").values(state="cancelled"))


@pytest.fixture
async def api(ctx, engine):
    app = create_app(ctx, bootstrap(ctx).routers)
    async with engine.begin() as conn:
        admin_key = await create_key(conn, "crm-admin", "admin")
        source_key = await create_key(conn, "webform", "source")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier") as client:
        client.headers["Authorization"] = f"Bearer {admin_key}"
        client.source_key = source_key  # type: ignore[attr-defined]
        yield client


@pytest.fixture
async def deliver(ctx, clock):
    async with httpx.AsyncClient() as http:
        deliverer = Deliverer(ctx.uow, lambda: ctx.config.config,
                              Senders(http, ctx.engine, lambda: ctx.config.config), clock, jitter=lambda: 0.0)
        yield deliverer.run_once


def assigned(lead_id: str, n: int, now: datetime, correlation_id: str | None = None):
    data = LeadAssigned(lead_id=lead_id, owner_id="alice", team_id="sdr", rule_id="r", method="round_robin",
                        reason="rule", assignment_no=n, candidates=[], assigned_at=now, tier="A")
    return new_event("lead.assigned", service="router", lead_id=lead_id, time=now, correlation_id=correlation_id,
                     data=data)


async def read(ctx, *events) -> None:
    for event in events:
        async with ctx.uow() as uow:
            await handle_event(HANDLERS, uow, event, NotifierDeps(ctx.config.config, ctx.clock.now()))
            await uow.commit()


async def consume(ctx, *events) -> None:
    """Read the events, then let ORDER_WINDOW pass (each delivery waits that long after its event's
    time for an earlier one still on its way from another topic)."""
    await read(ctx, *events)
    ctx.clock.advance(ORDER_WINDOW)


async def subscribe(api, receiver: HttpReceiver, event_types: list[str]) -> str:
    response = await api.post("/v1/subscriptions", json={"url": receiver.url, "event_types": event_types})
    assert response.status_code == 201, response.text
    body = response.json()
    receiver.secret = body["secret"].encode()
    return body["id"]


def ids_for(receiver: HttpReceiver, lead_id: str) -> list[str]:
    return [m["id"] for m, _ in receiver.received if m.get("subject") == lead_id]


async def test_admins_create_list_and_delete_subscriptions_and_the_secret_is_shown_once(api) -> None:
    created = await api.post("/v1/subscriptions", json={
        "url": "https://crm.example.com/leadsla", "event_types": ["lead.assigned", "sla.*"]})
    assert created.status_code == 201
    body = created.json()
    assert body["secret"].startswith("whsec_") and len(body["secret"]) > 30

    own = await api.post("/v1/subscriptions", json={
        "url": "https://crm.example.com/x", "event_types": ["lead.assigned"], "secret": "my-own-secret-0123456789"})
    assert own.json()["secret"] == "my-own-secret-0123456789"

    listed = (await api.get("/v1/subscriptions")).json()["subscriptions"]
    mine = next(s for s in listed if s["id"] == body["id"])
    assert mine["event_types"] == ["lead.assigned", "sla.*"] and "secret" not in mine
    assert mine["deliveries"] == {"pending": 0, "sent": 0, "failed": 0}

    assert (await api.delete(f"/v1/subscriptions/{body['id']}")).status_code == 204
    assert (await api.delete(f"/v1/subscriptions/{body['id']}")).status_code == 404
    assert body["id"] not in {s["id"] for s in (await api.get("/v1/subscriptions")).json()["subscriptions"]}


async def test_a_bad_subscription_is_refused_naming_the_field(api) -> None:
    response = await api.post("/v1/subscriptions", json={
        "url": "ftp://crm.example.com", "event_types": ["lead.assigned", "lead.asigned"]})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert {e["field"] for e in response.json()["errors"]} == {"url", "event_types.1"}
    assert (await api.post("/v1/subscriptions", json={"url": "https://x", "event_types": []})).status_code == 422
    # The notifier never reads leads.deadletter: a subscription to it would wait for ever, silently.
    response = await api.post("/v1/subscriptions", json={"url": "https://x", "event_types": ["deadletter"]})
    assert response.status_code == 422 and [e["field"] for e in response.json()["errors"]] == ["event_types.0"]


@pytest.mark.parametrize("url", ["http://", "http:// spaces.example.com/x", "https://crm.example.com:99999/x",
                                 "https://crm.example.com:port/x", "https://:443/x"])
async def test_a_subscription_url_no_send_could_reach_is_refused(api, url) -> None:
    # Each was accepted, and every event it asked for failed at every send.
    response = await api.post("/v1/subscriptions", json={"url": url, "event_types": ["lead.assigned"]})
    assert response.status_code == 422 and [e["field"] for e in response.json()["errors"]] == ["url"]


@pytest.mark.parametrize("body", [b'{"url": "https://crm.example.com/hook", ', b"url=https://crm.example.com"])
async def test_a_body_that_is_not_json_is_a_problem_on_the_body_not_on_a_field_named_by_its_offset(api, body) -> None:
    response = await api.post("/v1/subscriptions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == ["(body)"]


async def test_subscriptions_need_an_admin_key(api) -> None:
    headers = {"Authorization": f"Bearer {api.source_key}"}
    assert (await api.get("/v1/subscriptions", headers=headers)).status_code == 403
    assert (await api.get("/v1/subscriptions", headers={"Authorization": ""})).status_code == 401


async def test_a_matching_event_is_posted_as_its_signed_cloudevent_with_its_id_as_idempotency_key(
        api, ctx, clock, deliver) -> None:
    with HttpReceiver() as crm:
        await subscribe(api, crm, ["lead.assigned"])
        lead_id = str(uuid.uuid4())
        event = assigned(lead_id, 1, clock.now())
        other = new_event("sla.started", service="sla_clock", lead_id=lead_id, time=clock.now(), data=SlaStarted(
            lead_id=lead_id, sla_id="s", metric="first_response", policy_id="p", policy_version=1,
            owner_id="alice", due_at=clock.now()))
        await consume(ctx, event, other, event)  # the same event twice, and one not subscribed to
        await deliver()

        [(message, valid)] = [(m, ok) for m, ok in crm.received if m.get("subject") == lead_id]
        headers = message.pop("_headers")
        assert valid and message == event.model_dump(mode="json", exclude_none=True)
        assert headers["idempotency-key"] == event.id
        assert headers["content-type"] == "application/cloudevents+json"
        assert verify(crm.secret, event.to_bytes(), headers[SIGNATURE_HEADER.lower()], int(time.time()))


async def test_events_read_out_of_order_from_two_topics_go_out_in_event_time_order(api, ctx, clock, deliver) -> None:
    """lead.assigned (leads.routing) can be read before the lead.received (leads.intake) it
    follows; the CRM still gets the lead before its assignment."""
    with HttpReceiver() as crm:
        await subscribe(api, crm, ["lead.*"])
        lead_id = str(uuid.uuid4())
        received = new_event("lead.received", service="intake", lead_id=lead_id, time=clock.now(), data=LeadReceived(
            lead_id=lead_id, source="webform", tier="A", contact=Contact(email="a@example.com"), company=Company(),
            intent=Intent(type="demo_request"), consent=Consent(), contactable=True, received_at=clock.now()))
        later = assigned(lead_id, 1, clock.now() + timedelta(milliseconds=80))
        await consume(ctx, later, received)
        for _ in range(2):
            await deliver()
        assert ids_for(crm, lead_id) == [received.id, later.id]


async def test_an_event_read_after_one_stamped_later_still_goes_first_if_read_within_the_order_window(
        api, ctx, clock, deliver) -> None:
    """Found by a chaos audit: sla.started (leads.sla) and lead.assigned (leads.routing) stamped
    milliseconds apart, the later one read first and sent at once, before the earlier one was
    read. Each waits ORDER_WINDOW after its own time, so the earlier one, read meanwhile, goes first."""
    with HttpReceiver() as crm:
        await subscribe(api, crm, ["lead.assigned", "sla.*"])
        lead_id = str(uuid.uuid4())
        started = new_event("sla.started", service="sla_clock", lead_id=lead_id, time=clock.now(), data=SlaStarted(
            lead_id=lead_id, sla_id="s", metric="first_response", policy_id="p", policy_version=1,
            owner_id=None, due_at=clock.now() + timedelta(minutes=5)))
        later = assigned(lead_id, 1, clock.now() + timedelta(milliseconds=30))
        clock.advance(timedelta(milliseconds=40))
        await read(ctx, later)
        await deliver()
        clock.advance(timedelta(milliseconds=400))
        await read(ctx, started)
        await deliver()
        assert ids_for(crm, lead_id) == []  # neither sent while an earlier one could be on its way
        clock.advance(ORDER_WINDOW)
        for _ in range(2):
            await deliver()
        assert ids_for(crm, lead_id) == [started.id, later.id]


async def test_an_assignment_waits_for_its_lead_received_when_the_intake_topic_lags(api, ctx, clock, deliver) -> None:
    """Issue 10's gap: the notifier reads lead.assigned and has not read lead.received at all yet
    (it lags on leads.intake only). The assignment is held until lead.received arrives, then both
    go in event-time order; a lead.received that never comes holds it HOLD_FOR_RECEIVED at most."""
    with HttpReceiver() as crm:
        await subscribe(api, crm, ["lead.received", "lead.assigned"])
        lead_id, lonely = str(uuid.uuid4()), str(uuid.uuid4())
        received = new_event("lead.received", service="intake", lead_id=lead_id, time=clock.now(), data=LeadReceived(
            lead_id=lead_id, source="webform", tier="A", contact=Contact(email="a@example.com"), company=Company(),
            intent=Intent(type="demo_request"), consent=Consent(), contactable=True, received_at=clock.now()))
        later = assigned(lead_id, 1, clock.now() + timedelta(milliseconds=80))
        orphan = assigned(lonely, 1, clock.now())
        await consume(ctx, later, orphan)
        await deliver()
        assert ids_for(crm, lead_id) == [] and ids_for(crm, lonely) == []  # held, not sent ahead

        await consume(ctx, received)
        for _ in range(2):
            await deliver()
        assert ids_for(crm, lead_id) == [received.id, later.id]
        assert ids_for(crm, lonely) == []
        clock.advance(HOLD_FOR_RECEIVED)
        await deliver()
        assert ids_for(crm, lonely) == [orphan.id]


async def test_a_lead_received_and_its_assignment_consumed_at_once_leave_nothing_held(api, ctx, clock, engine) -> None:
    """Two consumers (leads.intake and leads.routing, on two replicas) handle one lead's
    lead.received and lead.assigned at the same moment: whichever way they interleave, the
    assignment is not left waiting for a lead.received already seen (a writer that decided on a
    stale view of the lead conflicts and runs again from fresh state)."""
    with HttpReceiver() as crm:
        sub_id = await subscribe(api, crm, ["lead.received", "lead.assigned"])

        async def handle(event) -> None:
            async def once() -> None:
                async with ctx.uow() as uow:
                    await handle_event(HANDLERS, uow, event, NotifierDeps(ctx.config.config, clock.now()))
                    await uow.commit()
            await retry_on_conflict(once)

        for first_assigned in (True, False):
            lead_id = str(uuid.uuid4())
            received = new_event("lead.received", service="intake", lead_id=lead_id, time=clock.now(),
                                 data=LeadReceived(lead_id=lead_id, source="webform", tier="A", contact=Contact(),
                                                   company=Company(), intent=Intent(type="demo_request"),
                                                   consent=Consent(), contactable=True, received_at=clock.now()))
            both = [assigned(lead_id, 1, clock.now()), received]
            await asyncio.gather(*(handle(e) for e in (both if first_assigned else both[::-1])))
            async with engine.connect() as conn:
                due = (await conn.execute(select(subscription_deliveries.c.event_type).where(
                    subscription_deliveries.c.subscription_id == sub_id, subscription_deliveries.c.lead_id == lead_id,
                    subscription_deliveries.c.next_attempt_at <= clock.now() + ORDER_WINDOW))).scalars().all()
            assert sorted(due) == ["lead.assigned", "lead.received"]


async def test_one_leads_events_arrive_in_order_even_when_the_first_is_retried(api, ctx, clock, deliver) -> None:
    with HttpReceiver() as crm:
        # Not lead.received: nothing is held back waiting for it (see the next test).
        await subscribe(api, crm, ["lead.assigned"])
        lead_id = str(uuid.uuid4())
        first, second, third = (assigned(lead_id, n, clock.now()) for n in (1, 2, 3))
        await consume(ctx, first, second, third)
        crm.statuses = [503]
        await deliver()
        assert ids_for(crm, lead_id) == [first.id]  # refused; the others wait behind it
        await deliver()
        assert ids_for(crm, lead_id) == [first.id]  # not due again yet
        clock.advance(timedelta(seconds=2))
        for _ in range(3):
            await deliver()
        assert ids_for(crm, lead_id) == [first.id, first.id, second.id, third.id]
        assert all(valid for _, valid in crm.received)


async def test_a_subscriber_that_stays_down_holds_up_nobody_else_and_gets_what_it_missed_once_fixed(
        api, ctx, clock, deliver, engine) -> None:
    with HttpReceiver() as up, HttpReceiver() as down:
        await subscribe(api, up, ["lead.assigned"])
        down_port = free_port()
        down.url = f"http://127.0.0.1:{down_port}/nobody-listens"
        down_id = await subscribe(api, down, ["lead.assigned"])
        leads = [str(uuid.uuid4()) for _ in range(3)]
        submission = str(uuid.uuid4())  # the lead.received that started the first lead's chain
        await consume(ctx, *(assigned(lead_id, 1, clock.now(), submission if i == 0 else None)
                             for i, lead_id in enumerate(leads)))
        await deliver()
        assert {m["subject"] for m, _ in up.received} >= set(leads)

        for _ in range(3):  # the last tries, spaced by the backoff
            clock.advance(timedelta(minutes=1))
            await deliver()
        listed = (await api.get("/v1/subscriptions")).json()["subscriptions"]
        assert next(s for s in listed if s["id"] == down_id)["deliveries"]["failed"] >= 3
        events = await stored_events(engine, "notifier", leads[0], published_only=True)
        [failed] = [e for e in events if e.type == "notification.failed"]
        assert failed.data["subscription_id"] == down_id and failed.data["attempts"] == 3
        assert failed.data["idempotency_key"] == failed.data["event_id"]
        assert failed.causationid == failed.data["event_id"]  # the envelope names what it was about
        assert failed.correlationid == submission  # CONTRACT: the submission that started it (was its own id)
        assert [e.type for e in events if e.type == "deadletter"] == ["deadletter"]

        # The CRM is fixed: an operator sees what it missed and sends it again, same ids and keys.
        missed = (await api.get(f"/v1/subscriptions/{down_id}/deliveries")).json()["deliveries"]
        assert {m["lead_id"] for m in missed} >= set(leads) and all(m["attempts"] == 3 for m in missed)
        with HttpReceiver(port=down_port) as fixed:
            fixed.secret = down.secret
            requeued = await api.post(f"/v1/subscriptions/{down_id}/redeliver")
            assert requeued.status_code == 202 and requeued.json()["requeued"] >= 3
            await deliver()
            assert {m["subject"] for m, _ in fixed.received} >= set(leads)
            assert all(valid for _, valid in fixed.received)
        assert (await api.post(f"/v1/subscriptions/{uuid.uuid4()}/redeliver")).status_code == 404


async def test_a_deleted_subscription_gets_nothing_more(api, ctx, clock, deliver) -> None:
    with HttpReceiver() as crm:
        sub_id = await subscribe(api, crm, ["lead.assigned"])
        lead_id = str(uuid.uuid4())
        await consume(ctx, assigned(lead_id, 1, clock.now()))
        assert (await api.delete(f"/v1/subscriptions/{sub_id}")).status_code == 204
        await consume(ctx, assigned(lead_id, 2, clock.now()))
        await deliver()
        assert ids_for(crm, lead_id) == []


async def test_delivered_crm_events_are_pruned_after_retention_oldest_first_in_pieces_but_failures_stay(
    api, ctx, clock, engine
) -> None:
    from sqlalchemy import func, insert, select

    from services.notifier.delivery import prune_delivered

    sub_id = f"retention-{uuid.uuid4().hex[:8]}"
    # Older than every delivery other tests left in the shared database, with a cut-off before
    # all of those: retention is for every subscription, and these must be the only ones due.
    async with engine.connect() as conn:
        first = await conn.scalar(select(func.min(subscription_deliveries.c.created_at))) or clock.now()
    older, old, recent, cut_off = (first - timedelta(days=d) for d in (9, 8, 1, 7))
    async with engine.begin() as conn:
        await conn.execute(insert(subscription_deliveries), [
            {"subscription_id": sub_id, "lead_id": "l", "event_id": f"e-{state}-{age}", "event_type": "lead.assigned",
             "event_time": when, "body": b"{}", "state": state, "next_attempt_at": when, "created_at": when}
            for state in ("sent", "cancelled", "failed")
            for age, when in (("older", older), ("old", old), ("recent", recent))])

    async def left() -> list[str]:
        async with engine.connect() as conn:
            return sorted((await conn.execute(select(subscription_deliveries.c.event_id).where(
                subscription_deliveries.c.subscription_id == sub_id))).scalars())

    async def prune() -> int:
        async with ctx.uow() as uow:
            pruned = await prune_delivered(uow, cut_off, clock.now(), up_to=3)
            await uow.commit()
        return pruned

    assert await prune() == 3  # a piece: the three oldest done with
    assert await left() == ["e-cancelled-old", "e-cancelled-recent", "e-failed-old", "e-failed-older",
                            "e-failed-recent", "e-sent-recent"]
    assert await prune() == 1  # the rest, fewer than a piece: nothing more is due
    assert await left() == ["e-cancelled-recent", "e-failed-old", "e-failed-older", "e-failed-recent",
                            "e-sent-recent"]
    assert await prune() == 0


async def test_a_subscriber_that_never_answers_holds_up_nobody_else(api, ctx, clock) -> None:
    stalled = StallingReceiver()
    stalled.hold_all = True
    try:
        with HttpReceiver() as up:
            await subscribe(api, up, ["lead.assigned"])
            response = await api.post("/v1/subscriptions", json={
                "url": f"http://127.0.0.1:{stalled.port}/hook", "event_types": ["lead.assigned"]})
            assert response.status_code == 201
            leads = [str(uuid.uuid4()) for _ in range(3)]
            await consume(ctx, *(assigned(lead_id, 1, clock.now()) for lead_id in leads))
            async with httpx.AsyncClient() as http:
                deliverer = Deliverer(ctx.uow, lambda: ctx.config.config,
                                      Senders(http, ctx.engine, lambda: ctx.config.config), clock)
                await deliverer.start_round()
                await eventually(lambda: {m["subject"] for m, _ in up.received} >= set(leads), timeout=20,
                                 what="the live subscriber to get its events")
                later = [str(uuid.uuid4()) for _ in range(2)]  # events that come while the sends hang
                await consume(ctx, *(assigned(lead_id, 1, clock.now()) for lead_id in later))
                await deliverer.start_round()
                await eventually(lambda: {m["subject"] for m, _ in up.received} >= set(later), timeout=20,
                                 what="later events to reach the live subscriber")
                assert len(stalled.arrivals) >= 1 and not stalled.release.is_set()  # still hanging
                stalled.release.set()
                await deliverer.drain()
    finally:
        stalled.stop()


RUN_CONFIG = CONFIG + """
channels: {hook: {url: "http://127.0.0.1:9/unused", secret: never-sent-anywhere}}
escalation_policies:
  - {id: breach, triggers: [sla.breached, sla.warning], steps: [{step: 1, notify: [owner], channels: [hook]},
                                                                 {step: 2, after: 15m, notify: [owner], channels: [hook]}]}
"""


def received(lead_id: str, now: datetime):
    return new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
        lead_id=lead_id, source="web", tier="A", contact=Contact(email="a@example.com", first_name="Ada"),
        company=Company(name="Engines"), intent=Intent(type="demo_request"), consent=Consent(), contactable=True,
        received_at=now))


def sla(kind: str, lead_id: str, now: datetime):
    return new_event(f"sla.{kind}", service="sla_clock", lead_id=lead_id, time=now, data=SLA_PAYLOADS[kind](
        lead_id=lead_id, sla_id=f"sla-{lead_id}", metric="first_response", policy_id="p", policy_version=1,
        owner_id="alice", due_at=now + timedelta(minutes=5) if kind == "warning" else now,  # a warning precedes it
        breached_at=now if kind == "breached" else None,
        root_cause="owner_missed" if kind == "breached" else None, percent=50 if kind == "warning" else None))


def reassigned(lead_id: str, now: datetime):
    return new_event("lead.reassigned", service="router", lead_id=lead_id, time=now, data=LeadReassigned(
        lead_id=lead_id, from_owner_id="alice", to_owner_id="bob", reason="manual", assignment_no=2))


def opted_out(lead_id: str, now: datetime):
    return new_event("lead.updated", service="intake", lead_id=lead_id, time=now, data=LeadUpdated(
        lead_id=lead_id, changed={"contactable": {"old": True, "new": False}}, tier="A", previous_tier="A",
        reason="opted_out", contactable=False))


# Each life is given as the consumer's runs (a fetched batch each): what a run reads was written
# by the run before it, or by itself. Each ends with its SLA met: no planned step is left for
# another test's deliverer to fire (or opted out: the opt-out stops the chain).
LIVES = {
    "breached_reassigned_met": lambda lead, t: [[received(lead, t)],
                                                [assigned(lead, 1, t), sla("started", lead, t),
                                                 sla("breached", lead, t), reassigned(lead, t), sla("met", lead, t)]],
    "assignment_before_receipt": lambda lead, t: [[assigned(lead, 1, t)],
                                                  [received(lead, t), sla("started", lead, t), sla("warning", lead, t)],
                                                  [sla("met", lead, t)]],
    "breached_then_opted_out": lambda lead, t: [[received(lead, t)],
                                                [assigned(lead, 1, t), sla("started", lead, t), sla("breached", lead, t)],
                                                [opted_out(lead, t)]],
}
BLIND = ("id", "lead_id", "subject", "event_id", "trigger_event_id", "escalation_id", "sla_id", "body", "trigger",
         "causationid", "correlation_id", "traceparent")


async def notifier_state(engine, lead_id: str) -> tuple[list, ...]:
    """The lead's stored events and rows, without what names the lead (ids, bodies)."""
    def blind(value):
        if isinstance(value, dict):
            return {k: blind(v) for k, v in value.items() if k not in BLIND}
        if isinstance(value, list):
            return [blind(v) for v in value]
        return value

    events = [blind({"type": e.type, "data": e.data}) for e in await stored_events(engine, "notifier", lead_id)]
    async with engine.connect() as conn:
        rows = [sorted((blind(dict(r._mapping)) for r in await conn.execute(select(table).where(
            table.c.lead_id == lead_id))), key=repr) for table in (leads, escalations, subscription_deliveries)]
    return (events, *rows)


async def test_a_run_of_several_events_per_lead_leaves_what_event_by_event_handling_leaves(api, make_ctx, clock,
                                                                                           engine) -> None:
    # Not lead.received: whether one releases held deliveries is then decided from what is stored.
    await subscribe(api, HttpReceiver(), ["lead.assigned", "lead.reassigned", "sla.*"])
    ctx = make_ctx("notifier", RUN_CONFIG)
    start = clock.now()
    alone = {name: str(uuid.uuid4()) for name in LIVES}
    together = {name: str(uuid.uuid4()) for name in LIVES}
    for name, life in LIVES.items():
        await read(ctx, *(event for run in life(alone[name], start) for event in run))
    lives = [life(together[name], start) for name, life in LIVES.items()]
    for i in range(max(map(len, lives))):
        # The lives' i-th runs interleaved, each lead's events in order, as one fetched batch's run.
        runs = [runs[i] for runs in lives if i < len(runs)]
        run = [Received.of(events[j]) for j in range(max(map(len, runs))) for events in runs if j < len(events)]
        async with ctx.uow() as uow:  # as the consumer hands a run over: in the batch's transaction
            await on_run(uow, run, NotifierDeps(ctx.config.config, ctx.clock.now()))
            await uow.commit()

    for name in LIVES:
        by_event, by_run = await notifier_state(engine, alone[name]), await notifier_state(engine, together[name])
        assert by_run == by_event, name
        events, lead_rows, escalation_rows, queued = by_run
        assert lead_rows and escalation_rows and queued, name  # noted, planned (and stopped), copied
        assert all(row["cancelled_at"] is not None for row in escalation_rows), name
