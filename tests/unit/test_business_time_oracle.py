"""The SLA clock's business-time arithmetic (deadline, elapsed, a pause) agrees with a simple
minute-stepping oracle, written without the production code, over hypothesis-generated calendars:
time zones with DST changes both ways (and 30/45-minute offsets), holidays, split and overlapping
spans, spans to 24:00, calendars without hours, starts near the changes.

The oracle's reading of a calendar: an instant is open when the latest wall-clock reading reached
so far (the running maximum of local date and time, minute by minute) lies in an open span of
that local date. So an opening or closing time in a spring-forward gap takes effect when the gap
ends, and an opening or closing time in a fall-back repeated hour takes effect at its first
occurrence: a span open across the repeated hour stays open through both occurrences.

CI runs a few hundred cases; LEADSLA_ORACLE_EXAMPLES=10000 runs the full count."""
from __future__ import annotations

import os
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.sla_clock.domain import compute_deadline, pause, resume, start_timer
from shared.business_hours import BusinessCalendar
from shared.config import CalendarConfig, parse_config

EXAMPLES = int(os.environ.get("LEADSLA_ORACLE_EXAMPLES", "150"))
# The full count takes minutes per test: beyond the suite's per-test timeout.
pytestmark = [pytest.mark.timeout(0)] if EXAMPLES > 150 else []
MINUTE = timedelta(minutes=1)
ZONES = ["America/New_York", "Europe/London", "Europe/Berlin", "Australia/Lord_Howe", "America/Santiago",
         "Pacific/Chatham", "America/St_Johns", "Asia/Kolkata", "UTC"]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Starts fall in weeks around 2026's DST changes (and one plain week).
WEEKS = [datetime(2026, 3, 6), datetime(2026, 3, 27), datetime(2026, 4, 2), datetime(2026, 9, 3),
         datetime(2026, 9, 24), datetime(2026, 10, 22), datetime(2026, 10, 29), datetime(2026, 6, 10)]
MIN_WEEKLY_MINUTES = 600  # keeps the oracle's walk short: every target is reached within weeks


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@st.composite
def spans(draw) -> str:
    begin = draw(st.one_of(st.integers(0, 23 * 60 + 59), st.sampled_from([60, 90, 120, 150, 165, 180])))
    end = draw(st.one_of(st.integers(begin + 1, 24 * 60), st.just(24 * 60)))
    return f"{hhmm(begin)}-{hhmm(end)}"


@st.composite
def calendars(draw) -> CalendarConfig:
    zone = draw(st.sampled_from(ZONES))
    holidays = draw(st.lists(st.dates(date(2026, 3, 1), date(2026, 11, 30)), max_size=3))
    if draw(st.integers(0, 9)) == 0:
        return CalendarConfig(timezone=zone, holidays=holidays)
    hours = {}
    for day in DAYS:
        chosen = draw(st.lists(spans(), max_size=3))
        if chosen:
            hours[day] = chosen
    weekly = sum(_span_minutes(s) for spans_ in hours.values() for s in spans_)
    if weekly < MIN_WEEKLY_MINUTES:
        hours.setdefault("wed", []).append("00:00-24:00")
    # Overlapping spans too: refused in a file now, but an owner's hours stored before may have them.
    return CalendarConfig.model_validate({"timezone": zone, "hours": hours, "holidays": holidays},
                                         context={"stored": True})


def _span_minutes(span: str) -> int:
    a, b = span.split("-")
    return int(b[:2]) * 60 + int(b[3:]) - int(a[:2]) * 60 - int(a[3:])


@st.composite
def instants(draw) -> datetime:
    week = draw(st.sampled_from(WEEKS))
    return (week + timedelta(minutes=draw(st.integers(0, 9 * 24 * 60)))).replace(tzinfo=UTC)


