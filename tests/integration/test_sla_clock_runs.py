"""The SLA clock's consumer handles a fetched batch's run of events at once (decided in memory,
written in a few statements): the same lives played event by event and as one run, several
events of each lead in the run, leave the same events and the same rows."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.sla_clock.domain import ClockRules, InputHold, Outage
from services.sla_clock.entrypoints import make_watermark, subscription
from services.sla_clock.tables import leads, timers
from shared.events import (
    CloudEvent,
    Disposition,
    LeadQueued,
    LeadReassigned,
    LeadUpdated,
    Received,
    new_event,
)
from shared.eventstore import retry_on_conflict
from tests.integration.test_sla_clock_db import assigned, received
from tests.integration.test_sla_lifecycle_db import CONFIG, activity
from tests.support import stored_events

IDS = ("id", "sla_id", "lead_id", "causationid", "correlation_id", "traceparent")
Life = Callable[[str, object], list[CloudEvent]]


def reassigned(lead_id: str, at, to: str = "bob") -> CloudEvent:
    return new_event("lead.reassigned", service="router", lead_id=lead_id, time=at, data=LeadReassigned(
        lead_id=lead_id, from_owner_id="alice", to_owner_id=to, reason="manual", assignment_no=2))


def queued(lead_id: str, at) -> CloudEvent:
    return new_event("lead.queued", service="router", lead_id=lead_id, time=at,
                     data=LeadQueued(lead_id=lead_id, tier="A", queue="tier-A", reason="no_eligible_owner"))


def updated(lead_id: str, at, tier: str) -> CloudEvent:
    return new_event("lead.updated", service="intake", lead_id=lead_id, time=at, data=LeadUpdated(
        lead_id=lead_id, changed={"intent.type": {"old": "demo_request", "new": "trial"}}, tier=tier,
        previous_tier="A", reason="patched"))


def minute(at, n: float):
    return at + timedelta(minutes=n)


LIVES: dict[str, Life] = {
    # assigned, then touched: first response met, the cadence starts, a no-answer follow-up counts
    "touched": lambda lead, t: [received(lead, t), assigned(lead, minute(t, 1)),
                                activity(lead, minute(t, 2)),
                                activity(lead, minute(t, 3), outcome="no_answer")],
    "paused_reassigned": lambda lead, t: [received(lead, t), assigned(lead, minute(t, 1)),
                                          activity(lead, minute(t, 2), type_="pause", outcome=None),
                                          activity(lead, minute(t, 3), type_="resume", outcome=None),
                                          reassigned(lead, minute(t, 4))],
    "queued_then_assigned": lambda lead, t: [received(lead, t), queued(lead, minute(t, 1)),
                                             assigned(lead, minute(t, 2))],
    "assignment_overtakes_receipt": lambda lead, t: [assigned(lead, t), received(lead, t),
                                                     activity(lead, minute(t, 1))],
    "tier_changes_twice": lambda lead, t: [received(lead, t), assigned(lead, minute(t, 1)),
                                           updated(lead, minute(t, 2), "B"), updated(lead, minute(t, 3), "A")],
    "disqualified": lambda lead, t: [received(lead, t), assigned(lead, minute(t, 1)),
                                     activity(lead, minute(t, 2), type_="disposition", outcome=None,
                                              disposition=Disposition(status="disqualified", reason="student")),
                                     activity(lead, minute(t, 3))],
}


@pytest.fixture
def ctx(make_ctx):
    return make_ctx("sla_clock", CONFIG)


async def one_by_one(ctx, events: list[CloudEvent]) -> None:
    sub = subscription(ctx, ClockRules(), make_watermark(ctx))
    for event in events:
        async def once(typed: Received = sub.typed(event)) -> None:
            async with ctx.uow() as uow:
                await sub.handlers[type(typed.data)](uow, typed)
                await uow.commit()

        await retry_on_conflict(once)


async def as_one_run(ctx, events: list[CloudEvent]) -> None:
    sub = subscription(ctx, ClockRules(), make_watermark(ctx))
    run: list[Received] = [sub.typed(event) for event in events]
    handler = sub.batched[type(run[0].data)]
    assert all(sub.batched[type(r.data)] is handler for r in run)  # one run, whatever the classes

    async def once() -> None:
        async with ctx.uow() as uow:
            await handler(uow, run)
            await uow.commit()

    await retry_on_conflict(once)


async def outcome(engine, lead_id: str) -> tuple[list, list, list]:
    """The lead's stored events, timers and lead row, without what names the lead (ids, its trace)."""
    def blind(value):
        if isinstance(value, dict):
            return {k: blind(v) for k, v in value.items() if k not in IDS}
        if isinstance(value, list):
            return [blind(v) for v in value]
        return value

    events = [blind({"type": e.type, "data": e.data}) for e in await stored_events(engine, "sla_clock", lead_id)]
    async with engine.connect() as conn:
        # Sorted whole: a re-plan's successors share their metric and start with their predecessors.
        timer_rows = sorted((blind(dict(r._mapping)) for r in await conn.execute(
            select(timers).where(timers.c.lead_id == lead_id))), key=repr)
        lead_rows = [blind(dict(r._mapping)) for r in await conn.execute(select(leads).where(leads.c.lead_id == lead_id))]
    return events, timer_rows, lead_rows


