"""The notifier's handlers through the in-memory store and unit of work: no database, no
broker. What they record is what the projection would apply."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.notifier.adapters import InMemoryStore, InMemoryUnitOfWork
from services.notifier.domain import (
    HOLD_FOR_RECEIVED,
    ORDER_WINDOW,
    ChainStopped,
    EscalationsPlanned,
    LeadNoted,
    StepFired,
    SubscriptionCreated,
    SubscriptionQueued,
)
from services.notifier.handlers import HANDLERS, NotifierDeps, fire_due_steps, internal
from shared.config import parse_config
from shared.events import (
    SLA_PAYLOADS,
    Company,
    Consent,
    Contact,
    Intent,
    LeadAssigned,
    LeadQueued,
    LeadReceived,
    LeadUpdated,
    NotificationFailed,
    SlaBreached,
    SlaCancelled,
    SlaMet,
    new_event,
)
from tests.support import handle_event

NOW = datetime(2026, 11, 17, 10, 0, tzinfo=UTC)
CONFIG = parse_config("""
owners: [{id: alice, name: Alice, manager_id: maria}, {id: maria}, {id: ops}]
lead_ops: [ops]
channels:
  hook: {url: "http://127.0.0.1:9/hook", secret: "0123456789abcdef"}
  team-slack: {type: slack, url_env: LEADSLA_UNIT_SLACK_URL}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps:
      - {step: 1, notify: [owner, manager], channels: [hook]}
      - {step: 2, after: 15m, notify: [lead_ops], channels: [hook]}
  - id: storm
    triggers: [sla.breached]
    steps: [{step: 1, notify: [manager], channels: [team-slack]}]
