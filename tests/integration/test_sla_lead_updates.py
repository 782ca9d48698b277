"""A lead that changes after intake, on the SLA clock (real Postgres, manual clock): a new tier
re-plans the timers under the policy it selects, keeping the clock start; an opt-out or a
withdrawn consent sent as lead.updated ends every timer for good."""
from __future__ import annotations

import uuid

import pytest

from services.sla_clock.handlers import on_lead_assigned, on_lead_received, on_lead_updated
from shared.events import CloudEvent, LeadUpdated, new_event
from tests.integration.test_sla_clock_db import assigned, handle, received
from tests.integration.test_sla_lifecycle_db import act, activity, fire, minutes, start
from tests.support import stored_events

CONFIG = """
owners: [{id: alice}, {id: bob}]
sla_policies:
  - id: fast
    filter: {tiers: [A]}
    metrics:
      first_response: {target: 5m, warn_at: [50]}
      next_action: {target: 1h, touches: 3, warn_at: []}
    qualifying_touches: [call, email]
  - id: slow
    filter: {tiers: [B, C]}
    metrics:
      first_response: {target: 1h, warn_at: [50]}
      qualification: {target: 2d, warn_at: []}
    qualifying_touches: [call, email]
"""


@pytest.fixture
def ctx(make_ctx):
    return make_ctx("sla_clock", CONFIG)


def updated(lead_id: str, at, tier: str, previous: str, reason: str = "upgraded",
            changed: dict | None = None) -> CloudEvent:
    return new_event("lead.updated", service="intake", lead_id=lead_id, time=at, data=LeadUpdated(
        lead_id=lead_id, changed=changed or {"tier": {"old": previous, "new": tier}}, tier=tier,
        previous_tier=previous, reason=reason))


async def update(ctx, event: CloudEvent) -> None:
    await handle(ctx, on_lead_updated, ctx.config.config, 1, event, event.time)


async def sla_events(engine, lead_id: str) -> list[CloudEvent]:
    """The lead's sla.* events in the clock's store (it keeps its internal sla_clock.* events there too)."""
    return [e for e in await stored_events(engine, "sla_clock", lead_id) if e.type.startswith("sla.")]


async def sla(engine, lead_id: str) -> list[tuple]:
    """(type, metric, policy, due_at or reason) of every SLA event of the lead, in commit order."""
    return [(e.type, e.data["metric"], e.data["policy_id"], e.data.get("reason") or e.data.get("root_cause"))
            for e in await sla_events(engine, lead_id)]


def z(at) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def test_an_upgrade_to_a_faster_tier_keeps_the_clock_start_so_the_owner_gets_no_fresh_window(
    ctx, clock, engine
) -> None:
    lead_id = await start(ctx, clock, "B")
    await update(ctx, updated(lead_id, minutes(clock, 3), "A", "B"))
    events = await sla_events(engine, lead_id)
    assert [(e.type, e.data["metric"], e.data["policy_id"], e.data.get("reason")) for e in events[2:]] == [
        ("sla.cancelled", "first_response", "slow", "policy_changed"),
        ("sla.cancelled", "qualification", "slow", "policy_changed"),
        ("sla.started", "first_response", "fast", None),
        # 50 % of the new target (2.5 min) had passed at the upgrade: the warning is due at once.
        ("sla.warning", "first_response", "fast", None),
    ]
    fresh = events[4].data
    assert fresh["started_at"] == z(clock.now()) and fresh["due_at"] == z(minutes(clock, 5))
    assert fresh["sla_id"] != events[2].data["sla_id"]
    await fire(ctx, minutes(clock, 5))
    await fire(ctx, minutes(clock, 120))  # the old policy's deadline: nothing of it fires
    assert (await sla(engine, lead_id))[6:] == [("sla.breached", "first_response", "fast", "owner_missed")]


async def test_an_upgrade_after_the_faster_deadline_passed_breaches_at_once_as_the_owners_miss(
    ctx, clock, engine
) -> None:
    lead_id = await start(ctx, clock, "B")
    await update(ctx, updated(lead_id, minutes(clock, 20), "A", "B"))
    events = await sla_events(engine, lead_id)
    breach = events[-1]
    assert [e.type for e in events[-2:]] == ["sla.started", "sla.breached"]
    assert breach.data["breached_at"] == z(minutes(clock, 5)) and breach.data["root_cause"] == "owner_missed"


async def test_a_touch_after_the_upgrade_meets_the_new_timer_and_starts_its_cadence(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock, "B")
    await update(ctx, updated(lead_id, minutes(clock, 1), "A", "B"))
    await act(ctx, activity(lead_id, minutes(clock, 4)))
    await fire(ctx, minutes(clock, 60 * 24 * 3))
    tail = (await sla(engine, lead_id))[5:]
    assert tail[:2] == [("sla.met", "first_response", "fast", None), ("sla.started", "next_action", "fast", None)]
    assert ("sla.breached", "first_response", "slow", "owner_missed") not in tail
    assert [t[0] for t in tail if t[2] == "slow"] == []


