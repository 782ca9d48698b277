"""The SLA clock's handlers through the in-memory store: no database, no broker. What they record
(sla.* on the sla topic, the clock's own notes kept in its store) and the state those events leave."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.sla_clock.adapters import InMemoryClockStore
from services.sla_clock.handlers import (
    SlaDeps,
    fire_due,
    on_activity,
    on_lead_assigned,
    on_lead_queued,
    on_lead_reassigned,
    on_lead_received,
    on_lead_updated,
)
from shared.config import Config, parse_config
from shared.events import (
    TOPIC_SLA,
    ActivityRecorded,
    CloudEvent,
    Company,
    Consent,
    Contact,
    Intent,
    LeadAssigned,
    LeadQueued,
    LeadReassigned,
    LeadReceived,
    LeadUpdated,
    Received,
    new_event,
)

CONFIG = parse_config("""
owners: [{id: alice}]
sla_policies:
  - id: demo
    filter: {tiers: [A]}
    metrics:
      first_response: {target: 5m, warn_at: [50]}
      next_action: {target: 1h, touches: 2, warn_at: []}
""")
T0 = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def received(lead_id: str, at: datetime = T0) -> CloudEvent:
    return new_event("lead.received", service="intake", lead_id=lead_id, time=at, data=LeadReceived(
        lead_id=lead_id, source="web", tier="A", contact=Contact(email="a@example.com"), company=Company(),
        intent=Intent(type="demo_request"), consent=Consent(), contactable=True, received_at=at))


def assigned(lead_id: str, at: datetime = T0) -> CloudEvent:
    return new_event("lead.assigned", service="router", lead_id=lead_id, time=at, data=LeadAssigned(
        lead_id=lead_id, owner_id="alice", team_id="sdr", rule_id="r", method="round_robin", reason="rule_match",
        assignment_no=1, candidates=[], assigned_at=at, tier="A"))


def activity(lead_id: str, at: datetime, type_: str = "call", occurred_at: datetime | None = None) -> CloudEvent:
    """`at`: when intake accepted it; `occurred_at`: when the sender says it happened (default `at`)."""
    return new_event("activity.recorded", service="intake", lead_id=lead_id, time=at, data=ActivityRecorded(
        lead_id=lead_id, activity_id=str(uuid.uuid4()), type=type_, actor="alice", occurred_at=occurred_at or at))


async def handle(store: InMemoryClockStore, handler, event: CloudEvent, config: Config = CONFIG) -> None:
    await handler(store, Received.of(event), SlaDeps(config, 1, event.time))


async def started(store: InMemoryClockStore, config: Config = CONFIG) -> str:
    lead_id = str(uuid.uuid4())
    await handle(store, on_lead_received, received(lead_id), config)
    await handle(store, on_lead_assigned, assigned(lead_id), config)
    return lead_id


async def fire(store: InMemoryClockStore, now: datetime) -> int:
    return await fire_due(store, CONFIG, now, seen=now)


def types(store: InMemoryClockStore) -> list[tuple[str | None, str]]:
    return [(topic, event.type) for topic, event in store.recorded]


async def test_a_lead_is_noted_and_its_timer_started_on_the_sla_topic_the_notes_kept_in_the_store() -> None:
    store = InMemoryClockStore()
    lead_id = await started(store)
    # The owner is noted with the assignment (no running timer to hand over: no owner_changed).
    assert types(store) == [(None, "sla_clock.lead_noted"), (None, "sla_clock.lead_noted"),
                            (TOPIC_SLA, "sla.started")]
    assert store.expected == [lead_id, lead_id]  # each input handler decided on the lead's version
    lead = await store.lead(lead_id)
    assert (lead.source, lead.owner_id, lead.team_id, lead.assigned_at) == ("web", "alice", "sdr", T0)
    [timer] = await store.timers(lead_id)
    assert (timer.metric, timer.state, timer.owner_id, timer.due_at, timer.next_fire_at) == (
        "first_response", "open", "alice", T0 + timedelta(minutes=5), T0 + timedelta(seconds=150))


async def test_the_timer_warns_then_breaches_once_and_each_event_carries_the_state_it_leaves() -> None:
    store = InMemoryClockStore()
    lead_id = await started(store)
    assert await fire(store, T0 + timedelta(seconds=149)) == 0
    assert store.observed == []
    assert await fire(store, T0 + timedelta(seconds=150)) == 1
    assert len(store.observed) == 1  # the warning, to be counted when a commit makes it true
    warning = store.recorded[-1][1]
    assert warning.data["percent"] == 50
    assert warning.data["timer"]["warned"] == [50] and warning.data["timer"]["next_fire_at"].startswith(
        "2026-11-17T09:05:00")
    assert await fire(store, T0 + timedelta(minutes=5)) == 1
    assert await fire(store, T0 + timedelta(minutes=6)) == 0
    breach = store.recorded[-1][1]
    assert len(store.observed) == 3  # and the breach, with its lag
    assert (breach.type, breach.data["root_cause"], breach.data["timer"]["state"]) == (
        "sla.breached", "owner_missed", "breached")
    [timer] = await store.timers(lead_id)
    assert (timer.state, timer.root_cause, timer.next_fire_at) == ("breached", "owner_missed", None)


async def test_a_touch_in_time_meets_the_response_and_starts_the_cadence_so_nothing_fires_for_it() -> None:
    store = InMemoryClockStore()
    lead_id = await started(store)
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(minutes=2)))
    assert types(store)[-3:] == [(None, "sla_clock.lead_noted"), (TOPIC_SLA, "sla.met"), (TOPIC_SLA, "sla.started")]
    timers = {t.metric: t for t in await store.timers(lead_id)}
    assert (timers["first_response"].state, timers["first_response"].closed_at) == ("met", T0 + timedelta(minutes=2))
    assert timers["next_action"].state == "open"
    assert (await store.lead(lead_id)).first_touch_at == T0 + timedelta(minutes=2)
    assert await fire(store, T0 + timedelta(minutes=10)) == 0


async def test_a_back_filled_touch_from_before_the_lead_came_answers_nothing() -> None:
    """A CRM back-filling a lead's history posts a call made three days before the lead came: it
    was brought forward to its acceptance less the skew, met the first response (closed before
    the timer started) and started a cadence already overdue, which breached as system_delay."""
    store = InMemoryClockStore()
    lead_id = await started(store)
    before = len(store.recorded)
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(minutes=1),
                                              occurred_at=T0 - timedelta(days=3)))
    assert store.recorded[before:] == []
    [timer] = await store.timers(lead_id)
    assert timer.state == "open" and (await store.lead(lead_id)).first_touch_at is None
    # A touch made a minute after the lead came, sent on time, still meets it.
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(minutes=2)))
    assert {t.metric: t.state for t in await store.timers(lead_id)} == {"first_response": "met", "next_action": "open"}


async def test_an_older_touch_arriving_after_a_newer_one_is_no_follow_up_of_the_cadence() -> None:
    """Touches sent out of order: a call made before the one that started follow-up 2 (but sent
    after it) was counted as that follow-up, the cadence moving on twice for one touch."""
    store = InMemoryClockStore()
    lead_id = await started(store)
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(minutes=30)))  # first response
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(minutes=50)))  # follow-up 1 met
    [cadence] = [t for t in await store.timers(lead_id) if t.metric == "next_action"]
    assert (cadence.step, cadence.state) == (2, "open")
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(minutes=51),
                                              occurred_at=T0 + timedelta(minutes=35)))
    [after] = [t for t in await store.timers(lead_id) if t.metric == "next_action"]
    assert (after.step, after.state, after.due_at) == (2, "open", cadence.due_at)


async def test_an_opt_out_cancels_every_running_timer_and_closes_the_lead() -> None:
    store = InMemoryClockStore()
    lead_id = await started(store)
    await handle(store, on_lead_updated, new_event(
        "lead.updated", service="intake", lead_id=lead_id, time=T0 + timedelta(minutes=1), data=LeadUpdated(
            lead_id=lead_id, changed={"consent.contact": {"old": True, "new": False}}, tier="A", previous_tier="A",
            reason="opted_out")))
    [timer] = await store.timers(lead_id)
    assert (timer.state, timer.reason) == ("cancelled", "opted_out")
    assert (await store.lead(lead_id)).closed_reason == "opted_out"
    assert types(store)[-2:] == [(None, "sla_clock.lead_noted"), (TOPIC_SLA, "sla.cancelled")]


async def test_an_assignment_before_its_lead_is_noted_from_what_it_says_and_completed_by_the_receipt() -> None:
    store = InMemoryClockStore()
    lead_id = str(uuid.uuid4())
    await handle(store, on_lead_assigned, assigned(lead_id))
    assert (await store.lead(lead_id)).source == "unknown"
    await handle(store, on_lead_received, received(lead_id))
    lead = await store.lead(lead_id)
    assert (lead.source, lead.owner_id) == ("web", "alice")
    assert len(await store.timers(lead_id)) == 1  # started once, by the assignment


async def test_a_receipt_handled_again_notes_nothing_new_and_starts_nothing() -> None:
    store = InMemoryClockStore()
    lead_id = str(uuid.uuid4())
    receipt = received(lead_id)
    await handle(store, on_lead_received, receipt)
    await handle(store, on_lead_assigned, assigned(lead_id))
    before = len(store.recorded)
    await handle(store, on_lead_received, receipt)
    assert len(store.recorded) == before


async def test_a_first_response_that_books_a_meeting_starts_no_cadence_of_follow_ups() -> None:
    """The cadence chases a buyer nobody has reached yet; a meeting booked with the first touch
    has nothing left to chase, so no follow-up falls due, breaches and escalates to the manager."""
    store = InMemoryClockStore()
    lead_id = await started(store)
    at = T0 + timedelta(minutes=1)
    meeting = new_event("activity.recorded", service="intake", lead_id=lead_id, time=at, data=ActivityRecorded(
        lead_id=lead_id, activity_id=str(uuid.uuid4()), type="meeting", outcome="booked", actor="alice",
        occurred_at=at))
    await handle(store, on_activity, meeting)
    timers = {t.metric: t for t in await store.timers(lead_id)}
    assert timers["first_response"].state == "met"
    assert "next_action" not in timers
    assert await fire(store, T0 + timedelta(hours=2)) == 0


async def test_a_timer_started_on_receipt_after_an_overtaking_assignment_belongs_to_the_assigned_owner() -> None:
    """lead.assigned (leads.routing) can reach the clock before lead.received (leads.intake): a
    timer that starts on receipt then must still name the owner, or its breach would blame nobody
    (no_owner) and its escalation reach no owner or manager."""
    config = parse_config("""
