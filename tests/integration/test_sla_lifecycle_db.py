"""The lead's whole life on the SLA clock (issue 9), on real Postgres under a manual clock: the
three metrics, outcome- and actor-aware touches, pause and resume, cancellation, queued leads,
reassignment."""
from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from services.sla_clock.adapters import PostgresClockStore
from services.sla_clock.handlers import (
    Ready,
    fire_due,
    on_activity,
    on_lead_assigned,
    on_lead_queued,
    on_lead_reassigned,
    on_lead_received,
    prepare_due,
)
from shared.events import (
    ActivityRecorded,
    CloudEvent,
    Disposition,
    LeadQueued,
    LeadReassigned,
    new_event,
)
from tests.integration.test_sla_clock_db import assigned, handle, received
from tests.support import stored_events

CONFIG = """
owners: [{id: alice}, {id: bob}]
sla_policies:
  - id: full
    filter: {tiers: [A]}
    on_reassign: reset
    touch_actors: owner
    metrics:
      first_response: {target: 5m, warn_at: [50]}
      next_action: {target: 1h, touches: 2, warn_at: []}
      qualification: {target: 1d, warn_at: []}
    qualifying_touches:
      - email
      - {type: call, outcomes: [connected]}
      - {type: call, outcomes: [no_answer], metrics: [next_action]}
  - id: simple
    filter: {tiers: [B]}
    metrics: {first_response: {target: 5m, warn_at: []}}
"""


@pytest.fixture
def ctx(make_ctx):
    return make_ctx("sla_clock", CONFIG)


def activity(lead_id: str, at, type_: str = "call", outcome: str | None = "connected", actor: str = "alice",
             disposition: Disposition | None = None) -> CloudEvent:
    return new_event("activity.recorded", service="intake", lead_id=lead_id, time=at, data=ActivityRecorded(
        lead_id=lead_id, activity_id=str(uuid.uuid4()), type=type_, actor=actor, occurred_at=at, outcome=outcome,
        disposition=disposition))


async def start(ctx, clock, tier: str = "A") -> str:
    lead_id = str(uuid.uuid4())
    cfg = ctx.config.config
    lead = received(lead_id, clock.now())
    lead = lead.model_copy(update={"data": {**lead.data, "tier": tier}})
    await handle(ctx, on_lead_received, cfg, 1, lead, clock.now())
    event = assigned(lead_id, clock.now())
    await handle(ctx, on_lead_assigned, cfg, 1, event.model_copy(update={"data": {**event.data, "tier": tier}}),
                 clock.now())
    return lead_id


async def act(ctx, event: CloudEvent) -> None:
    await handle(ctx, on_activity, ctx.config.config, event, event.time)


async def fire(ctx, now) -> None:
    async with ctx.uow() as uow:
        await fire_due(PostgresClockStore(uow), ctx.config.config, now, seen=now)
        await uow.commit()


async def sla_events(engine, lead_id: str) -> list[CloudEvent]:
    """The lead's sla.* events in the clock's store (it keeps its internal sla_clock.* events there too)."""
    return [e for e in await stored_events(engine, "sla_clock", lead_id) if e.type.startswith("sla.")]


async def history(engine, lead_id: str) -> list[tuple[str, str]]:
    """(type, metric) of every SLA event of the lead, in commit order."""
    return [(e.type, e.data["metric"]) for e in await sla_events(engine, lead_id)]


def minutes(clock, n: float):
    return clock.now() + timedelta(minutes=n)


async def test_all_three_metrics_start_with_the_lead_and_next_action_at_the_first_response(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock)
    assert await history(engine, lead_id) == [("sla.started", "first_response"), ("sla.started", "qualification")]
    await act(ctx, activity(lead_id, minutes(clock, 2)))
    assert (await history(engine, lead_id))[2:] == [("sla.met", "first_response"), ("sla.started", "next_action")]
    started = (await sla_events(engine, lead_id))[-1].data
    assert started["due_at"] == (minutes(clock, 62)).isoformat().replace("+00:00", "Z") and started["step"] == 1


