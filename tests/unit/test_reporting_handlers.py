"""Reporting's handler through the in-memory store: no database, no broker."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.reporting.adapters import InMemoryReadModels
from services.reporting.domain import fold_events
from services.reporting.entrypoints import csv_cell
from services.reporting.handlers import calendars, project
from shared.config import parse_config
from shared.events import CloudEvent, utc_iso
from tests.integration import reporting_scenario as scenario

T0 = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
NO_CALENDARS = calendars(None)


def event(type_: str, lead_id: str = "l1", at: datetime = T0, **data: Any) -> CloudEvent:
    return CloudEvent(id=str(uuid.uuid4()), source="test", type=type_, subject=lead_id, time=at,
                      data={"lead_id": lead_id, **{k: utc_iso(v) if isinstance(v, datetime) else v
                                                   for k, v in data.items()}})


def received(lead_id: str = "l1") -> CloudEvent:
    return event("lead.received", lead_id, source="web", tier="A", received_at=T0, contact={"email": "a@example.com"})


def started(sla_id: str = "s1", lead_id: str = "l1") -> CloudEvent:
    return event("sla.started", lead_id, sla_id=sla_id, metric="first_response", policy_id="fast", tier="A",
                 owner_id="alice", started_at=T0, due_at=T0 + timedelta(minutes=5))


def touch(at: datetime, lead_id: str = "l1", actor: str = "alice") -> CloudEvent:
    return event("activity.recorded", lead_id, at, type="call", actor=actor, occurred_at=at)


async def project_all(store: InMemoryReadModels, *events: CloudEvent) -> list[bool]:
    """One event at a time: whether each changed something."""
    return [await project(store, [e], NO_CALENDARS) == 1 for e in events]


async def test_a_received_lead_gets_its_facts_and_a_timeline_entry() -> None:
    store = InMemoryReadModels()
    first = received()
    assert await project_all(store, first) == [True]
    lead = store.leads_by_id["l1"]
    assert lead["tier"] == "A" and lead["status"] == "received" and lead["received_at"] == utc_iso(T0)
    assert list(store.timeline) == [first.id]


async def test_a_redelivered_event_changes_nothing() -> None:
    store = InMemoryReadModels()
    assign = event("lead.reassigned", owner_id="bob", assignment_no=2)
    await project_all(store, received(), assign)
    before = {k: dict(v) for k, v in store.leads_by_id.items()}
    assert await project_all(store, assign) == [False]
    assert store.leads_by_id == before and store.leads_by_id["l1"]["reassignments"] == 1


async def test_an_event_without_a_lead_is_ignored() -> None:
    store = InMemoryReadModels()
    orphan = CloudEvent(id="x", source="test", type="owner.changed", time=T0, data={"owner_id": "alice"})
    assert await project_all(store, orphan) == [False]
    assert store.timeline == {} and store.leads_by_id == {}


async def test_an_unknown_type_is_kept_in_the_timeline_and_only_moves_updated_at() -> None:
    store = InMemoryReadModels()
    await project_all(store, received())
    odd = event("lead.frobnicated", at=T0 + timedelta(minutes=3), colour="blue")
    assert await project_all(store, odd) == [True]
    assert odd.id in store.timeline
    assert store.leads_by_id["l1"]["updated_at"] == utc_iso(T0 + timedelta(minutes=3))
    assert store.leads_by_id["l1"]["status"] == "received"


async def test_an_sla_event_writes_its_own_timer_only() -> None:
    store = InMemoryReadModels()
    await project_all(store, received(), started("s1"), started("s2", lead_id="l2"))
    met = event("sla.met", sla_id="s1", metric="first_response", policy_id="fast", tier="A", owner_id="alice",
                started_at=T0, due_at=T0 + timedelta(minutes=5), met_at=T0 + timedelta(minutes=2))
    await project_all(store, met)
    assert store.sla_timers["s1"]["state"] == "met" and store.sla_timers["s1"]["ttfr_seconds"] == 120.0
    assert store.sla_timers["s2"]["state"] == "open"
    assert store.leads_by_id["l1"]["sla"]["first_response"]["state"] == "met"


async def test_a_late_touch_answers_a_breached_timer() -> None:
    store = InMemoryReadModels()
    breached = event("sla.breached", sla_id="s1", metric="first_response", policy_id="fast", tier="A",
                     owner_id="alice", started_at=T0, due_at=T0 + timedelta(minutes=5),
                     breached_at=T0 + timedelta(minutes=5), root_cause="owner_missed")
    await project_all(store, received(), started(), breached, touch(T0 + timedelta(hours=1)))
    timer = store.sla_timers["s1"]
    assert timer["state"] == "breached" and timer["ttfr_seconds"] == 3600.0
    assert store.leads_by_id["l1"]["status"] == "responded" and store.leads_by_id["l1"]["breached"] is True


async def test_the_live_handler_in_runs_of_any_length_and_the_rebuild_fold_agree_on_a_whole_scenario() -> None:
    s = scenario.build(seed=7, leads=40)
    events = [e for _, e in s.events]
    of = calendars(parse_config(scenario.CONFIG))
    one_by_one, in_runs = InMemoryReadModels(), InMemoryReadModels()
    for e in events:
        await project(one_by_one, [e], of)
    for i in range(0, len(events), 7):  # a fetched batch's run: several events of one lead among others
        await project(in_runs, events[i:i + 7], of)
    leads: dict = {}
    timers: dict = {}
    fold_events(events, of, leads, timers)
    rebuilt = InMemoryReadModels()
    await rebuilt.save(leads.values(), [t for own in timers.values() for t in own.values()])
    for store in (one_by_one, in_runs):
        assert store.leads_by_id == rebuilt.leads_by_id and store.sla_timers == rebuilt.sla_timers
    assert any(t["state"] == "breached" for t in rebuilt.sla_timers.values())  # not two empty models agreeing


async def test_a_run_with_a_redelivered_event_and_an_event_without_a_lead_folds_the_rest() -> None:
    store = InMemoryReadModels()
    first = received()
    await project(store, [first], NO_CALENDARS)
    orphan = CloudEvent(id="x", source="test", type="owner.changed", time=T0, data={"owner_id": "alice"})
    by_data = CloudEvent(id="y", source="test", type="lead.received", time=T0,
                         data={"lead_id": "l2", "source": "web", "tier": "B", "received_at": utc_iso(T0)})
    assert await project(store, [first, orphan, started("s1"), by_data], NO_CALENDARS) == 2
    assert store.sla_timers["s1"]["state"] == "open" and store.leads_by_id["l2"]["tier"] == "B"
    assert store.timeline["y"][0] == "l2"


def assigned(owner: str, team: str, number: int, at: datetime, lead_id: str = "l1") -> CloudEvent:
    kind = "lead.assigned" if number == 1 else "lead.reassigned"
    return event(kind, lead_id, at, owner_id=owner, to_owner_id=owner, team_id=team, assignment_no=number,
                 method="round_robin", assigned_at=at)


def met(sla_id: str, at: datetime, owner: str = "alice") -> CloudEvent:
    return event("sla.met", sla_id=sla_id, metric="first_response", policy_id="fast", tier="A", owner_id=owner,
                 started_at=T0, due_at=T0 + timedelta(minutes=5), met_at=at)


async def test_a_timer_stays_in_the_team_of_the_owner_who_held_it_when_the_lead_moves_to_another_team() -> None:
    """The SLA report by team read the lead's current team: alice (sdr) met the SLA, the lead went
    to carol (ae) an hour later, and the met timer counted for ae while the owner column said alice.
    A running timer moves with the lead, to its new owner and team."""
    store = InMemoryReadModels()
    qualification = event("sla.started", sla_id="q1", metric="qualification", policy_id="fast", tier="A",
                          owner_id="alice", started_at=T0, due_at=T0 + timedelta(days=7))
    await project_all(store, received(), assigned("alice", "sdr", 1, T0), started("s1"), qualification,
                      met("s1", T0 + timedelta(minutes=1)), assigned("carol", "ae", 2, T0 + timedelta(hours=1)))
    assert (store.sla_timers["s1"]["owner_id"], store.sla_timers["s1"]["team_id"]) == ("alice", "sdr")
    assert (store.sla_timers["q1"]["owner_id"], store.sla_timers["q1"]["team_id"]) == ("carol", "ae")
    lead = store.leads_by_id["l1"]
    # The lead's first team stays, as its first owner does (routing success is theirs).
    assert (lead["team_id"], lead["first_owner_id"], lead["first_team_id"]) == ("ae", "alice", "sdr")


async def test_a_timer_judged_before_its_assignment_arrived_takes_its_owner_s_team_when_it_does() -> None:
    """leads.sla and leads.routing are read apart: the met may be folded before the assignment."""
    for order in ("met first", "reassigned first"):
        store = InMemoryReadModels()
        judged = [started("s1"), met("s1", T0 + timedelta(minutes=1))]
        routed = [assigned("alice", "sdr", 1, T0), assigned("carol", "ae", 2, T0 + timedelta(hours=1))]
        if order == "reassigned first":
            routed.reverse()
        await project_all(store, received(), *judged, *routed)
        assert store.sla_timers["s1"]["team_id"] == "sdr", order
        assert store.leads_by_id["l1"]["first_team_id"] == "sdr", order


@pytest.mark.parametrize(("value", "cell"), [
    ("=HYPERLINK(\"http://x\",\"y\")", "'=HYPERLINK(\"http://x\",\"y\")"), ("+1", "'+1"), ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tcmd", "'\tcmd"), ("webinar", "webinar"), ("", ""), (-5, -5), (0.25, 0.25),
    (None, None),
])
def test_a_csv_cell_that_a_spreadsheet_would_run_as_a_formula_is_shown_as_text(value, cell) -> None:
    assert csv_cell(value) == cell


OFFICE_CONFIG = parse_config("""
calendars:
  office: {timezone: UTC, hours: {mon: ["09:00-17:00"], tue: ["09:00-17:00"], wed: ["09:00-17:00"],
                                  thu: ["09:00-17:00"], fri: ["09:00-17:00"]}}