owners: [{id: alice}]
sla_policies:
  - {id: on-receipt, start_on: received, metrics: {first_response: {target: 5m, warn_at: []}}}
""")
    store = InMemoryClockStore()
    lead_id = str(uuid.uuid4())
    await handle(store, on_lead_assigned, assigned(lead_id), config)
    await handle(store, on_lead_received, received(lead_id), config)
    [timer] = await store.timers(lead_id)
    assert timer.owner_id == "alice"
    assert store.recorded[-1][1].data["owner_id"] == "alice"
    await fire_due(store, config, T0 + timedelta(minutes=5), seen=T0 + timedelta(minutes=5))
    [timer] = await store.timers(lead_id)
    assert (timer.state, timer.root_cause) == ("breached", "owner_missed")


async def test_a_first_response_made_while_the_lead_is_paused_starts_its_cadence_paused() -> None:
    """Paused, then answered (the rep replies "talk after your holiday"): the response meets, and
    the first follow-up waits for the resume rather than breaching while the lead is paused."""
    store = InMemoryClockStore()
    lead_id = await started(store)
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(minutes=1), type_="pause"))
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(minutes=2), type_="email"))
    timers = {t.metric: t for t in await store.timers(lead_id)}
    assert timers["first_response"].state == "met"
    assert (timers["next_action"].state, timers["next_action"].next_fire_at) == ("paused", None)
    assert await fire(store, T0 + timedelta(hours=3)) == 0
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(hours=3), type_="resume"))
    [cadence] = [t for t in await store.timers(lead_id) if t.metric == "next_action"]
    assert (cadence.state, cadence.due_at) == ("open", T0 + timedelta(hours=4))


async def test_a_lead_taken_from_its_owner_and_queued_is_timed_as_nobodys() -> None:
    """Rerouted away from its owner (out of office, a reassignment nobody else can take) into the
    queue: the owner no longer has the lead, so its breach is the queue's (capacity here), not
    owner_missed blamed on them, and its escalation does not go to them and their manager."""
    store = InMemoryClockStore()
    lead_id = await started(store)
    at = T0 + timedelta(minutes=1)
    await handle(store, on_lead_queued, new_event("lead.queued", service="router", lead_id=lead_id, time=at,
                                                  data=LeadQueued(lead_id=lead_id, tier="A", queue="tier-A",
                                                                  reason="at_capacity", assignment_no=2,
                                                                  from_owner_id="alice")))
    assert (await store.lead(lead_id)).owner_id is None
    [timer] = await store.timers(lead_id)
    assert timer.owner_id is None
    await fire(store, T0 + timedelta(minutes=5))
    [timer] = await store.timers(lead_id)
    assert (timer.state, timer.root_cause) == ("breached", "capacity")
    assert store.recorded[-1][1].data["owner_id"] is None


async def test_a_breach_due_outside_the_owners_own_working_hours_is_off_hours_coverage() -> None:
    """An owner's `working_hours` win over a calendar for routing and quiet hours; the clock read
    only `calendar`, so a breach due at night for someone who works 09:00-17:00 was owner_missed."""
    config = parse_config("""
