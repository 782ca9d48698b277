"""Durable SLA timers in Postgres, driven by a manual clock: start, warn, breach once, meet."""
from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from services.sla_clock.adapters import PostgresClockStore
from services.sla_clock.domain import ClockRules
from services.sla_clock.handlers import (
    SlaDeps,
    fire_due,
    on_activity,
    on_lead_assigned,
    on_lead_received,
)
from shared.events import (
    ActivityRecorded,
    CloudEvent,
    Company,
    Consent,
    Contact,
    Intent,
    LeadAssigned,
    LeadReceived,
    Received,
    new_event,
)
from shared.eventstore import retry_on_conflict
from tests.support import stored_events

CONFIG = """
owners: [{id: alice}]
sla_policies:
  - id: demo-fast
    filter: {tiers: [A]}
    start_on: assigned
    metrics: {first_response: {target: 5m, warn_at: [50]}}
"""


@pytest.fixture
def ctx(make_ctx):
    return make_ctx("sla_clock", CONFIG)


def received(lead_id: str, now, contactable: bool = True) -> CloudEvent:
    return new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
        lead_id=lead_id, source="web", tier="A", contact=Contact(email="a@example.com"), company=Company(),
        intent=Intent(type="demo_request"), consent=Consent(), contactable=contactable, received_at=now))


def assigned(lead_id: str, now, owner: str = "alice") -> CloudEvent:
    return new_event("lead.assigned", service="router", lead_id=lead_id, time=now, data=LeadAssigned(
        lead_id=lead_id, owner_id=owner, team_id="sdr", rule_id="r", method="round_robin", reason="rule_match",
        assignment_no=1, candidates=[], assigned_at=now, tier="A"))


def call(lead_id: str, at) -> CloudEvent:
    return new_event("activity.recorded", service="intake", lead_id=lead_id, time=at, data=ActivityRecorded(
        lead_id=lead_id, activity_id=str(uuid.uuid4()), type="call", actor="alice", occurred_at=at))


async def handle(ctx, fn, config, *args, rules: ClockRules = ClockRules()) -> None:
    """Run one handler as the consumer would: (config, [version,] event, now) make its deps; again
    from fresh state if another writer (the timer loop) recorded about the lead meanwhile."""
    *version, event, now = args

    async def once() -> None:
        async with ctx.uow() as uow:
            await fn(PostgresClockStore(uow), Received.of(event),
                     SlaDeps(config, version[0] if version else 1, now, rules))
            await uow.commit()

    await retry_on_conflict(once)


async def sla_events(engine, lead_id: str) -> list[CloudEvent]:
    """The lead's sla.* events in the clock's store (it keeps its internal sla_clock.* events there too)."""
    return [e for e in await stored_events(engine, "sla_clock", lead_id) if e.type.startswith("sla.")]


async def start_lead(ctx, clock) -> str:
    lead_id = str(uuid.uuid4())
    cfg = ctx.config.config
    await handle(ctx, on_lead_received, cfg, 1, received(lead_id, clock.now()), clock.now())
    await handle(ctx, on_lead_assigned, cfg, 1, assigned(lead_id, clock.now()), clock.now())
    return lead_id


async def fire(ctx, now, seen="caught up") -> None:
    """Fire what is due at `now`, with the inputs consumed up to `seen` (by default: up to now)."""
    async with ctx.uow() as uow:
        await fire_due(PostgresClockStore(uow), ctx.config.config, now, seen=now if seen == "caught up" else seen)
        await uow.commit()


async def test_timer_warns_then_breaches_exactly_once(ctx, clock, engine) -> None:
    lead_id = await start_lead(ctx, clock)
    start = clock.now()
    await fire(ctx, start + timedelta(seconds=149))
    assert [e.type for e in await sla_events(engine, lead_id)] == ["sla.started"]

    await fire(ctx, start + timedelta(seconds=150))
    await fire(ctx, start + timedelta(minutes=5))
    await fire(ctx, start + timedelta(minutes=6))  # already breached: nothing more
    events = await sla_events(engine, lead_id)
    assert [e.type for e in events] == ["sla.started", "sla.warning", "sla.breached"]
    assert events[1].data["percent"] == 50
    breach = events[2].data
    assert breach["owner_id"] == "alice" and breach["root_cause"] == "owner_missed"
    assert breach["due_at"] == breach["breached_at"] == (start + timedelta(minutes=5)).isoformat().replace(
        "+00:00", "Z")
    # Fired by the clock, not by an event: caused by the chain's origin, the lead's submission.
    assert events[2].causationid == events[2].correlationid == events[0].correlationid


async def test_a_touch_before_the_deadline_meets_and_nothing_fires_later(ctx, clock, engine) -> None:
    lead_id = await start_lead(ctx, clock)
    await handle(ctx, on_activity, ctx.config.config, call(lead_id, clock.now() + timedelta(minutes=2)),
                 clock.now())
    await fire(ctx, clock.now() + timedelta(hours=1))
    assert [e.type for e in await sla_events(engine, lead_id)] == ["sla.started", "sla.met"]


async def test_a_touch_stamped_slightly_ahead_meets_instead_of_breaching_early(ctx, clock, engine) -> None:
    lead_id = await start_lead(ctx, clock)
    # The CRM's clock runs ahead: the call says 09:06 although it is 09:04 and the deadline is 09:05.
    now = clock.now() + timedelta(minutes=4)
    await handle(ctx, on_activity, ctx.config.config, call(lead_id, clock.now() + timedelta(minutes=6)), now)
    assert [e.type for e in await sla_events(engine, lead_id)] == ["sla.started", "sla.met"]


