"""Escalations and channel delivery against real receivers: steps fire when due, a met SLA stops
the chain, retries with backoff, permanent failures, dead letters, signatures, no double sends,
and a crash between send and record resending the same idempotency key."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import update
from structlog.testing import capture_logs

from services.notifier.channels import Senders
from services.notifier.delivery import Deliverer
from services.notifier.domain import Attempt
from services.notifier.handlers import HANDLERS, NotifierDeps, on_run
from services.notifier.tables import deliveries, subscription_deliveries
from shared.clock import ManualClock, SystemClock
from shared.events import (
    SLA_PAYLOADS,
    TOPIC_NOTIFICATIONS,
    ActivityRecorded,
    LeadUpdated,
    Received,
    new_event,
)
from tests.integration.receivers import HttpReceiver, StallingReceiver
from tests.support import eventually, handle_event, stored_events

SECRET = "notifier-test-secret"


@pytest.fixture
def clock() -> ManualClock:
    # Signatures carry the send time and receivers refuse old ones, so start from the real time.
    return ManualClock(datetime.now(UTC))


@pytest.fixture
def receiver():
    with HttpReceiver(SECRET) as r:
        yield r


@pytest.fixture(autouse=True)
async def _no_leftovers(engine):
    yield
    # The database is shared by the session: leave no due delivery for the next test to send.
    async with engine.begin() as conn:
        for table in (subscription_deliveries, deliveries):
            await conn.execute(update(table).where(table.c.state == "pending").values(state="cancelled"))


def config_for(receiver: HttpReceiver, max_attempts: int = 3, notify: str = "[owner, manager]") -> str:
    return f"""
owners: [{{id: alice, manager_id: maria}}, {{id: maria}}, {{id: ops}}]
lead_ops: [ops]
channels:
  hook: {{url: "{receiver.url}", secret: "{SECRET}", max_attempts: {max_attempts}}}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps:
      - {{step: 1, notify: {notify}, channels: [hook]}}
      - {{step: 2, after: 15m, notify: [lead_ops], channels: [hook]}}