owners: [{id: alice, working_hours: {timezone: UTC, hours: {tue: ["10:00-17:00"]}}}]
sla_policies:
  - {id: demo, metrics: {first_response: {target: 5m, warn_at: []}}}
""")
    store = InMemoryClockStore()
    lead_id = await started(store, config)
    await fire_due(store, config, T0 + timedelta(minutes=5), seen=T0 + timedelta(minutes=5))  # Tue 09:05
    [timer] = await store.timers(lead_id)
    assert (timer.state, timer.root_cause) == ("breached", "off_hours_coverage")


async def test_a_metric_read_in_the_owners_zone_takes_it_from_their_own_working_hours() -> None:
    config = parse_config("""
calendars: {biz: {timezone: UTC, hours: {tue: ["09:00-17:00"]}}}
owners: [{id: alice, working_hours: {timezone: Asia/Tokyo, hours: {tue: ["09:00-17:00"]}}}]
sla_policies:
  - {id: demo, calendar: biz, metrics: {first_response: {target: 5m, warn_at: [], timezone: owner}}}
""")
    store = InMemoryClockStore()
    lead_id = await started(store, config)
    [timer] = await store.timers(lead_id)
    assert timer.timezone == "Asia/Tokyo"


async def test_a_deadline_missed_before_a_reassignment_is_the_previous_owners_breach() -> None:
    """Due at 09:05, reassigned to bob at 09:05:30 before the clock judged the deadline (its watermark
    lags; an outage holds it for minutes): the miss was alice's, so the breach names her, not bob,
    who got the lead after it was already late. A timer not yet due goes to bob as before."""
    config = parse_config("""
