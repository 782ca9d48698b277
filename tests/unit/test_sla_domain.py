from datetime import UTC, datetime, timedelta

import pytest

from services.sla_clock.domain import (
    Breached,
    Met,
    Timer,
    Warned,
    compute_deadline,
    pause,
    resume,
    root_cause,
    select_policy,
    start_timer,
    tick,
    touch,
    warning_schedule,
)
from shared.business_hours import BusinessCalendar
from shared.config import CalendarConfig, parse_config

START = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
ALWAYS = BusinessCalendar(CalendarConfig())


def timer(target: float = 300, warn_at: tuple[int, ...] = (50, 80)) -> Timer:
    return Timer(
        sla_id="s", lead_id="l", metric="first_response", policy_id="p", policy_version=1, owner_id="alice",
        tier="A", started_at=START, due_at=compute_deadline(START, target, ALWAYS),
        warnings=warning_schedule(START, target, list(warn_at), ALWAYS),
    )


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def test_nothing_happens_before_the_first_warning() -> None:
    step = tick(timer(), at(100))
    assert step.outcomes == () and step.timer.state == "open"


def test_warnings_fire_once_each_in_order() -> None:
    first = tick(timer(), at(151))
    assert first.outcomes == (Warned(50),)
    assert tick(first.timer, at(152)).outcomes == ()
    second = tick(first.timer, at(241))
    assert second.outcomes == (Warned(80),)


def test_a_late_tick_catches_up_on_every_passed_warning() -> None:
    assert tick(timer(), at(250)).outcomes == (Warned(50), Warned(80))


def test_breach_at_the_deadline_and_never_again() -> None:
    step = tick(timer(), at(300))
    assert step.outcomes == (Breached(at(300)),) and step.timer.state == "breached"
    assert tick(step.timer, at(1000)).outcomes == ()
    assert step.timer.next_fire_at is None


def test_next_fire_at_is_the_next_pending_moment() -> None:
    t = timer()
    assert t.next_fire_at == at(150)
    assert tick(t, at(150)).timer.next_fire_at == at(240)
    assert tick(tick(t, at(150)).timer, at(240)).timer.next_fire_at == at(300)


def test_touch_before_the_deadline_meets_the_sla() -> None:
    step = touch(timer(), at(299))
    assert step.outcomes == (Met(at(299)),) and step.timer.state == "met"
    assert tick(step.timer, at(400)).outcomes == ()


def test_touch_after_the_deadline_is_a_breach_not_a_met() -> None:
    assert touch(timer(), at(301)).outcomes == (Breached(at(300)),)


def test_touch_long_before_the_clock_started_does_not_count() -> None:
    assert touch(timer(), START - timedelta(hours=1)).outcomes == ()


def test_business_hours_deadline() -> None:
    london = BusinessCalendar(CalendarConfig(timezone="Europe/London", hours={"mon": ["09:00-17:00"]}))
    # Monday 16:55 London + 10 minutes of business time: next Monday 09:05.
    start = datetime(2026, 11, 16, 16, 55, tzinfo=UTC)
    assert compute_deadline(start, 600, london) == datetime(2026, 11, 23, 9, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("owner", "contactable", "calendar_open", "expected"),
    [
        (None, True, True, "no_owner"),
        ("alice", False, True, "missing_data"),
        ("alice", True, False, "off_hours_coverage"),
        ("alice", True, True, "owner_missed"),
    ],
)
def test_root_causes(owner: str | None, contactable: bool, calendar_open: bool, expected: str) -> None:
    hours = None if calendar_open else {"sun": ["00:00-01:00"]}
    calendar = BusinessCalendar(CalendarConfig(hours=hours))
    assert root_cause(owner_id=owner, contactable=contactable, owner_calendar=calendar, due_at=at(300)) == expected


def test_first_matching_policy_applies() -> None:
    config = parse_config(
        "sla_policies:\n"
        "  - {id: web-a, filter: {tiers: [A], sources: [web]}, metrics: {first_response: {target: 5m}}}\n"
        "  - {id: any-a, filter: {tiers: [A]}, metrics: {first_response: {target: 10m}}}\n"
    )
    assert select_policy(config, "A", "web").id == "web-a"
    assert select_policy(config, "A", "chat").id == "any-a"
    assert select_policy(config, "C", "web") is None


LONDON_OFFICE = {d: ["09:00-17:30"] for d in ("mon", "tue", "wed", "thu", "fri")}
LONDON_POLICY = parse_config("""
calendars:
  london: {timezone: Europe/London}
sla_policies:
  - {id: p, calendar: london, metrics: {first_response: {target: 4h, warn_at: [25, 50, 75]}}}
""").sla_policies[0]