async def test_a_run_of_several_events_per_lead_leaves_what_event_by_event_handling_leaves(ctx, clock, engine) -> None:
    start = clock.now() - timedelta(minutes=10)  # every event before the clock's now
    alone = {name: str(uuid.uuid4()) for name in LIVES}
    together = {name: str(uuid.uuid4()) for name in LIVES}
    for name, life in LIVES.items():
        await one_by_one(ctx, life(alone[name], start))
    # The leads' lives interleaved in one run, each lead's events in its order.
    lives = [life(together[name], start) for name, life in LIVES.items()]
    run = [events[i] for i in range(max(map(len, lives))) for events in lives if i < len(events)]
    await as_one_run(ctx, run)

    for name in LIVES:
        by_event, by_run = await outcome(engine, alone[name]), await outcome(engine, together[name])
        assert by_run == by_event, name
        events, timer_rows, _ = by_run
        assert events and timer_rows, name  # each life started timers



async def test_a_touch_read_after_a_deadline_in_an_input_outage_breaches_it_as_system_delay(ctx, clock, engine) -> None:
    """A touch (or pause, or reroute) read after a deadline breaches the timer in the consumer, not
    in the timer loop, and that path judged without the outages the watermark knew of: a deadline
    that fell while nobody could log a touch was the owner's miss (found by the chaos auditor).
    Nor may it judge by what the watermark knew before its rounds stopped: after Postgres and then
    the broker were away, the consumer read a touch before the watermark's next round had learned
    of the outage (CI's chaos run)."""
    start = clock.now() - timedelta(minutes=10)
    rules = ClockRules(tolerance=timedelta(hours=1))  # late by minutes, yet not by the tolerance
    known_outage = (Outage(start + timedelta(minutes=4), start + timedelta(minutes=7)),)
    cases = {  # (the outages the watermark's last round knew of, when that round was)
        "no outage": ((), clock.now()),
        "outage": (known_outage, clock.now()),
        "no round since before the deadline": ((), start + timedelta(minutes=4)),
    }
    causes = {}
    for name, (outages, last_round) in cases.items():
        watermark = make_watermark(ctx)
        watermark.hold, watermark.last_round = InputHold(None, outages), last_round
        sub = subscription(ctx, rules, watermark)
        lead_id = str(uuid.uuid4())
        # Due at start + 5m; the touch came at start + 8m.
        for event in (received(lead_id, start), assigned(lead_id, start), activity(lead_id, start + timedelta(minutes=8))):
            typed = sub.typed(event)

            async def once(typed: Received = typed, handler=sub.handlers[type(typed.data)]) -> None:
                async with ctx.uow() as uow:
                    await handler(uow, typed)
                    await uow.commit()

            await retry_on_conflict(once)
        events, _, _ = await outcome(engine, lead_id)
        [breach] = [e for e in events if e["type"] == "sla.breached" and e["data"]["metric"] == "first_response"]
        causes[name] = breach["data"]["root_cause"]
    assert causes == {"no outage": "owner_missed", "outage": "system_delay",
                      "no round since before the deadline": "system_delay"}