owners: [{id: alice}, {id: bob}]
sla_policies:
  - id: demo
    metrics: {first_response: {target: 5m, warn_at: []}, qualification: {target: 1h, warn_at: []}}
""")
    store = InMemoryClockStore()
    lead_id = await started(store, config)
    moved_at = T0 + timedelta(minutes=5, seconds=30)
    await handle(store, on_lead_reassigned, new_event(
        "lead.reassigned", service="router", lead_id=lead_id, time=moved_at, data=LeadReassigned(
            lead_id=lead_id, from_owner_id="alice", to_owner_id="bob", reason="manual", assignment_no=2)), config)
    timers = {t.metric: t for t in await store.timers(lead_id)}
    assert (timers["first_response"].owner_id, timers["qualification"].owner_id) == ("alice", "bob")
    await fire_due(store, config, moved_at, seen=moved_at)
    breach = store.recorded[-1][1]
    assert (breach.type, breach.data["owner_id"], breach.data["root_cause"]) == ("sla.breached", "alice",
                                                                                "owner_missed")


async def test_a_disqualification_spelled_as_the_configuration_spells_it_cancels_the_timers() -> None:
    """With `disposition_reasons: {Disqualified: [...]}` intake records the status as 'Disqualified':
    the clock compared it with 'disqualified' exactly, and the disqualified lead's timers breached."""
    store = InMemoryClockStore()
    lead_id = await started(store)
    event = new_event("activity.recorded", service="intake", lead_id=lead_id, time=T0 + timedelta(minutes=1),
                      data=ActivityRecorded(lead_id=lead_id, activity_id=str(uuid.uuid4()), type="disposition",
                                            actor="alice", occurred_at=T0 + timedelta(minutes=1),
                                            disposition={"status": "Disqualified", "reason": "no_budget"}))
    await handle(store, on_activity, event)
    assert [t.state for t in await store.timers(lead_id)] == ["cancelled"]
    assert store.recorded[-1][1].data["reason"] == "disqualified"



