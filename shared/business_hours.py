"""Business-hours arithmetic over a calendar (IANA zone, weekly spans, holidays: its own dates
and a country's public holidays). Pure: the public holidays come from the `holidays` package's
tables.

All arithmetic happens on UTC instants: Python subtracts two datetimes sharing a tzinfo on the
wall clock, which is wrong across DST changes, so local times are only used to find the spans.
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from .config import BUSINESS_HORIZON_DAYS, CalendarConfig, Config

# A calendar with no open hours in the next few years would loop forever; stop and say so
# (the configuration refuses a target longer than that).
MAX_DAYS_AHEAD = BUSINESS_HORIZON_DAYS
# Span edges remembered per calendar (a few per day: years of them).
_INSTANTS_KEPT = 10_000


class NeverOpen(ValueError):
    pass


@lru_cache(maxsize=1024)  # a (country, subdivision, year) is computed once per process
def public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    import holidays  # here: a calendar without public holidays never needs its tables

    return frozenset(holidays.country_holidays(country, subdiv=subdivision, years=year))


class BusinessCalendar:
    def __init__(self, config: CalendarConfig) -> None:
        self._zone = ZoneInfo(config.timezone)
        self._holidays = frozenset(config.holidays)
        self._public = config.public_holidays
        # Without hours: open around the clock, holidays excepted.
        self._always = config.hours is None and not self._holidays and self._public is None
        self._weekly = (config.weekly_spans() if config.hours is not None
                        else {day: [(time(0), None)] for day in range(7)})
        # (local day, local time) -> UTC instant: the same few span edges are asked for again and
        # again (every deadline and elapsed time of the day), and the zone lookups cost.
        self._instants: dict[tuple[date, time], datetime] = {}

    def _spans_from(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Open spans as UTC instants, in order, from the local day containing `start`."""
        day = start.astimezone(self._zone).date()
        reached = start  # overlapping spans count once: each one only from where the last ended
        for offset in range(MAX_DAYS_AHEAD):
            current = day + timedelta(days=offset)
            if current in self._holidays or (self._public is not None and current in public_holidays(
                    self._public.country, self._public.subdivision, current.year)):
                continue
            for begin, end in self._weekly[current.weekday()]:
                a = max(self._instant(current, begin), reached)
                b = self._instant(current + timedelta(days=1), time(0)) if end is None else self._instant(current, end)
                if b > a:
                    yield a, b
                    reached = b
        raise NeverOpen(f"calendar has no open hours within {MAX_DAYS_AHEAD} days")

    def _instant(self, day: date, at: time) -> datetime:
        found = self._instants.get((day, at))
        if found is None:
            if len(self._instants) >= _INSTANTS_KEPT:
                self._instants.clear()
            found = self._instants[day, at] = self._local_instant(day, at)
        return found

    def _local_instant(self, day: date, at: time) -> datetime:
        """When the local clock first reads `at` on `day` or later: a time in a fall-back repeated
        hour at its first occurrence (a span open across the hour stays open through both); one in
        a spring-forward gap when the gap ends (a plain fold=0 reading would land the jump later)."""
        local = datetime.combine(day, at)
        instant = local.replace(tzinfo=self._zone).astimezone(UTC)
        if instant.astimezone(self._zone).replace(tzinfo=None) == local:
            return instant
        # In a gap: read with the offset after the change it lands before it; the change is between.
        before, after = local.replace(tzinfo=self._zone, fold=1).astimezone(UTC), instant
        while after - before > timedelta(seconds=1):
            middle = before + timedelta(seconds=(after - before).total_seconds() // 2)
            if middle.astimezone(self._zone).replace(tzinfo=None) >= local:
                after = middle
            else:
                before = middle
        return after

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


def business_calendar(config: Config, name: str, zone: str | None = None) -> BusinessCalendar:
    """The configuration's calendar `name`, read in `zone` (an owner's, a lead's) when given."""
    hours = config.calendar(name)
    return BusinessCalendar(hours.model_copy(update={"timezone": zone}) if zone else hours)
