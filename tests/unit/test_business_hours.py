from datetime import UTC, date, datetime

import pytest

from leadsla.shared.business_hours import BusinessCalendar
from leadsla.shared.config import CalendarConfig

WEEKDAYS_9_TO_5 = {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}


def berlin(**extra) -> BusinessCalendar:
    return BusinessCalendar(CalendarConfig(timezone="Europe/Berlin", hours=WEEKDAYS_9_TO_5, **extra))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "seconds", "due"),
    [
        # Tuesday 10:00 Berlin (09:00Z) + 1h stays inside the day.
        (utc(2026, 11, 17, 9, 0), 3600, utc(2026, 11, 17, 10, 0)),
        # Friday 16:30 Berlin + 1h: 30 min on Friday, 30 min on Monday from 09:00.
        (utc(2026, 11, 20, 15, 30), 3600, utc(2026, 11, 23, 8, 30)),
        # Saturday: the clock waits for Monday 09:00.
        (utc(2026, 11, 21, 12, 0), 60, utc(2026, 11, 23, 8, 1)),
        # Before opening on a weekday: starts counting at 09:00.
        (utc(2026, 11, 17, 5, 0), 1800, utc(2026, 11, 17, 8, 30)),
        # A full eight-hour day from opening ends exactly at closing time.
        (utc(2026, 11, 17, 8, 0), 8 * 3600, utc(2026, 11, 17, 16, 0)),
    ],
)
def test_deadlines_count_only_open_hours(start: datetime, seconds: float, due: datetime) -> None:
    assert berlin().add(start, seconds) == due


def test_holidays_are_skipped() -> None:
    calendar = berlin(holidays=[date(2026, 12, 25)])
    # Thursday 24 Dec 16:30 Berlin + 1h: 30 min on the 24th, the 25th is a holiday, on to Monday 28th.
    assert calendar.add(utc(2026, 12, 24, 15, 30), 3600) == utc(2026, 12, 28, 8, 30)


def test_dst_change_does_not_shift_business_time() -> None:
    # Berlin leaves summer time on Sunday 25 Oct 2026. Friday 16:00 CEST (14:00Z) + 2h business:
    # 1h on Friday, 1h on Monday from 09:00 CET (08:00Z).
    assert berlin().add(utc(2026, 10, 23, 14, 0), 7200) == utc(2026, 10, 26, 9, 0)


def test_elapsed_is_the_inverse_of_add() -> None:
    calendar = berlin(holidays=[date(2026, 12, 25)])
    start = utc(2026, 12, 23, 10, 17)
    for seconds in (60, 3600, 9 * 3600, 30 * 3600):
        assert calendar.elapsed(start, calendar.add(start, seconds)) == pytest.approx(seconds)


def test_is_open_follows_local_hours() -> None:
    calendar = berlin()
    assert calendar.is_open(utc(2026, 11, 17, 8, 0))  # 09:00 Berlin
    assert not calendar.is_open(utc(2026, 11, 17, 16, 0))  # 17:00 Berlin: closed
    assert not calendar.is_open(utc(2026, 11, 21, 12, 0))  # Saturday


def test_calendar_without_hours_is_always_open() -> None:
    calendar = BusinessCalendar(CalendarConfig())
    start = utc(2026, 11, 21, 23, 59)
    assert calendar.add(start, 120) == utc(2026, 11, 22, 0, 1)
    assert calendar.is_open(start)


def test_span_until_midnight() -> None:
    calendar = BusinessCalendar(CalendarConfig(timezone="UTC", hours={"mon": ["22:00-24:00"]}))
    assert calendar.add(utc(2026, 11, 23, 23, 0), 1800) == utc(2026, 11, 23, 23, 30)
    assert calendar.add(utc(2026, 11, 23, 23, 30), 3600) == utc(2026, 11, 30, 22, 30)