async def test_a_touch_that_overtook_the_assignment_still_counts(ctx, clock, engine) -> None:
    lead_id = str(uuid.uuid4())
    cfg = ctx.config.config
    await handle(ctx, on_lead_received, cfg, 1, received(lead_id, clock.now()), clock.now())
    await handle(ctx, on_activity, cfg, call(lead_id, clock.now() + timedelta(seconds=5)), clock.now())
    await handle(ctx, on_lead_assigned, cfg, 1, assigned(lead_id, clock.now() + timedelta(seconds=10)),
                 clock.now() + timedelta(seconds=10))
    assert [e.type for e in await sla_events(engine, lead_id)] == ["sla.started", "sla.met"]


async def test_uncontactable_lead_breach_says_missing_data(ctx, clock, engine) -> None:
    lead_id = str(uuid.uuid4())
    cfg = ctx.config.config
    await handle(ctx, on_lead_received, cfg, 1, received(lead_id, clock.now(), contactable=False), clock.now())
    await handle(ctx, on_lead_assigned, cfg, 1, assigned(lead_id, clock.now()), clock.now())
    await fire(ctx, clock.now() + timedelta(minutes=5))
    assert (await sla_events(engine, lead_id))[-1].data["root_cause"] == "missing_data"


async def test_replicas_racing_on_the_same_due_timer_fire_it_once(ctx, clock, engine) -> None:
    leads = [await start_lead(ctx, clock) for _ in range(10)]
    due = clock.now() + timedelta(minutes=5)
    await asyncio.gather(*(fire(ctx, due) for _ in range(4)))
    for lead_id in leads:
        breaches = [e for e in await sla_events(engine, lead_id) if e.type == "sla.breached"]
        assert len(breaches) == 1


def call_accepted(lead_id: str, occurred, accepted) -> CloudEvent:
    """A call as intake publishes it: the event's time is when intake accepted it."""
    return new_event("activity.recorded", service="intake", lead_id=lead_id, time=accepted, data=ActivityRecorded(
        lead_id=lead_id, activity_id=str(uuid.uuid4()), type="call", actor="alice", occurred_at=occurred))


async def test_a_due_breach_waits_until_the_clock_has_seen_its_inputs_up_to_the_deadline(ctx, clock, engine) -> None:
    lead_id = await start_lead(ctx, clock)
    due = clock.now() + timedelta(minutes=5)
    # Ten seconds past the deadline, but the inputs are only consumed up to a second before it.
    await fire(ctx, due + timedelta(seconds=10), seen=due - timedelta(seconds=1))
    assert [e.type for e in await sla_events(engine, lead_id)] == ["sla.started", "sla.warning"]
    # The touch intake accepted before the deadline arrives late: a met, not a breach.
    late = call_accepted(lead_id, due - timedelta(seconds=3), accepted=due - timedelta(seconds=2))
    await handle(ctx, on_activity, ctx.config.config, late, due + timedelta(seconds=12))
    await fire(ctx, due + timedelta(seconds=20))
    events = await sla_events(engine, lead_id)
    assert [e.type for e in events] == ["sla.started", "sla.warning", "sla.met"]
    assert events[-1].data["met_at"] == (due - timedelta(seconds=3)).isoformat().replace("+00:00", "Z")


async def test_a_breach_the_clock_cannot_confirm_within_its_wait_is_a_system_delay(ctx, clock, engine) -> None:
    lead_id = await start_lead(ctx, clock)
    due = clock.now() + timedelta(minutes=5)
    # Nothing confirmed: past the 60 s tolerance, a touch held up by an outage may still come.
    await fire(ctx, due + timedelta(seconds=299), seen=None)
    assert "sla.breached" not in [e.type for e in await sla_events(engine, lead_id)]
    await fire(ctx, due + timedelta(seconds=300), seen=None)  # the confirm wait (300 s) is over
    breach = (await sla_events(engine, lead_id))[-1]
    assert breach.type == "sla.breached" and breach.data["root_cause"] == "system_delay"
    assert breach.data["breached_at"] == breach.data["due_at"]


async def test_a_breach_confirmed_only_after_the_tolerance_is_a_system_delay_too(ctx, clock, engine) -> None:
    # The clock was down for ten minutes: when it catches up, no touch was made, but the escalation
    # leaves far too late for the owner to act on it; lead ops must know the system was behind.
    lead_id = await start_lead(ctx, clock)
    await fire(ctx, clock.now() + timedelta(minutes=15))
    assert (await sla_events(engine, lead_id))[-1].data["root_cause"] == "system_delay"


async def test_a_touch_backdated_beyond_the_skew_is_dated_by_its_acceptance(ctx, clock, engine) -> None:
    lead_id = await start_lead(ctx, clock)
    # Sent at 09:20 claiming 09:01; the deadline was 09:05 and the skew is 5 minutes.
    sent = clock.now() + timedelta(minutes=20)
    await handle(ctx, on_activity, ctx.config.config, call_accepted(lead_id, clock.now() + timedelta(minutes=1), sent),
                 sent)
    assert [e.type for e in await sla_events(engine, lead_id)] == ["sla.started", "sla.breached"]