"""


def sla_event(kind: str, lead_id: str, now, sla_id: str = "s", root_cause: str = "owner_missed"):
    return new_event(f"sla.{kind}", service="sla_clock", lead_id=lead_id, time=now, data=SLA_PAYLOADS[kind](
        lead_id=lead_id, sla_id=sla_id, metric="first_response", policy_id="p", policy_version=1, owner_id="alice",
        due_at=now, breached_at=now if kind == "breached" else None, root_cause=root_cause if kind == "breached" else None))


async def consume(ctx, *events) -> None:
    for event in events:
        async with ctx.uow() as uow:
            await handle_event(HANDLERS, uow, event, NotifierDeps(ctx.config.config, ctx.clock.now()))
            await uow.commit()


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


def deliverer(ctx, clock, http) -> Deliverer:
    return Deliverer(ctx.uow, lambda: ctx.config.config, Senders(http, ctx.engine, lambda: ctx.config.config),
                     clock, jitter=lambda: 0.0)


def to(receiver: HttpReceiver, lead_id: str) -> list[tuple[int, str]]:
    return [(m["step"], m["recipient"]["id"]) for m, _ in receiver.received if m.get("lead_id") == lead_id]


async def test_a_breach_notifies_owner_and_manager_once_even_if_redelivered(make_ctx, clock, engine, receiver, http):
    ctx = make_ctx("notifier", config_for(receiver))
    lead_id = str(uuid.uuid4())
    trigger = sla_event("breached", lead_id, clock.now())
    await consume(ctx, trigger, trigger)  # the same event delivered twice
    d = deliverer(ctx, clock, http)
    await d.run_once()
    await d.run_once()

    assert sorted(to(receiver, lead_id)) == [(1, "alice"), (1, "maria")]
    assert all(valid for _, valid in receiver.received)
    events = await stored_events(engine, "notifier", lead_id, published_only=True)
    assert [e.type for e in events] == ["escalation.triggered", "notification.sent", "notification.sent"]
    assert events[0].data["recipients"] == ["alice", "maria"] and events[0].causationid == trigger.id
    # Each notification's envelope names its cause, the escalation step (CONTRACT: causationid).
    assert [e.causationid for e in events[1:]] == [events[0].id, events[0].id]
    assert {e.correlationid for e in events} == {trigger.correlationid}
    assert events[0].data["step"] == 1


async def two_breached_leads(ctx, clock, d, receiver) -> tuple[str, str]:
    """Two leads whose first_response breached, step 1 sent to the owner: one to escalate further,
    one whose chain the test stops."""
    escalated, stopped = str(uuid.uuid4()), str(uuid.uuid4())
    await consume(ctx, sla_event("breached", escalated, clock.now(), sla_id=f"sla-{escalated}"),
                  sla_event("breached", stopped, clock.now(), sla_id=f"sla-{stopped}"))
    await d.run_once()
    assert to(receiver, escalated) == [(1, "alice")] and to(receiver, stopped) == [(1, "alice")]
    return escalated, stopped


async def test_a_later_step_fires_only_when_due_and_a_met_sla_stops_the_chain(make_ctx, clock, engine, receiver,
                                                                              http):
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]"))
    d = deliverer(ctx, clock, http)
    escalated, met = await two_breached_leads(ctx, clock, d, receiver)

    await consume(ctx, sla_event("met", met, clock.now(), sla_id=f"sla-{met}"))
    clock.advance(timedelta(minutes=14))
    await d.run_once()
    assert to(receiver, escalated) == [(1, "alice")]  # step 2 is not due yet
    clock.advance(timedelta(minutes=1))
    await d.run_once()
    assert to(receiver, escalated) == [(1, "alice"), (2, "ops")]
    assert to(receiver, met) == [(1, "alice")]  # met before step 2: lead ops never bothered
    triggered = [e.data["step"] for e in await stored_events(engine, "notifier", met, published_only=True)
                 if e.type == "escalation.triggered"]
    assert triggered == [1]


async def test_an_opt_out_after_a_breach_stops_the_chain(make_ctx, clock, engine, receiver, http):
    # The clock cancels only running timers: a breached SLA's chain gets no sla.cancelled.
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]"))
    d = deliverer(ctx, clock, http)
    escalated, opted_out = await two_breached_leads(ctx, clock, d, receiver)
    await consume(ctx, new_event("lead.updated", service="intake", lead_id=opted_out, time=clock.now(),
                                 data=LeadUpdated(lead_id=opted_out, changed={"contactable": {"old": True, "new": False}},
                                                  tier="A", previous_tier="A", reason="opted_out", contactable=False)))
    clock.advance(timedelta(minutes=15))
    await d.run_once()
    assert to(receiver, escalated) == [(1, "alice"), (2, "ops")]
    assert to(receiver, opted_out) == [(1, "alice")]  # nothing escalates after the opt-out


@pytest.mark.parametrize("activity", [
    {"type": "disposition", "disposition": {"status": "Disqualified", "reason": "student"}},
    {"type": "opt_out"},
])
async def test_a_disqualification_or_opt_out_after_a_breach_stops_the_chain(make_ctx, clock, receiver, http,
                                                                           activity):
    """A disposition answered only a qualification or follow-up chain: lead ops was paged about a
    breached first response of a lead already disqualified."""
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]"))
    d = deliverer(ctx, clock, http)
    escalated, closed = await two_breached_leads(ctx, clock, d, receiver)
    await consume(ctx, new_event("activity.recorded", service="intake", lead_id=closed, time=clock.now(),
                                 data=ActivityRecorded(lead_id=closed, activity_id=str(uuid.uuid4()), actor="alice",
                                                       occurred_at=clock.now(), **activity)))
    clock.advance(timedelta(minutes=15))
    await d.run_once()
    assert to(receiver, escalated) == [(1, "alice"), (2, "ops")]
    assert to(receiver, closed) == [(1, "alice")]


async def test_a_breach_the_system_caused_goes_to_lead_ops_not_the_owner(make_ctx, clock, receiver, http):
    ctx = make_ctx("notifier", config_for(receiver))
    lead_id = str(uuid.uuid4())
    await consume(ctx, sla_event("breached", lead_id, clock.now(), root_cause="system_delay"))
    await deliverer(ctx, clock, http).run_once()
    assert to(receiver, lead_id) == [(1, "ops")]


async def test_server_errors_are_retried_with_backoff_then_sent_with_one_key(make_ctx, clock, engine, receiver,
                                                                            http):
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]"))
    d = deliverer(ctx, clock, http)
    lead_id = str(uuid.uuid4())
    receiver.statuses = [503, 429]
    await consume(ctx, sla_event("breached", lead_id, clock.now()))
    await d.run_once()  # 503
    await d.run_once()  # not due again yet
    assert len(to(receiver, lead_id)) == 1
    clock.advance(timedelta(seconds=1))
    await d.run_once()  # 429
    clock.advance(timedelta(seconds=1))
    await d.run_once()  # 204
    [sent] = [e for e in await stored_events(engine, "notifier", lead_id, published_only=True) if e.type.startswith("notification.")]
    assert sent.type == "notification.sent" and sent.data["attempts"] == 3
    keys = {m["_headers"]["idempotency-key"] for m, _ in receiver.received if m["lead_id"] == lead_id}
    assert len(to(receiver, lead_id)) == 3 and keys == {sent.data["idempotency_key"]}


async def test_a_429_is_retried_no_sooner_than_its_retry_after(make_ctx, clock, receiver, http):
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]"))
    d = deliverer(ctx, clock, http)
    lead_id = str(uuid.uuid4())
    await consume(ctx, sla_event("breached", lead_id, clock.now()))
    await d.fire(clock.now())
    [leased] = await d.lease(clock.now())

    await d.record([leased], [Attempt(status=429, error="HTTP 429", retry_after="120")], clock.now())
    clock.advance(timedelta(seconds=119))
    assert await d.lease(clock.now()) == []
    clock.advance(timedelta(seconds=1))
    assert len(await d.lease(clock.now())) == 1


async def test_client_errors_fail_at_once_and_are_dead_lettered(make_ctx, clock, engine, receiver, http):
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]"))
    d = deliverer(ctx, clock, http)
    lead_id = str(uuid.uuid4())
    receiver.statuses = [410]
    await consume(ctx, sla_event("breached", lead_id, clock.now()))
    await d.run_once()
    clock.advance(timedelta(minutes=10))  # long past any retry, before step 2
    await d.run_once()
    assert len(to(receiver, lead_id)) == 1
    events = await stored_events(engine, "notifier", lead_id, published_only=True)
    [failed] = [e for e in events if e.type.startswith("notification.")]
    assert failed.type == "notification.failed"
    assert failed.data["attempts"] == 1 and failed.data["error"] == "HTTP 410"
    [dead] = [e for e in events if e.type == "deadletter"]
    assert dead.data["notification_id"] == failed.data["notification_id"] and "HTTP 410" in dead.data["error"]


def dead_letters_counted() -> float:
    return REGISTRY.get_sample_value(
        "leadsla_deadletter_total", {"topic": TOPIC_NOTIFICATIONS, "reason": "delivery_failed"}) or 0


async def test_a_notification_given_up_on_counts_on_the_dead_letter_metric(make_ctx, clock, receiver, http):
    """It goes to leads.deadletter like a record no consumer could handle; an alert on
    leadsla_deadletter_total must not miss it."""
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]"))
    d = deliverer(ctx, clock, http)
    receiver.statuses = [410]
    before = dead_letters_counted()
    await consume(ctx, sla_event("breached", str(uuid.uuid4()), clock.now()))
    await d.run_once()
    assert dead_letters_counted() == before + 1


async def test_an_unreachable_receiver_fails_after_the_last_try(make_ctx, clock, engine, http):
    with HttpReceiver(SECRET) as gone:
        pass  # stopped: nothing listens on its port any more
    ctx = make_ctx("notifier", config_for(gone, max_attempts=2, notify="[owner]"))
    d = deliverer(ctx, clock, http)
    lead_id = str(uuid.uuid4())
    await consume(ctx, sla_event("breached", lead_id, clock.now()))
    await d.run_once()
    clock.advance(timedelta(seconds=5))
    with capture_logs() as logs:
        await d.run_once()
    [failed] = [e for e in await stored_events(engine, "notifier", lead_id, published_only=True) if e.type.startswith("notification.")]
    assert failed.type == "notification.failed" and failed.data["attempts"] == 2
    assert failed.data["error"] == "ConnectError"
    # An operator sees it in the log too (ids, never the recipient's address), not only in metrics.
    [given_up] = [entry for entry in logs if entry["event"] == "notifier.delivery_given_up"]
    assert given_up["log_level"] == "warning" and given_up["lead_id"] == lead_id
    assert (given_up["channel"], given_up["attempts"], given_up["error"]) == ("hook", 2, "ConnectError")
    assert given_up["delivery"] == failed.data["notification_id"]


async def test_a_crash_between_send_and_record_resends_the_same_key_once_the_lease_expires(
        make_ctx, clock, engine, receiver, http):
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]"))
    crashed, survivor = deliverer(ctx, clock, http), deliverer(ctx, clock, http)
    lead_id = str(uuid.uuid4())
    await consume(ctx, sla_event("breached", lead_id, clock.now()))
    await crashed.fire(clock.now())
    leased = await crashed.lease(clock.now())
    await crashed.send(leased, clock.now())  # the receiver got it; then the process died
    assert len(to(receiver, lead_id)) == 1

    await survivor.run_once()
    assert len(to(receiver, lead_id)) == 1  # still leased: nobody sends it twice at once
    clock.advance(timedelta(seconds=ctx.config.config.notifier.lease_seconds))
    await survivor.run_once()
    keys = [m["_headers"]["idempotency-key"] for m, _ in receiver.received if m["lead_id"] == lead_id]
    assert len(keys) == 2 and keys[0] == keys[1]

    # The dead process's late record cannot overwrite the survivor's outcome.

    await crashed.record(leased, [Attempt(status=500, error="HTTP 500")], clock.now())
    events = await stored_events(engine, "notifier", lead_id, published_only=True)
    assert [e.type for e in events if e.type.startswith("notification.")] == ["notification.sent"]
    assert events[-1].data["attempts"] == 2 and events[-1].data["idempotency_key"] == keys[0]


def limited_channel_config(receiver: HttpReceiver, settings: str = "") -> str:
    """config_for's policy, through a channel of its own that sends at most 2 a minute."""
    channel = f"limited-{uuid.uuid4().hex[:6]}"
    return config_for(receiver, notify="[owner]").replace("channels: [hook]", f"channels: [{channel}]").replace(
        "channels:\n", f"channels:\n  {channel}: {{url: \"{receiver.url}\", secret: \"{SECRET}\", "
                       f"{settings}rate_limit: {{max: 2, per: 1m}}}}\n")


