"""Business-hours arithmetic over a calendar (IANA zone, weekly spans, holidays). Pure.

All arithmetic happens on UTC instants: Python subtracts two datetimes sharing a tzinfo on the
wall clock, which is wrong across DST changes, so local times are only used to find the spans.
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from .config import CalendarConfig

# A calendar with no open hours in the next few years would loop forever; stop and say so.
MAX_DAYS_AHEAD = 3 * 366


class NeverOpen(ValueError):
    pass


class BusinessCalendar:
    def __init__(self, config: CalendarConfig) -> None:
        self._zone = ZoneInfo(config.timezone)
        self._always = config.hours is None
        self._weekly = config.weekly_spans()
        self._holidays = frozenset(config.holidays)

    def _spans_from(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Open spans as UTC instants, in order, from the local day containing `start`."""
        day = start.astimezone(self._zone).date()
        for offset in range(MAX_DAYS_AHEAD):
            current = day + timedelta(days=offset)
            if current in self._holidays:
                continue
            for begin, end in self._weekly[current.weekday()]:
                a = datetime.combine(current, begin, self._zone).astimezone(UTC)
                if end is None:
                    b = datetime.combine(current + timedelta(days=1), time(0), self._zone).astimezone(UTC)
                else:
                    b = datetime.combine(current, end, self._zone).astimezone(UTC)
                if b > start:
                    yield max(a, start), b
        raise NeverOpen(f"calendar has no open hours within {MAX_DAYS_AHEAD} days")

    def is_open(self, at: datetime) -> bool:
        if self._always:
            return True
        at = at.astimezone(UTC)
        for a, b in self._spans_from(at):
            return a <= at < b
        return False

    def add(self, start: datetime, seconds: float) -> datetime:
        """The instant when `seconds` of open time have passed since `start`."""
        start = start.astimezone(UTC)
        if self._always:
            return start + timedelta(seconds=seconds)
        remaining = timedelta(seconds=seconds)
        for a, b in self._spans_from(start):
            if remaining <= b - a:
                return a + remaining
            remaining -= b - a
        raise NeverOpen("unreachable")  # _spans_from raises first

    def elapsed(self, start: datetime, end: datetime) -> float:
        """Seconds of open time in [start, end)."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        if end <= start:
            return 0.0
        if self._always:
            return (end - start).total_seconds()
        total = timedelta()
        for a, b in self._spans_from(start):
            if a >= end:
                break
            total += min(b, end) - a
        return total.total_seconds()