notifier: {link_base_url: "https://leads.example.com", digest: {window: 5m, after: 2}}
""")


def world() -> tuple[InMemoryStore, InMemoryUnitOfWork]:
    store = InMemoryStore()
    return store, InMemoryUnitOfWork(store)


async def consume(uow: InMemoryUnitOfWork, event, now: datetime = NOW, config=CONFIG) -> None:
    await handle_event(HANDLERS, uow, event, NotifierDeps(config, now, store=lambda _: uow.store))


def breached(lead_id: str, now: datetime = NOW):
    return new_event("sla.breached", service="sla_clock", lead_id=lead_id, time=now, data=SlaBreached(
        lead_id=lead_id, sla_id=f"sla-{lead_id}", metric="first_response", policy_id="p", policy_version=1,
        owner_id="alice", due_at=now, breached_at=now, root_cause="owner_missed", tier="B"))


def met(lead_id: str, now: datetime):
    return new_event("sla.met", service="sla_clock", lead_id=lead_id, time=now, data=SlaMet(
        lead_id=lead_id, sla_id=f"sla-{lead_id}", metric="first_response", policy_id="p", policy_version=1,
        owner_id="alice", due_at=now))


def received(lead_id: str, now: datetime = NOW):
    return new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
        lead_id=lead_id, source="webform", tier="A", contact=Contact(first_name="Ada", last_name="Byron"),
        company=Company(name="Analytical"), intent=Intent(type="demo_request"), consent=Consent(),
        contactable=True, received_at=now))


def assigned(lead_id: str, now: datetime = NOW):
    return new_event("lead.assigned", service="router", lead_id=lead_id, time=now, data=LeadAssigned(
        lead_id=lead_id, owner_id="alice", team_id="sdr", rule_id="r", method="round_robin", reason="rule",
        assignment_no=1, candidates=[], assigned_at=now, tier="A"))


def recorded(uow: InMemoryUnitOfWork, cls):
    return [cls.model_validate(e.data) for e in uow.recorded if e.type == cls.TYPE]


async def subscribe(uow: InMemoryUnitOfWork, types: list[str]) -> str:
    sub_id = str(uuid.uuid4())
    await uow.record(None, internal(SubscriptionCreated(subscription_id=sub_id, url="http://127.0.0.1:9/",
                                                        event_types=types, secret="s" * 20, created_at=NOW),
                                    time=NOW, stream=sub_id))
    return sub_id


async def test_a_breach_plans_each_step_at_its_delay_and_the_due_one_fires_once() -> None:
    store, uow = world()
    lead_id = str(uuid.uuid4())
    await consume(uow, breached(lead_id))
    [plan] = recorded(uow, EscalationsPlanned)
    assert sorted((s.policy_id, s.step, s.due_at - NOW) for s in plan.steps) == [
        ("breach", 1, timedelta(0)), ("breach", 2, timedelta(minutes=15)), ("storm", 1, timedelta(0))]

    assert sorted(await fire_due_steps(uow, CONFIG, NOW, store=store)) == [1, 1]
    assert await fire_due_steps(uow, CONFIG, NOW, store=store) == []  # fired: not due any more
    fired = {f.escalation_id: f for f in recorded(uow, StepFired)}
    hook = next(f for f in fired.values() if f.deliveries[0].channel == "hook")
    assert sorted(d.recipient for d in hook.deliveries) == ["alice", "maria"]
    assert hook.deliveries[0].payload["message"]["text"].startswith("SLA breached")
    triggered = [e for e in uow.emitted if e.type == "escalation.triggered"]
    assert len(triggered) == 2 and all(e.causationid == plan.trigger_event_id for e in triggered)


async def test_a_met_sla_stops_the_rest_of_its_chain() -> None:
    store, uow = world()
    lead_id = str(uuid.uuid4())
    await consume(uow, breached(lead_id))
    await fire_due_steps(uow, CONFIG, NOW, store=store)
    await consume(uow, met(lead_id, NOW + timedelta(minutes=5)))
    assert [c.sla_id for c in recorded(uow, ChainStopped)] == [f"sla-{lead_id}"]
    assert await fire_due_steps(uow, CONFIG, NOW + timedelta(hours=1), store=store) == []


async def test_the_end_of_a_missed_follow_ups_cadence_stops_its_chain_but_not_its_steps_already_due() -> None:
    """sla.cancelled (cadence_exhausted) right after the breach of the last follow-up: a cancelled
    SLA stops its chain (CONTRACT), but the breach did happen, and its first step, due at once,
    still tells the owner (read in one run with the breach, it was cancelled with the rest)."""
    store, uow = world()
    lead_id = str(uuid.uuid4())
    await consume(uow, breached(lead_id))
    await consume(uow, new_event("sla.cancelled", service="sla_clock", lead_id=lead_id, time=NOW, data=SlaCancelled(
        lead_id=lead_id, sla_id=f"sla-{lead_id}", metric="next_action", policy_id="p", policy_version=1,
        owner_id="alice", due_at=NOW, breached_at=NOW, reason="cadence_exhausted")))
    assert [c.sla_id for c in recorded(uow, ChainStopped)] == [f"sla-{lead_id}"]
    assert sorted(await fire_due_steps(uow, CONFIG, NOW, store=store)) == [1, 1]  # the breach's first steps
    assert await fire_due_steps(uow, CONFIG, NOW + timedelta(hours=1), store=store) == []  # step 2 stopped


def opted_out(lead_id: str, now: datetime):
    return new_event("lead.updated", service="intake", lead_id=lead_id, time=now, data=LeadUpdated(
        lead_id=lead_id, changed={"contactable": {"old": True, "new": False}}, tier="A", previous_tier="A",
        reason="opted_out", contactable=False))


async def test_an_opt_out_after_a_breach_stops_the_rest_of_its_chain() -> None:
    # The clock cancels only running timers: the breached one's chain gets no sla.cancelled.
    store, uow = world()
    lead_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    await consume(uow, breached(lead_id))
    await consume(uow, breached(other))
    await fire_due_steps(uow, CONFIG, NOW, store=store)
    await consume(uow, opted_out(lead_id, NOW + timedelta(minutes=5)))
    assert [c.sla_id for c in recorded(uow, ChainStopped)] == [f"sla-{lead_id}"]
    assert await fire_due_steps(uow, CONFIG, NOW + timedelta(hours=1), store=store) == [2]  # the other lead's


async def test_a_met_sla_with_no_escalation_records_nothing() -> None:
    _, uow = world()
    await consume(uow, met(str(uuid.uuid4()), NOW))
    assert uow.recorded == []


async def test_lead_facts_are_noted_and_messages_carry_them() -> None:
    store, uow = world()
    lead_id = str(uuid.uuid4())
    await consume(uow, received(lead_id))
    await consume(uow, assigned(lead_id))
    assert [n.fields for n in recorded(uow, LeadNoted)] == [
        ["company", "name", "received_at", "source", "tier"], ["owner_id", "routed", "tier"]]
    await consume(uow, breached(lead_id))
    await fire_due_steps(uow, CONFIG, NOW, store=store)
    lead = next(d.payload["lead"] for f in recorded(uow, StepFired) for d in f.deliveries if d.channel == "hook")
    assert (lead["name"], lead["company"], lead["owner_name"]) == ("Ada Byron", "Analytical", "Alice")


async def test_in_a_storm_a_managers_messages_go_into_one_digest_after_the_first_few() -> None:
    store, uow = world()
    for _ in range(5):
        await consume(uow, breached(str(uuid.uuid4())))
    await fire_due_steps(uow, CONFIG, NOW, store=store)
    slack = [d for f in recorded(uow, StepFired) for d in f.deliveries if d.channel == "team-slack"]
    assert [d.kind for d in slack] == ["single", "single", "digest", "digest", "digest"]
    assert len({d.notification_id for d in slack if d.kind == "digest"}) == 1
    assert sum(len(f.digest_items) for f in recorded(uow, StepFired)) == 3


async def test_an_assignment_waits_for_its_lead_received_and_is_released_by_it() -> None:
    _, uow = world()
    wants_received = await subscribe(uow, ["lead.*"])
    only_assigned = await subscribe(uow, ["lead.assigned"])
    lead_id = str(uuid.uuid4())
    await consume(uow, assigned(lead_id))
    [queued] = recorded(uow, SubscriptionQueued)
    send_at = {q.subscription_id: q.next_attempt_at for q in queued.deliveries}
    assert send_at == {wants_received: NOW + HOLD_FOR_RECEIVED, only_assigned: NOW + ORDER_WINDOW}
    assert not queued.releases_held

    await consume(uow, received(lead_id), NOW + timedelta(seconds=3))
    release = recorded(uow, SubscriptionQueued)[-1]
    assert release.releases_held and [q.subscription_id for q in release.deliveries] == [wants_received]
    assert uow.store.subscription_deliveries[(wants_received, queued.event_id)].next_attempt_at == \
        NOW + timedelta(seconds=3)


async def test_once_its_lead_received_was_seen_a_leads_news_goes_as_soon_as_nothing_earlier_is_on_its_way() -> None:
    """Not held for lead.received: only `ORDER_WINDOW` after its own time (at once if read later
    than that), for an event stamped before it on another topic."""
    _, uow = world()
    sub_id = await subscribe(uow, ["lead.*"])
    lead_id = str(uuid.uuid4())
    await consume(uow, received(lead_id))
    await consume(uow, assigned(lead_id))
    assert [q.next_attempt_at for q in recorded(uow, SubscriptionQueued)[-1].deliveries] == [NOW + ORDER_WINDOW]
    await consume(uow, assigned(lead_id, NOW - timedelta(seconds=1)))  # read 1 s after it happened
    assert [q.next_attempt_at for q in recorded(uow, SubscriptionQueued)[-1].deliveries] == [NOW]
    assert sub_id


async def test_a_subscription_is_not_sent_the_news_of_its_own_failures() -> None:
    _, uow = world()
    down = await subscribe(uow, ["notification.*"])
    other = await subscribe(uow, ["notification.*"])
    lead_id = str(uuid.uuid4())
    failed = new_event("notification.failed", service="notifier", lead_id=lead_id, time=NOW, data=NotificationFailed(
        notification_id="n", lead_id=lead_id, channel="subscription", recipient=down, attempts=3,
        idempotency_key="k", subscription_id=down, event_id="e"))
    await consume(uow, failed)
    [queued] = recorded(uow, SubscriptionQueued)
    assert [q.subscription_id for q in queued.deliveries] == [other]


async def test_quiet_hours_follow_a_persons_own_working_hours() -> None:
    # An owner's `working_hours` win over `calendar` (the router routes by them); quiet hours read
    # only `calendar`, so a manager with their own hours was messaged in the middle of the night.
    config = parse_config("""