async def test_a_rate_limited_channel_sends_its_quota_per_window_and_the_rest_wait(make_ctx, clock, receiver,
                                                                                  http):
    ctx = make_ctx("notifier", limited_channel_config(receiver))
    d = deliverer(ctx, clock, http)
    leads = [str(uuid.uuid4()) for _ in range(5)]
    await consume(ctx, *(sla_event("breached", lead_id, clock.now(), sla_id=lead_id) for lead_id in leads))

    def sent() -> int:
        return sum(len(to(receiver, lead_id)) for lead_id in leads)

    await d.run_once()
    await d.run_once()
    assert sent() == 2
    clock.advance(timedelta(seconds=61))
    await d.run_once()
    assert sent() == 4
    clock.advance(timedelta(seconds=61))
    await d.run_once()
    assert sent() == 5


async def test_a_rate_limit_counts_the_tries_a_failing_receiver_was_sent_not_only_successes(
        make_ctx, clock, receiver, http):
    # Only sends that succeeded (and those in flight) counted: against a receiver answering 500,
    # every retry found the quota free again and the channel sent far more than `max` a window.
    ctx = make_ctx("notifier", limited_channel_config(receiver, "max_attempts: 5, "))
    d = deliverer(ctx, clock, http)
    leads = [str(uuid.uuid4()) for _ in range(3)]
    receiver.statuses = [500] * 20
    await consume(ctx, *(sla_event("breached", lead_id, clock.now(), sla_id=lead_id) for lead_id in leads))

    def tries() -> int:
        return sum(len(to(receiver, lead_id)) for lead_id in leads)

    for _ in range(10):  # 10 s of rounds, each after every backoff has passed
        await d.run_once()
        clock.advance(timedelta(seconds=1))
    assert tries() == 2
    clock.advance(timedelta(seconds=60))
    await d.run_once()
    assert tries() == 4