class Oracle:
    """Walks minute by minute; knows nothing of the production arithmetic."""

    def __init__(self, config: CalendarConfig) -> None:
        self.zone = ZoneInfo(config.timezone)
        self.holidays = set(config.holidays)
        self.spans: dict[int, list[tuple[time, time | None]]] | None = None
        if config.hours is not None:
            self.spans = {}
            for i, day in enumerate(DAYS):
                for span in config.hours.get(day, []):
                    a, b = span.split("-")
                    end = None if b == "24:00" else time.fromisoformat(b)
                    self.spans.setdefault(i, []).append((time.fromisoformat(a), end))

    def _wall_open(self, wall: datetime) -> bool:
        if wall.date() in self.holidays:
            return False
        if self.spans is None:
            return True
        return any(a <= wall.time() and (b is None or wall.time() < b) for a, b in self.spans.get(wall.weekday(), []))

    def minutes(self, start: datetime):
        """(instant, open) for each minute from `start`."""
        seen = None
        t = start - timedelta(hours=3)  # the running maximum needs the wall readings just before
        while True:
            wall = t.astimezone(self.zone).replace(tzinfo=None)
            seen = wall if seen is None or wall > seen else seen
            if t >= start:
                yield t, self._wall_open(seen)
            t += MINUTE

    def add(self, start: datetime, minutes: int, skip: tuple[datetime, datetime] | None = None) -> datetime:
        count = 0
        for t, is_open in self.minutes(start):
            if is_open and not (skip and skip[0] <= t < skip[1]):
                count += 1
                if count == minutes:
                    return t + MINUTE
        raise AssertionError("unreachable")

    def elapsed(self, start: datetime, end: datetime) -> int:
        count = 0
        for t, is_open in self.minutes(start):
            if t >= end:
                return count
            count += is_open
        raise AssertionError("unreachable")


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@SETTINGS
@given(calendars(), instants(), st.integers(1, 20 * 60), st.integers(0, 3 * 24 * 60))
def test_deadline_and_elapsed_agree_with_the_minute_stepping_oracle(config, start, target, span) -> None:
    calendar, oracle = BusinessCalendar(config), Oracle(config)
    due = compute_deadline(start, target * 60, calendar)
    assert due == oracle.add(start, target), (config, start, target)
    end = start + timedelta(minutes=span)
    assert calendar.elapsed(start, end) == oracle.elapsed(start, end) * 60, (config, start, end)
    assert calendar.elapsed(start, due) == target * 60
    assert calendar.is_open(end) == next(oracle.minutes(end))[1], (config, end)


POLICY = parse_config("""
sla_policies: [{id: p, metrics: {first_response: {target: 1m, warn_at: [50, 80]}}}]
""").sla_policies[0]


@SETTINGS
@given(calendars(), instants(), st.integers(1, 12 * 60), st.integers(0, 12 * 60), st.integers(0, 2 * 24 * 60))
def test_a_pause_moves_the_deadline_and_warnings_as_the_oracle_says(config, start, target, pause_after,
                                                                    paused_for) -> None:
    calendar, oracle = BusinessCalendar(config), Oracle(config)
    policy = POLICY.model_copy(update={"metrics": {"first_response": POLICY.metrics["first_response"].model_copy(
        update={"target": target * 60})}})
    timer = start_timer("s", "l", "first_response", policy, 1, None, "A", start, calendar)
    paused_at = start + timedelta(minutes=pause_after)
    if paused_at >= timer.due_at:
        return  # a pause after the deadline comes too late (tested elsewhere)
    resumed_at = paused_at + timedelta(minutes=paused_for)
    moved = resume(pause(timer, paused_at).timer, resumed_at, calendar).timer
    window = (paused_at, resumed_at)
    assert moved.due_at == oracle.add(start, target, skip=window), (config, start, target, window)
    # The pending warnings move by the same paused business time.
    paused = calendar.elapsed(paused_at, resumed_at)
    for pct, at in moved.warnings:
        assert abs(calendar.elapsed(start, at) - paused - target * 60 * pct / 100) < 1e-6