owners:
  - {id: alice, manager_id: maria}
  - id: maria
    working_hours: {timezone: Europe/London, hours: {mon: ["09:00-17:30"], tue: ["09:00-17:30"],
                    wed: ["09:00-17:30"], thu: ["09:00-17:30"], fri: ["09:00-17:30"]}}
channels:
  team-slack: {type: slack, url_env: LEADSLA_UNIT_SLACK_URL}
escalation_policies:
  - {id: breach, triggers: [sla.breached], steps: [{step: 1, notify: [manager], channels: [team-slack]}]}
notifier: {quiet_hours: {urgent_tiers: [A]}}
""")
    evening = datetime(2026, 11, 17, 22, 0, tzinfo=UTC)  # a Tuesday, after hours in London
    store, uow = world()
    await handle_event(HANDLERS, uow, breached(str(uuid.uuid4()), evening),
                       NotifierDeps(config, evening, store=lambda _: uow.store))
    await fire_due_steps(uow, config, evening, store=store)
    [delivery] = [d for f in recorded(uow, StepFired) for d in f.deliveries]
    assert delivery.next_attempt_at == datetime(2026, 11, 18, 9, 0, tzinfo=UTC)


async def test_steps_are_due_at_their_delay_after_the_breach_not_after_the_notifier_read_it() -> None:
    # A notifier that was down (or lagging) 20 minutes planned "after: 15m" from when it read the
    # breach: the manager heard 35 minutes after it instead of at once on its return.
    store, uow = world()
    lead_id = str(uuid.uuid4())
    later = NOW + timedelta(minutes=20)
    await consume(uow, breached(lead_id, NOW), later)
    [plan] = recorded(uow, EscalationsPlanned)
    assert sorted((s.policy_id, s.step, s.due_at) for s in plan.steps) == [
        ("breach", 1, NOW), ("breach", 2, NOW + timedelta(minutes=15)), ("storm", 1, NOW)]
    assert sorted(await fire_due_steps(uow, CONFIG, later, store=store)) == [1, 1, 2]


async def test_a_breach_stamped_ahead_of_the_notifiers_clock_is_planned_from_now() -> None:
    store, uow = world()
    await consume(uow, breached(str(uuid.uuid4()), NOW + timedelta(minutes=1)), NOW)
    [plan] = recorded(uow, EscalationsPlanned)
    assert min(s.due_at for s in plan.steps) == NOW


WARN_CONFIG = parse_config("""
owners: [{id: alice, manager_id: maria}, {id: bob, manager_id: maria}, {id: maria}]
channels:
  hook: {url: "http://127.0.0.1:9/hook", secret: "0123456789abcdef"}