async def test_a_call_logged_with_its_disposition_meets_qualification_and_answers_the_lead() -> None:
    """A CRM logs a call with its result as a disposition (`type: call`, `disposition: {...}`):
    it is the lead's disposition, as the router and reporting read it, so it meets qualification
    (it was left running and breached on the owner, while the reports showed the lead
    dispositioned) and ends the cadence; a connected call, it is the first response too."""
    config = parse_config("""
owners: [{id: alice}]
sla_policies:
  - id: demo
    metrics:
      first_response: {target: 5m, warn_at: []}
      next_action: {target: 1h, touches: 2, warn_at: []}
      qualification: {target: 1d, warn_at: []}
""")
    store = InMemoryClockStore()
    lead_id = await started(store, config)
    at = T0 + timedelta(minutes=2)
    await handle(store, on_activity, new_event(
        "activity.recorded", service="intake", lead_id=lead_id, time=at, data=ActivityRecorded(
            lead_id=lead_id, activity_id=str(uuid.uuid4()), type="call", outcome="connected", actor="alice",
            occurred_at=at, disposition={"status": "unreachable", "reason": "no_answer_5x"})), config)
    assert {t.metric: t.state for t in await store.timers(lead_id)} == {"first_response": "met", "qualification": "met"}
    assert [e.type for _, e in store.recorded if e.type.startswith("sla.")].count("sla.met") == 2


TWO_CALENDARS = parse_config("""
owners: [{id: alice}]
calendars:
  office: {timezone: America/New_York, hours: {mon: ["09:00-17:00"], tue: ["09:00-17:00"], wed: ["09:00-17:00"]}}
sla_policies:
  - id: hot
    filter: {tiers: [A]}
    calendar: office
    metrics:
      first_response: {target: 1h, warn_at: []}
      qualification: {target: 2d, warn_at: [], start_on: received}
  - id: standard
    filter: {tiers: [B]}
    metrics:
      first_response: {target: 8h, warn_at: []}
""")
MON_16 = datetime(2026, 3, 9, 20, 0, tzinfo=UTC)  # Monday 16:00 in New York