async def test_a_no_answer_call_is_a_cadence_attempt_but_not_a_first_response(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock)
    await act(ctx, activity(lead_id, minutes(clock, 1), outcome="no_answer"))
    assert ("sla.met", "first_response") not in await history(engine, lead_id)
    await act(ctx, activity(lead_id, minutes(clock, 2), type_="email", outcome=None))
    await act(ctx, activity(lead_id, minutes(clock, 30), outcome="no_answer"))  # follow-up 1 of 2
    await act(ctx, activity(lead_id, minutes(clock, 80), outcome="no_answer"))  # follow-up 2 of 2: cadence done
    events = await sla_events(engine, lead_id)
    cadence = [(e.type, e.data.get("step"), e.data.get("reason")) for e in events if e.data["metric"] == "next_action"]
    assert cadence == [("sla.started", 1, None), ("sla.met", 1, None), ("sla.started", 2, None),
                       ("sla.met", 2, None), ("sla.cancelled", 2, "cadence_exhausted")]
    # Nothing of the cadence is left to fire.
    await fire(ctx, minutes(clock, 600))
    assert [t for t in await history(engine, lead_id) if t[1] == "next_action"][-1][0] == "sla.cancelled"


async def test_a_missed_follow_up_breaches_and_a_booked_meeting_ends_the_cadence(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock)
    await act(ctx, activity(lead_id, minutes(clock, 2)))
    await fire(ctx, minutes(clock, 62))
    await act(ctx, activity(lead_id, minutes(clock, 90), type_="meeting", outcome="booked"))
    cadence = [t for t in await history(engine, lead_id) if t[1] == "next_action"]
    assert cadence == [("sla.started", "next_action"), ("sla.breached", "next_action")]


async def test_a_missed_last_follow_up_ends_the_cadence_and_the_lead_goes_to_nurture(ctx, clock, engine) -> None:
    """Nobody touches the lead after the last follow-up was missed: the clock ends the cadence by
    itself (it waited for a touch that could change nothing), and says the miss stands."""
    lead_id = await start(ctx, clock)
    await act(ctx, activity(lead_id, minutes(clock, 2)))
    await act(ctx, activity(lead_id, minutes(clock, 30), outcome="no_answer"))  # follow-up 1 of 2
    await fire(ctx, minutes(clock, 90))  # follow-up 2, due at 90 min, missed
    await fire(ctx, minutes(clock, 91))
    cadence = [e for e in await sla_events(engine, lead_id) if e.data["metric"] == "next_action"]
    assert [(e.type, e.data.get("reason")) for e in cadence[-2:]] == [
        ("sla.breached", None), ("sla.cancelled", "cadence_exhausted")]
    assert cadence[-1].data["breached_at"] == cadence[-2].data["breached_at"]
    async with ctx.uow() as uow:
        rows = await PostgresClockStore(uow).timers(lead_id, None, "next_action")
        assert [(r.state, r.reason, r.next_fire_at) for r in rows] == [("cancelled", "cadence_exhausted", None)]
        assert rows[0].closed_at == minutes(clock, 90)  # when the miss was judged, as a breached timer shows


async def test_a_meeting_booked_after_a_missed_last_follow_up_keeps_the_lead_out_of_nurture(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock)
    await act(ctx, activity(lead_id, minutes(clock, 2)))
    await act(ctx, activity(lead_id, minutes(clock, 30), outcome="no_answer"))
    await fire(ctx, minutes(clock, 90))
    await act(ctx, activity(lead_id, minutes(clock, 91), type_="meeting", outcome="booked"))
    await fire(ctx, minutes(clock, 600))
    cadence = [(e.type, e.data.get("step")) for e in await sla_events(engine, lead_id)
               if e.data["metric"] == "next_action"]
    assert cadence[-1] == ("sla.breached", 2)
    async with ctx.uow() as uow:
        rows = await PostgresClockStore(uow).timers(lead_id, None, "next_action")
        assert [(r.state, r.next_fire_at) for r in rows] == [("breached", None)]


