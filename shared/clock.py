"""Time is injected so SLA logic can be tested without waiting."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to: for tests and simulations."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta


def as_utc(value: datetime) -> datetime:
    """An aware instant in UTC. ValueError when it has none within the years 1 to 9999, the range
    Python keeps (an offset pushes 0001-01-01T00:00+01:00 and 9999-12-31T23:59-14:00 out of it):
    an input to refuse or keep aside as sent, not an OverflowError when it is stored or put on
    the wire."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the years 1 to 9999 in UTC") from None


def is_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone. 'Europe' or 'US' is a folder of zones, not one:
    ZoneInfo raises IsADirectoryError for it, not ZoneInfoNotFoundError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True