async def tier_b_paused_then_upgraded(store: InMemoryClockStore) -> str:
    """Received and assigned as tier B (8h around the clock) Mon 16:00, paused 16:30, upgraded to
    A (1h of office time) Tue 08:30, before the office opens."""
    lead_id = str(uuid.uuid4())
    b = TWO_CALENDARS
    await handle(store, on_lead_received, new_event("lead.received", service="intake", lead_id=lead_id, time=MON_16,
                 data=LeadReceived(lead_id=lead_id, source="web", tier="B", contact=Contact(email="a@example.com"),
                                   company=Company(), intent=Intent(type="trial"), consent=Consent(),
                                   contactable=True, received_at=MON_16)), b)
    await handle(store, on_lead_assigned, new_event("lead.assigned", service="router", lead_id=lead_id, time=MON_16,
                 data=LeadAssigned(lead_id=lead_id, owner_id="alice", team_id="sdr", rule_id="r", method="round_robin",
                                   reason="rule_match", assignment_no=1, candidates=[], assigned_at=MON_16, tier="B")), b)
    await handle(store, on_activity, activity(lead_id, MON_16 + timedelta(minutes=30), "pause"), b)
    upgrade = MON_16 + timedelta(hours=16, minutes=30)
    await handle(store, on_lead_updated, new_event("lead.updated", service="intake", lead_id=lead_id, time=upgrade,
                 data=LeadUpdated(lead_id=lead_id, changed={"tier": {"old": "B", "new": "A"}}, tier="A",
                                  previous_tier="B", reason="upgraded")), b)
    return lead_id


async def test_a_pause_running_at_a_tier_change_is_counted_in_the_new_policy_s_hours() -> None:
    """The night paused was handed over as 16 hours (the old policy's around-the-clock time) and
    added to the office calendar's target: due Wednesday 17:00, two business days late."""
    store = InMemoryClockStore()
    lead_id = await tier_b_paused_then_upgraded(store)
    await handle(store, on_activity, activity(lead_id, MON_16 + timedelta(hours=17), "resume"), TWO_CALENDARS)
    timers = {t.metric: t for t in await store.timers(lead_id) if t.policy_id == "hot"}
    # 30 office minutes were used before the pause (16:00-16:30), none during it: 30 left from Tue 09:00.
    assert (timers["first_response"].state, timers["first_response"].due_at) == (
        "open", MON_16 + timedelta(hours=17, minutes=30))


async def test_a_metric_only_the_new_policy_has_starts_paused_on_a_paused_lead() -> None:
    store = InMemoryClockStore()
    lead_id = await tier_b_paused_then_upgraded(store)
    assert {t.metric: t.state for t in await store.timers(lead_id) if t.policy_id == "hot"} == {
        "first_response": "paused", "qualification": "paused"}


async def test_a_follow_up_met_carries_its_own_step_s_timer_not_the_next_one_s() -> None:
    """sla.met for follow-up 1 carried data.timer of follow-up 2 (step 2, open): a consumer reading
    the timer saw a met event say "open"."""
    store = InMemoryClockStore()
    lead_id = await started(store)
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(minutes=3)))  # first response
    await handle(store, on_activity, activity(lead_id, T0 + timedelta(minutes=20)))  # follow-up 1
    met, started_next = [e for _, e in store.recorded[-2:]]
    assert (met.type, met.data["step"], met.data["timer"]["step"], met.data["timer"]["state"]) == (
        "sla.met", 1, 1, "met")
    assert met.data["timer"]["closed_at"].startswith("2026-11-17T09:20:00")
    assert (started_next.type, started_next.data["timer"]["step"], started_next.data["timer"]["state"]) == (
        "sla.started", 2, "open")


async def test_a_lead_whose_time_zone_is_kept_as_sent_is_timed_in_its_policy_s_zone() -> None:
    """Intake keeps an unknown contact.timezone as sent: 'US' or 'Europe' (a folder of zones, not
    one) made the clock's zone check raise IsADirectoryError, and the lead was never timed."""
    store = InMemoryClockStore()
    lead_id = str(uuid.uuid4())
    event = received(lead_id)
    event = event.model_copy(update={"data": {**event.data, "contact": {**event.data["contact"], "timezone": "US"}}})
    await handle(store, on_lead_received, event)
    await handle(store, on_lead_assigned, assigned(lead_id))
    [timer] = await store.timers(lead_id)
    assert (timer.state, timer.due_at) == ("open", T0 + timedelta(minutes=5))