def touch_event(lead_id: str, now, activity_type: str = "call", outcome: str | None = "connected"):
    return new_event("activity.recorded", service="intake", lead_id=lead_id, time=now, data=ActivityRecorded(
        lead_id=lead_id, activity_id=str(uuid.uuid4()), type=activity_type, actor="alice", occurred_at=now,
        outcome=outcome))


async def read(ctx, clock, events, *, batched: bool) -> None:
    """The events read one by one, or `batched` as a consumer hands a fetched batch's run over."""
    if batched:
        async with ctx.uow() as uow:
            await on_run(uow, [Received.of(e) for e in events], NotifierDeps(ctx.config.config, clock.now()))
            await uow.commit()
    else:
        await consume(ctx, *events)


TOUCHES = """
sla_policies:
  - id: p
    metrics: {first_response: {target: 5m}}
    qualifying_touches: [{type: call, outcomes: [connected]}, email]
"""


@pytest.mark.parametrize("batched", [False, True], ids=["event by event", "as a consumer's run"])
async def test_a_late_touch_read_before_the_breachs_first_step_went_still_lets_it_go(make_ctx, clock, engine,
                                                                                   receiver, http, batched):
    """Found by the long chaos run: the owner's call a second after the deadline reached the
    notifier before its delivery loop sent step 1, and stopped the chain whole: nobody heard of the
    breach. The steps already due when the touch is read still go; only those after it stop (also
    when the call was made before the breach left, held up by an outage: it was still late)."""
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]") + TOUCHES)
    d = deliverer(ctx, clock, http)
    lead = str(uuid.uuid4())
    await consume(ctx, sla_event("breached", lead, clock.now(), sla_id=f"sla-{lead}"))
    clock.advance(timedelta(seconds=1))
    await read(ctx, clock, [touch_event(lead, clock.now())], batched=batched)
    await d.run_once()
    assert to(receiver, lead) == [(1, "alice")]
    clock.advance(timedelta(minutes=15))
    await d.run_once()
    assert to(receiver, lead) == [(1, "alice")]  # step 2, due after the call: stopped