def test_a_timers_warnings_and_deadline_skip_a_run_of_holidays_and_the_weekend_between() -> None:
    """Christmas in London: Thu 24 and Fri 25 Dec closed, then the weekend, then the Monday
    substitute holiday (28 Dec): a lead in on Wednesday 16:30 has an hour that day, and the rest
    of its four business hours from Tuesday 09:00. Each warning is its share of business time."""
    london = BusinessCalendar(CalendarConfig(timezone="Europe/London", hours=LONDON_OFFICE,
                                             holidays=["2026-12-24", "2026-12-25", "2026-12-28"]))
    start = datetime(2026, 12, 23, 16, 30, tzinfo=UTC)  # GMT: London time is UTC
    t = start_timer("s", "l", "first_response", LONDON_POLICY, 1, "alice", "A", start, london)
    assert [(pct, when) for pct, when in t.warnings] == [
        (25, datetime(2026, 12, 23, 17, 30, tzinfo=UTC)),  # closing time on Wednesday: the first hour used
        (50, datetime(2026, 12, 29, 10, 0, tzinfo=UTC)),
        (75, datetime(2026, 12, 29, 11, 0, tzinfo=UTC)),
    ]
    assert t.due_at == datetime(2026, 12, 29, 12, 0, tzinfo=UTC)
    # Nothing falls due over the holidays: a tick on Christmas Day finds only the 25% warning.
    assert tick(t, datetime(2026, 12, 25, 12, 0, tzinfo=UTC)).outcomes == (Warned(25),)


def test_a_timer_across_the_spring_forward_weekend_counts_business_hours_not_wall_hours() -> None:
    """London moves to BST on Sunday 29 Mar 2026: Friday 16:30 GMT + 2 business hours is one hour
    on Friday and one from Monday 09:00 BST (08:00Z), so 09:00Z (10:00Z if read in GMT); a pause
    over the weekend (closed time) moves nothing."""
    london = BusinessCalendar(CalendarConfig(timezone="Europe/London", hours=LONDON_OFFICE))
    policy = LONDON_POLICY.model_copy(update={"metrics": {"first_response": LONDON_POLICY.metrics[
        "first_response"].model_copy(update={"target": 7200.0, "warn_at": [50]})}})
    start = datetime(2026, 3, 27, 16, 30, tzinfo=UTC)
    t = start_timer("s", "l", "first_response", policy, 1, "alice", "A", start, london)
    assert t.warnings == ((50, datetime(2026, 3, 27, 17, 30, tzinfo=UTC)),)
    assert t.due_at == datetime(2026, 3, 30, 9, 0, tzinfo=UTC)
    paused = pause(t, datetime(2026, 3, 28, 10, 0, tzinfo=UTC)).timer
    assert resume(paused, datetime(2026, 3, 30, 7, 59, tzinfo=UTC), london).timer.due_at == t.due_at


def test_a_metrics_own_settings_win_over_its_policys_and_its_zone_is_the_chosen_partys() -> None:
    from services.sla_clock.domain import metric_on_reassign, metric_start_on, metric_zone
    from shared.config import metric_calendar

    config = parse_config("""
calendars: {office: {timezone: Europe/London, hours: {mon: ["09:00-17:00"]}}}
sla_policies:
  - id: p
    start_on: assigned
    on_reassign: continue
    calendar: always
    metrics:
      first_response: {target: 5m, timezone: lead}
      next_action: {target: 1h, calendar: office, start_on: received, on_reassign: reset, timezone: team}
      qualification: {target: 7d}
""")
    policy = config.sla_policies[0]
    zones = {"owner_zone": "Asia/Tokyo", "lead_zone": "America/Denver", "team_zone": "Europe/Berlin"}
    assert [metric_calendar(policy, m) for m in ("first_response", "next_action")] == ["always", "office"]
    assert [metric_start_on(policy, m) for m in ("first_response", "next_action")] == ["assigned", "received"]
    assert [metric_on_reassign(policy, m) for m in ("first_response", "next_action")] == ["continue", "reset"]
    assert [metric_zone(policy, m, **zones) for m in ("first_response", "next_action", "qualification")] == [
        "America/Denver", "Europe/Berlin", None]  # `calendar`: the calendar's own zone
    assert metric_zone(policy, "first_response", **{**zones, "lead_zone": None}) is None  # unknown: the calendar's