escalation_policies:
  - id: warn
    triggers: [sla.warning]
    steps:
      - {step: 1, notify: [owner], channels: [hook]}
      - {step: 2, after: 10m, notify: [manager], channels: [hook]}
""")


def sla_run_event(kind: str, lead_id: str, now: datetime, started_at: datetime, owner_id: str = "alice"):
    return new_event(f"sla.{kind}", service="sla_clock", lead_id=lead_id, time=now, data=SLA_PAYLOADS[kind](
        lead_id=lead_id, sla_id=f"sla-{lead_id}", metric="first_response", policy_id="p", policy_version=1,
        owner_id=owner_id, started_at=started_at, due_at=started_at + timedelta(hours=1),
        percent=50 if kind == "warning" else None))


async def test_a_timer_started_again_stops_the_warning_chain_of_its_previous_run() -> None:
    """Reassigned with on_reassign: reset, the timer starts again with the whole target for the
    new owner: the manager is not told 10 minutes later that the old window is half gone."""
    store, uow = world()
    lead_id = str(uuid.uuid4())
    started = NOW - timedelta(minutes=30)

    async def consume_(event, now: datetime = NOW) -> None:
        await handle_event(HANDLERS, uow, event, NotifierDeps(WARN_CONFIG, now, store=lambda _: uow.store))

    await consume_(sla_run_event("started", lead_id, started, started))
    await consume_(sla_run_event("warning", lead_id, NOW, started))
    assert await fire_due_steps(uow, WARN_CONFIG, NOW, store=store) == [1]
    await consume_(sla_run_event("started", lead_id, started, started), NOW)  # the first run's, again: no restart
    assert recorded(uow, ChainStopped) == []
    reset = NOW + timedelta(minutes=2)
    await consume_(sla_run_event("started", lead_id, reset, reset, owner_id="bob"), reset)
    assert [c.sla_id for c in recorded(uow, ChainStopped)] == [f"sla-{lead_id}"]
    assert await fire_due_steps(uow, WARN_CONFIG, NOW + timedelta(hours=1), store=store) == []


async def test_a_lead_taken_from_its_owner_into_the_queue_escalates_to_lead_ops_not_the_former_owner() -> None:
    """Rerouted away from alice, nobody could take it: its breach (no owner on it) must not reach
    alice and her manager because the notifier still remembered her as the owner."""
    store, uow = world()
    lead_id = str(uuid.uuid4())
    await consume(uow, received(lead_id))
    await consume(uow, assigned(lead_id))
    await consume(uow, new_event("lead.queued", service="router", lead_id=lead_id, time=NOW, data=LeadQueued(
        lead_id=lead_id, tier="A", queue="tier-A", reason="no_eligible_owner", assignment_no=2,
        from_owner_id="alice")))
    breach = breached(lead_id)
    breach.data.update(owner_id=None, root_cause="no_owner")
    await consume(uow, breach)
    await fire_due_steps(uow, CONFIG, NOW, store=store)
    hook = next(f for f in recorded(uow, StepFired) if f.deliveries and f.deliveries[0].channel == "hook")
    assert [d.recipient for d in hook.deliveries] == ["ops"]


async def test_a_step_that_fires_after_the_lead_was_taken_into_the_queue_goes_to_lead_ops() -> None:
    """alice missed the deadline (the breach names her); before the manager step fired, the lead
    was taken from her into the queue. The notifier holds no owner for it then, and fell back to
    the breach's owner: the step went to alice's manager about a lead nobody has."""
    config = parse_config("""