async def test_a_tier_change_that_selects_the_same_policy_changes_nothing(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock, "B")
    before = await sla(engine, lead_id)
    await update(ctx, updated(lead_id, minutes(clock, 3), "C", "B", reason="patched"))
    assert await sla(engine, lead_id) == before


async def test_a_met_first_response_stays_met_and_the_new_cadence_starts_at_it(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock, "B")
    await act(ctx, activity(lead_id, minutes(clock, 30)))  # met under slow's 1 h
    await update(ctx, updated(lead_id, minutes(clock, 40), "A", "B"))
    events = await sla_events(engine, lead_id)
    assert [(e.type, e.data["metric"], e.data["policy_id"]) for e in events[3:]] == [
        ("sla.cancelled", "qualification", "slow"), ("sla.started", "next_action", "fast")]
    assert events[-1].data["started_at"] == z(minutes(clock, 30))
    assert events[-1].data["due_at"] == z(minutes(clock, 90))


async def test_a_downgrade_re_plans_too_and_a_later_upgrade_back_starts_a_third_timer(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock, "A")
    await update(ctx, updated(lead_id, minutes(clock, 1), "B", "A", reason="patched"))
    await update(ctx, updated(lead_id, minutes(clock, 2), "A", "B", reason="patched"))
    firsts = [e for e in await sla_events(engine, lead_id)
              if e.data["metric"] == "first_response" and e.type in ("sla.started", "sla.cancelled")]
    assert [(e.type, e.data["policy_id"]) for e in firsts] == [
        ("sla.started", "fast"), ("sla.cancelled", "fast"), ("sla.started", "slow"), ("sla.cancelled", "slow"),
        ("sla.started", "fast")]
    assert len({e.data["sla_id"] for e in firsts}) == 3
    assert {e.data["due_at"] for e in firsts if e.data["policy_id"] == "fast"} == {z(minutes(clock, 5))}


async def test_a_paused_lead_stays_paused_under_the_new_policy_and_keeps_its_paused_time(ctx, clock, engine) -> None:
    lead_id = await start(ctx, clock, "B")
    await act(ctx, activity(lead_id, minutes(clock, 1), type_="pause", outcome=None))
    await update(ctx, updated(lead_id, minutes(clock, 10), "A", "B"))
    await act(ctx, activity(lead_id, minutes(clock, 20), type_="resume", outcome=None))
    events = [e for e in await sla_events(engine, lead_id) if e.data["policy_id"] == "fast"]
    assert [e.type for e in events] == ["sla.started", "sla.paused", "sla.resumed"]
    # 1 min used before the pause, 19 min paused: 4 min are left after the resume.
    assert events[-1].data["due_at"] == z(minutes(clock, 24))


@pytest.mark.parametrize("change", [
    {"reason": "opted_out", "changed": {"contactable": {"old": True, "new": False}}},
    {"reason": "patched", "changed": {"consent.contact": {"old": True, "new": False}}},
])
async def test_an_opt_out_or_withdrawn_consent_cancels_every_timer_and_none_starts_again(
    ctx, clock, engine, change
) -> None:
    lead_id = await start(ctx, clock, "B")
    await update(ctx, updated(lead_id, minutes(clock, 2), "B", "B", **change))
    await update(ctx, updated(lead_id, minutes(clock, 3), "A", "B"))  # an upgrade after it
    await act(ctx, activity(lead_id, minutes(clock, 4)))
    assigned_again = assigned(lead_id, minutes(clock, 5), owner="bob")
    await handle(ctx, on_lead_assigned, ctx.config.config, 1, assigned_again, minutes(clock, 5))
    await fire(ctx, minutes(clock, 60 * 24 * 3))
    assert (await sla(engine, lead_id))[2:] == [
        ("sla.cancelled", "first_response", "slow", "opted_out"),
        ("sla.cancelled", "qualification", "slow", "opted_out")]


def without_consent(lead_id: str, at) -> CloudEvent:
    event = received(lead_id, at, contactable=False)
    return event.model_copy(update={"data": {**event.data, "consent": {"marketing": False, "contact": False}}})


@pytest.mark.parametrize("assignment_first", [False, True])
async def test_a_lead_received_without_consent_to_contact_is_not_timed(ctx, clock, engine, assignment_first) -> None:
    """Withdrawing consent ends every timer (above); a lead that never gave it is in the same
    state from the start: no timer, so no breach and no manager escalated for a buyer who asked
    not to be contacted. Timers an assignment that overtook the lead started end opted_out."""
    lead_id = str(uuid.uuid4())
    cfg = ctx.config.config
    steps = [(on_lead_received, without_consent(lead_id, clock.now())), (on_lead_assigned, assigned(lead_id, clock.now()))]
    for handler, event in (reversed(steps) if assignment_first else steps):
        await handle(ctx, handler, cfg, 1, event, clock.now())
    await fire(ctx, minutes(clock, 60 * 24 * 3))
    assert await sla(engine, lead_id) == ([
        ("sla.started", "first_response", "fast", None),
        ("sla.cancelled", "first_response", "fast", "opted_out")] if assignment_first else [])