sla_policies:
  - {id: fast, metrics: {first_response: {target: 1h, calendar: office}}}
""")
FRIDAY = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)


@pytest.mark.parametrize("timed_by", [
    {"calendar": "office"},  # as the SLA clock's events say
    None,  # events that do not say: the metric's own calendar, not the policy's (always open)
    {"calendar": "office", "timezone": "Asia/Tokyo"},  # in the zone the clock used (the owner's, say)
])
async def test_business_time_to_first_response_is_measured_on_the_calendar_the_clock_timed_it_by(timed_by) -> None:
    store = InMemoryReadModels()
    monday = datetime(2026, 11, 23, 9, 29, tzinfo=UTC)
    timer = {} if timed_by is None else {"timer": timed_by}
    start = event("sla.started", at=FRIDAY, sla_id="s1", metric="first_response", policy_id="fast", tier="A",
                  owner_id="alice", started_at=FRIDAY, due_at=monday, **timer)
    done = event("sla.met", at=monday, sla_id="s1", metric="first_response", policy_id="fast", tier="A",
                 owner_id="alice", started_at=FRIDAY, due_at=monday, met_at=monday, **timer)
    for e in (start, done):
        await project(store, [e], calendars(OFFICE_CONFIG))
    business = store.sla_timers["s1"]["ttfr_business_seconds"]
    if timed_by and timed_by.get("timezone"):
        # Tokyo's office: Friday 16:30 UTC is Saturday 01:30 there, Monday 09:29 UTC is 18:29:
        # Monday's whole day in Tokyo (00:00-08:00 UTC) lies between.
        assert business == 8 * 3600
    else:
        assert business == 30 * 60 + 29 * 60  # Friday's last half hour and Monday's first 29 minutes


async def test_a_lead_taken_back_into_the_queue_leaves_its_running_timers_to_nobody() -> None:
    """The SLA clock's timers lose their owner when the lead is taken back (out of office, say):
    the board and the report by owner must not keep blaming the owner it was taken from."""
    store = InMemoryReadModels()
    taken = event("lead.queued", at=T0 + timedelta(minutes=2), tier="A", queue="A", reason="owner_unavailable",
                  from_owner_id="alice", assignment_no=2)
    await project_all(store, received(), assigned("alice", "sdr", 1, T0), started("s1"), taken)
    assert (store.sla_timers["s1"]["owner_id"], store.sla_timers["s1"]["team_id"]) == (None, None)
    await project_all(store, assigned("bob", "ae", 2, T0 + timedelta(minutes=3)))
    assert (store.sla_timers["s1"]["owner_id"], store.sla_timers["s1"]["team_id"]) == ("bob", "ae")


async def test_a_timer_past_its_deadline_when_the_lead_moves_stays_with_the_owner_who_missed_it() -> None:
    """As the SLA clock holds it until the breach is judged: the board must not show the new owner
    as overdue for a deadline the previous one let pass."""
    store = InMemoryReadModels()
    await project_all(store, received(), assigned("alice", "sdr", 1, T0), started("s1"),  # due at 5 min
                      assigned("carol", "ae", 2, T0 + timedelta(minutes=6)))
    assert (store.sla_timers["s1"]["owner_id"], store.sla_timers["s1"]["team_id"]) == ("alice", "sdr")


async def test_a_lead_received_without_consent_to_contact_reads_opted_out() -> None:
    store = InMemoryReadModels()
    await project_all(store, event("lead.received", source="web", tier="A", received_at=T0,
                                   consent={"contact": False}, contactable=False))
    assert store.leads_by_id["l1"]["status"] == "opted_out"


async def test_a_timer_of_an_owner_between_the_first_and_the_current_counts_for_their_team() -> None:
    """carol (ae) had the lead first, alice (sdr) second, bob has it now; alice let the deadline
    pass before the lead went to bob, so the breach is hers, and her team's, not nobody's. Here
    leads.routing is folded ahead of leads.sla (they are read apart)."""
    config = parse_config("""
owners: [{id: alice}, {id: bob}, {id: carol}]
teams: [{id: ae, members: [carol, bob]}, {id: sdr, members: [alice]}]
sla_policies: [{id: fast, metrics: {first_response: {target: 5m}}}]
""")
    store = InMemoryReadModels()
    breached = event("sla.breached", at=T0 + timedelta(minutes=7), sla_id="s1", metric="first_response",
                     policy_id="fast", tier="A", owner_id="alice", started_at=T0, due_at=T0 + timedelta(minutes=5),
                     breached_at=T0 + timedelta(minutes=5), root_cause="owner_missed")
    start = event("sla.started", sla_id="s1", metric="first_response", policy_id="fast", tier="A", owner_id="carol",
                  started_at=T0, due_at=T0 + timedelta(minutes=5))
    for e in (received(), assigned("carol", "ae", 1, T0), assigned("alice", "sdr", 2, T0 + timedelta(minutes=1)),
              assigned("bob", "ae", 3, T0 + timedelta(minutes=6)), start, breached):
        await project(store, [e], calendars(config))
    assert (store.sla_timers["s1"]["owner_id"], store.sla_timers["s1"]["team_id"]) == ("alice", "sdr")
