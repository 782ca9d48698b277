from datetime import UTC, date, datetime

import pytest

from shared.business_hours import BusinessCalendar
from shared.config import CalendarConfig

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


def new_york(hours: dict[str, list[str]], **extra) -> BusinessCalendar:
    return BusinessCalendar(CalendarConfig(timezone="America/New_York", hours=hours, **extra))


def test_a_time_in_the_spring_forward_gap_takes_effect_when_the_gap_ends() -> None:
    # 8 Mar 2026: New York jumps from 02:00 EST to 03:00 EDT (07:00Z). Open 02:30-04:00: from 03:00 EDT.
    calendar = new_york({"sun": ["02:30-04:00"]})
    assert calendar.add(utc(2026, 3, 7, 12, 0), 3600) == utc(2026, 3, 8, 8, 0)  # 04:00 EDT, not a week on
    assert new_york({"sun": ["02:30-03:15"]}).elapsed(utc(2026, 3, 8, 0, 0), utc(2026, 3, 9, 0, 0)) == 900


def test_a_span_open_across_the_repeated_fall_back_hour_stays_open_and_one_ending_in_it_ends_at_its_first_pass(
) -> None:
    # 1 Nov 2026: New York goes back from 02:00 EDT to 01:00 EST (06:00Z); 01:00-02:00 happens twice.
    assert new_york({"sun": ["00:00-03:00"]}).elapsed(utc(2026, 11, 1, 0, 0), utc(2026, 11, 2, 0, 0)) == 4 * 3600
    assert new_york({"sun": ["00:00-01:30"]}).elapsed(utc(2026, 11, 1, 0, 0), utc(2026, 11, 2, 0, 0)) == 1.5 * 3600


def test_a_calendar_without_hours_still_keeps_its_holidays() -> None:
    calendar = BusinessCalendar(CalendarConfig(holidays=[date(2026, 12, 25)]))
    assert calendar.add(utc(2026, 12, 24, 23, 0), 7200) == utc(2026, 12, 26, 1, 0)
    assert not calendar.is_open(utc(2026, 12, 25, 12, 0))


def stored(hours: dict[str, list[str]]) -> CalendarConfig:
    """Hours stored before overlapping spans were refused (an owner's, set through the API)."""
    return CalendarConfig.model_validate({"hours": hours}, context={"stored": True})


def test_overlapping_spans_count_once() -> None:
    calendar = BusinessCalendar(stored({"tue": ["09:00-17:00", "10:00-11:00"]}))
    assert calendar.add(utc(2026, 11, 17, 9, 0), 8.5 * 3600) == utc(2026, 11, 24, 9, 30)


def test_two_spans_with_the_same_start_one_to_midnight_are_one_calendar() -> None:
    calendar = BusinessCalendar(stored({"tue": ["09:00-12:00", "09:00-24:00"]}))
    assert calendar.elapsed(utc(2026, 11, 17, 0, 0), utc(2026, 11, 18, 0, 0)) == 15 * 3600


def test_a_countrys_public_holidays_are_skipped_with_the_calendars_own_dates() -> None:
    # Wednesday 25 Nov 2026 16:30 New York (21:30Z) + 1h: Thursday 26th is Thanksgiving.
    assert new_york(WEEKDAYS_9_TO_5).add(utc(2026, 11, 25, 21, 30), 3600) == utc(2026, 11, 26, 14, 30)
    us = new_york(WEEKDAYS_9_TO_5, public_holidays={"country": "US"})
    assert us.add(utc(2026, 11, 25, 21, 30), 3600) == utc(2026, 11, 27, 14, 30)
    assert not us.is_open(utc(2026, 11, 26, 15, 0))
    # The calendar's own dates still count: the day after Thanksgiving off too, on to Monday.
    bridge = new_york(WEEKDAYS_9_TO_5, public_holidays={"country": "US"}, holidays=[date(2026, 11, 27)])
    assert bridge.add(utc(2026, 11, 25, 21, 30), 3600) == utc(2026, 11, 30, 14, 30)


def test_a_subdivision_has_its_own_public_holidays() -> None:
    # Epiphany (Wednesday 6 Jan 2027) is a holiday in Bavaria, not in Germany as a whole.
    tuesday_late = utc(2027, 1, 5, 15, 30)  # 16:30 in Berlin
    assert berlin(public_holidays={"country": "DE"}).add(tuesday_late, 3600) == utc(2027, 1, 6, 8, 30)
    bavaria = berlin(public_holidays={"country": "DE", "subdivision": "BY"})
    assert bavaria.add(tuesday_late, 3600) == utc(2027, 1, 7, 8, 30)


def test_a_calendar_without_hours_still_keeps_its_public_holidays() -> None:
    calendar = BusinessCalendar(CalendarConfig(public_holidays={"country": "GB"}))  # 25 Dec 2026: Christmas
    assert not calendar.is_open(utc(2026, 12, 25, 12, 0)) and calendar.is_open(utc(2026, 12, 23, 12, 0))