@pytest.mark.parametrize("batched", [False, True], ids=["event by event", "as a consumer's run"])
async def test_a_late_touch_read_before_its_breach_stops_the_steps_after_it_as_one_read_after(
        make_ctx, clock, engine, receiver, http, batched):
    """Found by a chaos audit (17 of 17 leads): the owner's call half a second after the deadline
    reached the notifier before the breach, which the clock sent just after the call (the call
    confirmed the deadline had passed), on another topic. The chain, planned after the touch was
    read, went whole: lead ops heard of a lead its owner had reached. Read in either order, the
    breach's first step goes and the steps after the touch do not; a touch that is no answer (a
    call not connected) stops nothing."""
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]") + TOUCHES)
    d = deliverer(ctx, clock, http)
    answered, escalated = str(uuid.uuid4()), str(uuid.uuid4())
    deadline = clock.now()
    clock.advance(timedelta(milliseconds=500))
    events = [touch_event(answered, clock.now()), touch_event(escalated, clock.now(), outcome="no_answer")]
    clock.advance(timedelta(milliseconds=50))
    events += [sla_event("breached", lead, deadline, sla_id=f"sla-{lead}").model_copy(update={"time": clock.now()})
               for lead in (answered, escalated)]
    await read(ctx, clock, events, batched=batched)
    await d.run_once()
    clock.advance(timedelta(minutes=15))
    await d.run_once()
    assert to(receiver, answered) == [(1, "alice")]
    assert to(receiver, escalated) == [(1, "alice"), (2, "ops")]