owners: [{id: alice, manager_id: maria}, {id: maria}, {id: ops}]
lead_ops: [ops]
channels: {hook: {url: "http://127.0.0.1:9/hook", secret: "0123456789abcdef"}}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps: [{step: 1, notify: [owner], channels: [hook]}, {step: 2, after: 15m, notify: [manager], channels: [hook]}]
""")
    store, uow = world()
    lead_id = str(uuid.uuid4())
    for event in (received(lead_id), assigned(lead_id), breached(lead_id)):
        await consume(uow, event, config=config)
    await fire_due_steps(uow, config, NOW, store=store)
    await consume(uow, new_event("lead.queued", service="router", lead_id=lead_id, time=NOW, data=LeadQueued(
        lead_id=lead_id, tier="A", queue="tier-A", reason="owner_unavailable", assignment_no=2,
        from_owner_id="alice")), config=config)
    await fire_due_steps(uow, config, NOW + timedelta(minutes=15), store=store)
    assert [[d.recipient for d in f.deliveries] for f in recorded(uow, StepFired)] == [["alice"], ["ops"]]


async def test_a_link_template_links_messages_to_the_lead_in_the_crm() -> None:
    # Seen as a sales manager: the only link was `<link_base_url>/v1/leads/<id>`, reporting's API,
    # which answers a browser 401 without an admin key; a CRM deep link could not be written.
    config = parse_config("""
owners: [{id: alice, manager_id: maria}, {id: maria}]
channels:
  team-slack: {type: slack, url_env: LEADSLA_UNIT_SLACK_URL}
escalation_policies:
  - {id: breach, triggers: [sla.breached], steps: [{step: 1, notify: [owner], channels: [team-slack]}]}
notifier: {link_base_url: "https://leads.example.com", link_template: "https://crm.example.com/open?ext={lead_id}"}
""")
    store, uow = world()
    lead_id = str(uuid.uuid4())
    await handle_event(HANDLERS, uow, breached(lead_id), NotifierDeps(config, NOW, store=lambda _: uow.store))
    await fire_due_steps(uow, config, NOW, store=store)
    [made] = [d for f in recorded(uow, StepFired) for d in f.deliveries]
    assert made.payload["lead"]["link"] == f"https://crm.example.com/open?ext={lead_id}"
    assert made.payload["message"]["slack"]["blocks"][-1]["elements"][0]["url"] == made.payload["lead"]["link"]