async def test_a_touch_by_someone_other_than_the_owner_does_not_count_when_the_policy_says_owner_only(
    ctx, clock, engine
) -> None:
    lead_id = await start(ctx, clock)
    await act(ctx, activity(lead_id, minutes(clock, 1), actor="bob"))
    await fire(ctx, minutes(clock, 5))
    assert ("sla.breached", "first_response") in await history(engine, lead_id)


async def test_pause_and_resume_move_every_running_deadline_by_the_paused_time(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock)
    await act(ctx, activity(lead_id, minutes(clock, 1), type_="pause", outcome=None))
    await fire(ctx, minutes(clock, 6))  # the old deadline passes while paused: nothing
    await act(ctx, activity(lead_id, minutes(clock, 11), type_="resume", outcome=None))
    await fire(ctx, minutes(clock, 14.9))
    events = await sla_events(engine, lead_id)
    assert [(e.type, e.data["metric"]) for e in events][2:] == [
        ("sla.paused", "first_response"), ("sla.paused", "qualification"),
        ("sla.resumed", "first_response"), ("sla.resumed", "qualification"),
        ("sla.warning", "first_response")]  # the 50% warning moved too: 2.5 + 10 minutes
    assert events[4].data["due_at"] == minutes(clock, 15).isoformat().replace("+00:00", "Z")
    assert events[5].data["due_at"] == (minutes(clock, 24 * 60 + 10)).isoformat().replace("+00:00", "Z")
    await fire(ctx, minutes(clock, 15))
    assert (await history(engine, lead_id))[-1] == ("sla.breached", "first_response")


async def test_opt_out_cancels_every_running_timer_and_nothing_starts_again(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock)
    await act(ctx, activity(lead_id, minutes(clock, 1), type_="opt_out", outcome=None))
    await act(ctx, activity(lead_id, minutes(clock, 2)))
    await fire(ctx, minutes(clock, 5000))
    events = await sla_events(engine, lead_id)
    assert [(e.type, e.data["metric"], e.data.get("reason")) for e in events][2:] == [
        ("sla.cancelled", "first_response", "opted_out"), ("sla.cancelled", "qualification", "opted_out")]


@pytest.mark.parametrize(("status", "expected"), [
    ("disqualified", [("sla.cancelled", "first_response"), ("sla.cancelled", "qualification")]),
    ("qualified", [("sla.met", "qualification")]),
])
async def test_a_disposition_meets_qualification_or_cancels_everything_when_disqualified(
    ctx, clock, engine, status, expected
) -> None:
    lead_id = await start(ctx, clock)
    await act(ctx, activity(lead_id, minutes(clock, 1), type_="disposition", outcome=None,
                            disposition=Disposition(status=status, reason="no_budget")))
    assert (await history(engine, lead_id))[2:] == expected


@pytest.mark.parametrize(("reason", "cause"), [("no_eligible_owner", "no_owner"), ("at_capacity", "capacity")])
async def test_a_queued_lead_is_timed_from_receipt_and_its_breach_names_why(ctx, clock, engine, reason, cause) -> None:
    lead_id = str(uuid.uuid4())
    cfg = ctx.config.config
    await handle(ctx, on_lead_received, cfg, 1, received(lead_id, clock.now()), clock.now())
    queued = new_event("lead.queued", service="router", lead_id=lead_id, time=minutes(clock, 0.1),
                       data=LeadQueued(lead_id=lead_id, tier="A", queue="tier-A", reason=reason))
    await handle(ctx, on_lead_queued, cfg, 1, queued, minutes(clock, 0.1))
    await fire(ctx, minutes(clock, 5))
    events = await sla_events(engine, lead_id)
    breach = next(e.data for e in events if e.type == "sla.breached")
    assert breach["owner_id"] is None and breach["root_cause"] == cause
    assert breach["due_at"] == minutes(clock, 5).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(("tier", "due_minutes"), [("A", 7), ("B", 5)])