@pytest.mark.parametrize("batched", [False, True], ids=["event by event", "as a consumer's run"])
async def test_a_late_first_response_stops_the_chain_a_non_qualifying_touch_does_not(make_ctx, clock, engine,
                                                                                   receiver, http, batched):
    # The breach stands (the timer ends there, no sla.met follows), but once the owner has
    # reached the buyer, telling lead ops 15 minutes later is noise.
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]") + TOUCHES)
    d = deliverer(ctx, clock, http)
    escalated, answered = await two_breached_leads(ctx, clock, d, receiver)
    events = [touch_event(escalated, clock.now(), outcome="no_answer"),  # not a touch under policy p
              touch_event(answered, clock.now())]
    await read(ctx, clock, events, batched=batched)
    clock.advance(timedelta(minutes=15))
    await d.run_once()
    assert to(receiver, escalated) == [(1, "alice"), (2, "ops")]
    assert to(receiver, answered) == [(1, "alice")]


async def test_a_run_with_chain_stopping_events_and_touches_reads_the_escalations_in_one_statement(
        make_ctx, clock, engine, receiver, http):
    """Touches (the busiest event type) may stop a chain, so a run reads their leads' pending
    escalations; with an sla.met in the same run, that was a second statement on the escalations
    (a round trip more per batch on the notifier's hot path)."""
    ctx = make_ctx("notifier", config_for(receiver, notify="[owner]") + TOUCHES)
    d = deliverer(ctx, clock, http)
    escalated, answered = await two_breached_leads(ctx, clock, d, receiver)
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    sqlalchemy_event.listen(ctx.engine.sync_engine, "before_cursor_execute", seen)
    try:
        run = [sla_event("met", escalated, clock.now(), sla_id=f"sla-{escalated}"), touch_event(answered, clock.now())]
        async with ctx.uow() as uow:
            await on_run(uow, [Received.of(e) for e in run], NotifierDeps(ctx.config.config, clock.now()))
            await uow.commit()
    finally:
        sqlalchemy_event.remove(ctx.engine.sync_engine, "before_cursor_execute", seen)
    reads = [s for s in statements if s.startswith("SELECT notifier.escalations.")]
    assert len(reads) == 1, reads
    clock.advance(timedelta(minutes=15))
    await d.run_once()
    assert to(receiver, escalated) == [(1, "alice")] and to(receiver, answered) == [(1, "alice")]  # both stopped


WARN_THEN_BREACH = """
owners: [{id: alice, manager_id: maria}, {id: maria}, {id: ops}]
lead_ops: [ops]
channels:
  hook: {url: "%s", secret: "%s", max_attempts: 3}
escalation_policies:
  - id: warn
    triggers: [sla.warning]
    steps:
      - {step: 1, notify: [owner], channels: [hook]}
      - {step: 2, after: 10m, notify: [manager], channels: [hook]}
  - id: breach
    triggers: [sla.breached]
    steps:
      - {step: 1, notify: [lead_ops], channels: [hook]}
"""


def warning_event(lead_id: str, now, due_at, sla_id: str):
    return new_event("sla.warning", service="sla_clock", lead_id=lead_id, time=now, data=SLA_PAYLOADS["warning"](
        lead_id=lead_id, sla_id=sla_id, metric="first_response", policy_id="p", policy_version=1, owner_id="alice",
        due_at=due_at, percent=80))


async def test_a_breach_supersedes_its_warnings_steps_and_a_warning_read_after_the_deadline_warns_nobody(
        make_ctx, clock, receiver, http):
    """The warning chain's manager step, due after the deadline, told the manager "80% of the time
    used" beside the breach; and a warning the notifier read only after the deadline (it was down)
    went out as "due in 0 s"."""
    ctx = make_ctx("notifier", WARN_THEN_BREACH % (receiver.url, SECRET))
    d = deliverer(ctx, clock, http)
    warned, late = str(uuid.uuid4()), str(uuid.uuid4())
    await consume(ctx, warning_event(warned, clock.now(), clock.now() + timedelta(minutes=1), f"sla-{warned}"))
    await d.run_once()
    assert to(receiver, warned) == [(1, "alice")]
    clock.advance(timedelta(minutes=1))
    await consume(ctx, sla_event("breached", warned, clock.now(), sla_id=f"sla-{warned}"),
                  warning_event(late, clock.now() - timedelta(minutes=2), clock.now() - timedelta(seconds=1),
                                f"sla-{late}"))
    clock.advance(timedelta(minutes=10))
    await d.run_once()
    assert to(receiver, warned) == [(1, "alice"), (1, "ops")]  # no manager step from the warning
    assert to(receiver, late) == []


