from datetime import UTC, datetime, timedelta

import pytest

from services.sla_clock.domain import (
    Breached,
    Met,
    Timer,
    Warned,
    compute_deadline,
    root_cause,
    select_policy,
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
