"""Pure rules of a tier change on the SLA clock: which timers end, which start, from when."""
from datetime import UTC, datetime, timedelta

from services.sla_clock.domain import (
    POLICY_CHANGED,
    Breached,
    Cancelled,
    Successor,
    Warned,
    catch_up,
    clock_start,
    pause,
    replan,
    start_timer,
    touch,
)
from shared.business_hours import BusinessCalendar
from shared.config import CalendarConfig, parse_config

T0 = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
ALWAYS = BusinessCalendar(CalendarConfig())
CONFIG = parse_config("""
owners: [{id: alice}]
sla_policies:
  - id: fast
    filter: {tiers: [A]}
    metrics:
      first_response: {target: 5m, warn_at: [50], start_on: received}
      next_action: {target: 1h, touches: 3, warn_at: []}
      qualification: {target: 1d, warn_at: [], start_on: assigned}
  - id: slow
    filter: {tiers: [B]}
    metrics:
      first_response: {target: 1h, warn_at: []}
      qualification: {target: 2d, warn_at: []}
""")
FAST, SLOW = CONFIG.sla_policies


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def slow(metric: str = "first_response", sla_id: str = "s1"):
    return start_timer(sla_id, "l", metric, SLOW, 1, "alice", "B", T0, ALWAYS)


def test_running_timers_end_as_policy_changed_and_successors_keep_their_clock_start() -> None:
    ended, successors = replan([slow(), slow("qualification", "s2")], FAST, at(3),
                               {"next_action": None, "qualification": at(1)})
    assert [(t.sla_id, s.outcomes) for t, s in ended] == [("s1", (Cancelled(POLICY_CHANGED),)),
                                                         ("s2", (Cancelled(POLICY_CHANGED),))]
    assert successors == [Successor("first_response", T0), Successor("qualification", T0)]


def test_a_metric_the_new_policy_lacks_ends_without_successor() -> None:
    ended, successors = replan([slow("qualification")], FAST.model_copy(update={"metrics": {
        "first_response": FAST.metrics["first_response"]}}), at(3), {"first_response": T0})
    assert ended[0][1].outcomes == (Cancelled(POLICY_CHANGED),) and successors == [Successor("first_response", T0)]


def test_a_decided_metric_stays_decided_and_a_never_timed_one_starts_when_its_clock_has() -> None:
    met = touch(slow(), at(2)).timer
    _, successors = replan([met], FAST, at(3), {"first_response": T0, "next_action": at(2),
                                                    "qualification": None})
    assert successors == [Successor("next_action", at(2))]


def test_a_timer_past_its_deadline_at_the_change_breached_first_and_has_no_successor() -> None:
    ended, successors = replan([slow()], FAST, at(61), {})
    assert ended[0][1].outcomes == (Breached(at(60)),) and successors == []


def test_a_paused_timer_hands_its_paused_time_and_its_pause_to_the_successor() -> None:
    paused = pause(slow(), at(1)).timer
    _, successors = replan([paused], FAST, at(10), {})
    assert successors == [Successor("first_response", T0, 1, 0.0, at(1))]
    successor = start_timer("s2", "l", "first_response", FAST, 1, "alice", "A", T0, ALWAYS, 1, 9 * 60.0)
    assert successor.due_at == at(14) and successor.warnings == ((50, at(11.5)),)


def test_no_new_policy_ends_every_running_timer_and_starts_nothing() -> None:
    ended, successors = replan([slow()], None, at(3), {})
    assert ended[0][1].outcomes == (Cancelled(POLICY_CHANGED),) and successors == []


def test_a_successor_catches_up_with_what_is_due_and_its_breach_counts_from_the_change() -> None:
    fresh = start_timer("s2", "l", "first_response", FAST, 1, "alice", "A", T0, ALWAYS)
    assert catch_up(fresh, at(3)).outcomes == (Warned(50),)
    assert catch_up(fresh, at(20)).outcomes == (Breached(at(5), noticed=at(20)),)
    assert catch_up(fresh, at(1)).outcomes == ()


def test_the_clock_start_of_a_never_timed_metric_follows_start_on() -> None:
    facts = {"received_at": T0, "first_touch_at": None, "unowned_timed": False}
    assert clock_start(FAST, "first_response", assigned_at=None, **facts) == T0
    assert clock_start(FAST, "qualification", assigned_at=at(2), **facts) == at(2)
    assert clock_start(FAST, "qualification", assigned_at=None, **facts) is None  # starts at assignment
    assert clock_start(FAST, "qualification", assigned_at=None, **{**facts, "unowned_timed": True}) == T0
    assert clock_start(FAST, "next_action", assigned_at=at(2), **{**facts, "first_touch_at": at(4)}) == at(4)