async def test_reassignment_resets_or_continues_the_clock_as_the_policy_says(ctx, clock, engine, tier,
                                                                             due_minutes) -> None:
    lead_id = await start(ctx, clock, tier)
    moved = new_event("lead.reassigned", service="router", lead_id=lead_id, time=minutes(clock, 2),
                      data=LeadReassigned(lead_id=lead_id, from_owner_id="alice", to_owner_id="bob",
                                          reason="manual", assignment_no=2))
    await handle(ctx, on_lead_reassigned, ctx.config.config, moved, minutes(clock, 2))
    await fire(ctx, minutes(clock, due_minutes - 0.1))
    assert ("sla.breached", "first_response") not in await history(engine, lead_id)
    await fire(ctx, minutes(clock, due_minutes))
    breach = next(e.data for e in await sla_events(engine, lead_id) if e.type == "sla.breached")
    assert breach["owner_id"] == "bob"
    assert breach["due_at"] == minutes(clock, due_minutes).isoformat().replace("+00:00", "Z")


ZONES = """
owners: [{id: alice, calendar: tokyo}, {id: bob}]
teams: [{id: sdr, members: [alice, bob], calendar: west}]
calendars:
  office: {timezone: UTC, hours: {mon: ["09:00-17:00"], tue: ["09:00-17:00"], wed: ["09:00-17:00"],
                                  thu: ["09:00-17:00"], fri: ["09:00-17:00"]}}
  tokyo: {timezone: Asia/Tokyo}
  west: {timezone: America/Los_Angeles}
sla_policies:
  - id: zones
    calendar: office
    metrics:
      first_response: {target: 1h, warn_at: [], timezone: %s, on_reassign: reset}
      qualification: {target: 1h, warn_at: [], start_on: received}
"""


@pytest.mark.parametrize(("zone", "due_utc"), [
    ("calendar", "2026-11-17T10:00:00Z"),  # 09:00 UTC, office open: one hour later
    ("lead", "2026-11-17T15:00:00Z"),  # 04:00 in New York: opens 09:00 EST = 14:00 UTC
    ("owner", "2026-11-18T01:00:00Z"),  # 18:00 in Tokyo: opens Wednesday 09:00 JST = 00:00 UTC
    ("team", "2026-11-17T18:00:00Z"),  # 01:00 in Los Angeles: opens 09:00 PST = 17:00 UTC
])
async def test_a_metric_reads_its_calendar_in_the_zone_of_whoever_the_policy_says(make_ctx, clock, engine, zone,
                                                                                  due_utc) -> None:
    ctx = make_ctx("sla_clock", ZONES % zone)
    cfg = ctx.config.config
    lead_id = str(uuid.uuid4())
    lead = received(lead_id, clock.now())
    lead = lead.model_copy(update={"data": {**lead.data, "contact": {"email": "a@example.com",
                                                                     "timezone": "America/New_York"}}})
    await handle(ctx, on_lead_received, cfg, 1, lead, clock.now())
    await handle(ctx, on_lead_assigned, cfg, 1, assigned(lead_id, clock.now()), clock.now())
    events = await sla_events(engine, lead_id)
    # qualification starts on receipt (its own start_on), first_response on assignment (the policy's).
    assert [(e.type, e.data["metric"]) for e in events] == [("sla.started", "qualification"),
                                                            ("sla.started", "first_response")]
    assert events[0].data["due_at"] == "2026-11-17T10:00:00Z"
    assert events[1].data["due_at"] == due_utc


async def test_on_reassign_can_differ_per_metric(make_ctx, clock, engine) -> None:
    ctx = make_ctx("sla_clock", ZONES % "calendar")
    cfg = ctx.config.config
    lead_id = str(uuid.uuid4())
    await handle(ctx, on_lead_received, cfg, 1, received(lead_id, clock.now()), clock.now())
    await handle(ctx, on_lead_assigned, cfg, 1, assigned(lead_id, clock.now()), clock.now())
    moved = new_event("lead.reassigned", service="router", lead_id=lead_id, time=minutes(clock, 30),
                      data=LeadReassigned(lead_id=lead_id, from_owner_id="alice", to_owner_id="bob",
                                          reason="manual", assignment_no=2))
    await handle(ctx, on_lead_reassigned, cfg, moved, minutes(clock, 30))
    restarted = [e.data for e in await sla_events(engine, lead_id)][2:]
    assert [(d["metric"], d["owner_id"], d["due_at"]) for d in restarted] == [
        ("first_response", "bob", "2026-11-17T10:30:00Z")]  # qualification continues, due 10:00