@pytest.mark.parametrize("batched", [False, True], ids=["event by event", "as a consumer's run"])
async def test_a_timer_reset_on_reassignment_stops_the_warning_steps_of_its_previous_run(make_ctx, clock, receiver,
                                                                                       http, batched):
    """The warning told the owner; reassigned with on_reassign: reset, the new owner has the whole
    target again, so the manager is not told 10 minutes later that the old window is running out."""
    ctx = make_ctx("notifier", WARN_THEN_BREACH % (receiver.url, SECRET))
    d = deliverer(ctx, clock, http)
    lead_id = str(uuid.uuid4())
    first_run = clock.now() - timedelta(minutes=4)
    warning = warning_event(lead_id, clock.now(), clock.now() + timedelta(minutes=1), f"sla-{lead_id}")
    warning.data["started_at"] = first_run.isoformat()
    await consume(ctx, warning)
    await d.run_once()
    assert to(receiver, lead_id) == [(1, "alice")]
    clock.advance(timedelta(minutes=1))
    reset = new_event("sla.started", service="sla_clock", lead_id=lead_id, time=clock.now(),
                      data=SLA_PAYLOADS["started"](lead_id=lead_id, sla_id=f"sla-{lead_id}", metric="first_response",
                                                   policy_id="p", policy_version=1, owner_id="alice",
                                                   started_at=clock.now(), due_at=clock.now() + timedelta(minutes=5)))
    if batched:
        async with ctx.uow() as uow:
            await on_run(uow, [Received.of(reset)], NotifierDeps(ctx.config.config, clock.now()))
            await uow.commit()
    else:
        await consume(ctx, reset)
    clock.advance(timedelta(minutes=10))
    await d.run_once()
    assert to(receiver, lead_id) == [(1, "alice")]


async def test_a_receiver_slower_than_the_lease_gets_a_timed_out_attempt_not_the_message_again_every_lease(
        make_ctx, clock, engine, http):
    """A send outliving its lease was leased and sent again, and its outcome (no longer the
    lease holder's) was dropped: the same message every lease period, attempts never counted."""
    stalling = StallingReceiver()
    try:
        hook = f"http://127.0.0.1:{stalling.port}/hook"
        ctx = make_ctx("notifier", f"""
owners: [{{id: alice}}]
channels:
  hook: {{url: "{hook}", secret: "{SECRET}", timeout_seconds: 30, max_attempts: 2}}
notifier: {{lease_seconds: 1}}
escalation_policies:
  - {{id: breach, triggers: [sla.breached], steps: [{{step: 1, notify: [owner], channels: [hook]}}]}}
""")
        lead_id = str(uuid.uuid4())
        stalling.hold_all = True
        now = SystemClock()  # the lease runs out in real time, while the receiver stalls
        await consume(ctx, sla_event("breached", lead_id, now.now()))
        rounds = Deliverer(ctx.uow, lambda: ctx.config.config, Senders(http, ctx.engine, lambda: ctx.config.config),
                           now, jitter=lambda: 0.0)

        async def timed_out():
            await rounds.start_round()  # as the notifier's loop: a round finds what is due again
            async with engine.connect() as conn:
                return (await conn.execute(deliveries.select().where(
                    (deliveries.c.lead_id == lead_id) & deliveries.c.last_error.is_not(None)))).first()

        row = await eventually(timed_out, timeout=10, what="the stalled send's outcome recorded")
        await rounds.drain()
        assert (row.state, row.attempts) == ("pending", 1) and row.last_error.startswith("TimeoutError")
        assert row.next_attempt_at > now.now()  # retried after a backoff, counted against max_attempts
        assert len(stalling.arrivals) == 1  # not sent again while the first send hung
    finally:
        stalling.stop()