async def test_a_touch_racing_the_deadline_gives_exactly_one_of_met_or_breached(ctx, clock, engine) -> None:
    leads = [await start(ctx, clock) for _ in range(20)]
    due = minutes(clock, 5)
    touches = [act(ctx, activity(lead_id, due - timedelta(milliseconds=1))) for lead_id in leads]
    firing = [fire(ctx, due + timedelta(seconds=1)) for _ in range(3)]
    await asyncio.gather(*touches, *firing)
    for lead_id in leads:
        outcomes = [t for t in await history(engine, lead_id) if t[1] == "first_response" and t[0] != "sla.started"]
        assert outcomes in ([("sla.met", "first_response")], [("sla.breached", "first_response")]), outcomes


async def test_a_touch_racing_a_breach_drafted_ahead_gives_exactly_one_of_met_or_breached(ctx, clock, engine) -> None:
    leads = [await start(ctx, clock) for _ in range(20)]
    due = minutes(clock, 5)
    await fire(ctx, minutes(clock, 2.5))  # the warnings: the breaches are next
    ready = Ready(capacity=100_000)
    async with ctx.uow() as uow:
        while await prepare_due(PostgresClockStore(uow), ctx.config.config, ready, clock.now(), due,
                                limit=1000) == 1000:
            pass
    sla_ids = {e.data["sla_id"] for lead_id in leads for e in await sla_events(engine, lead_id)
               if e.data["metric"] == "first_response"}
    assert sla_ids <= ready.drafts.keys()
    # Half the touches land before the firing starts (their drafts are stale), half race it.
    await asyncio.gather(*(act(ctx, activity(lead_id, due - timedelta(milliseconds=1))) for lead_id in leads[:10]))
    touches = [act(ctx, activity(lead_id, due - timedelta(milliseconds=1))) for lead_id in leads[10:]]

    async def fire_drafted() -> None:
        async with ctx.uow() as uow:
            await fire_due(PostgresClockStore(uow), ctx.config.config, due + timedelta(seconds=1),
                           seen=due + timedelta(seconds=1), ready=ready)
            await uow.commit()

    await asyncio.gather(*touches, *(fire_drafted() for _ in range(3)))
    for lead_id in leads:
        outcomes = [t for t in await history(engine, lead_id)
                    if t[1] == "first_response" and t[0] not in ("sla.started", "sla.warning")]
        expected = [[("sla.met", "first_response")]] + ([[("sla.breached", "first_response")]]
                                                       if lead_id in leads[10:] else [])
        assert outcomes in expected, outcomes


async def test_a_queued_lead_assigned_later_keeps_its_clock_from_receipt_and_the_owner_answers_for_it(
    ctx, clock, engine
) -> None:
    lead_id = str(uuid.uuid4())
    cfg = ctx.config.config
    await handle(ctx, on_lead_received, cfg, 1, received(lead_id, clock.now()), clock.now())
    queued = new_event("lead.queued", service="router", lead_id=lead_id, time=clock.now(),
                       data=LeadQueued(lead_id=lead_id, tier="A", queue="tier-A", reason="at_capacity"))
    await handle(ctx, on_lead_queued, cfg, 1, queued, clock.now())
    # Dequeued and assigned three minutes later: the clock does not start again.
    await handle(ctx, on_lead_assigned, cfg, 1, assigned(lead_id, minutes(clock, 3)), minutes(clock, 3))
    await fire(ctx, minutes(clock, 5))
    events = await sla_events(engine, lead_id)
    assert [e.type for e in events if e.data["metric"] == "first_response"] == ["sla.started", "sla.breached"]
    breach = events[-1].data
    assert breach["owner_id"] == "alice" and breach["root_cause"] == "owner_missed"
