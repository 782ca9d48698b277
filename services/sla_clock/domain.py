"""SLA timers, pure: deadlines in business time, what is due at `now`, and why a breach happened.
Every function takes `now` as an argument; nothing here reads a clock."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from leadsla.shared.business_hours import BusinessCalendar
from leadsla.shared.config import Config, SlaPolicy

TimerState = Literal["open", "met", "breached", "cancelled"]

# Touches stamped a little before the timer started (CRM clocks drift) still count.
_CLOCK_SKEW = timedelta(minutes=5)


def compute_deadline(start: datetime, target_seconds: float, calendar: BusinessCalendar) -> datetime:
    return calendar.add(start, target_seconds)


def warning_schedule(
    start: datetime, target_seconds: float, warn_at: list[int], calendar: BusinessCalendar
) -> tuple[tuple[int, datetime], ...]:
    """(percent, instant) pairs: when that share of the business-time target has been used."""
    return tuple((pct, calendar.add(start, target_seconds * pct / 100)) for pct in sorted(warn_at))


def select_policy(config: Config, tier: str, source: str) -> SlaPolicy | None:
    for policy in config.sla_policies:
        f = policy.filter
        if (f.tiers is None or tier in f.tiers) and (f.sources is None or source in f.sources):
            return policy
    return None


@dataclass(frozen=True)
class Timer:
    sla_id: str
    lead_id: str
    metric: str
    policy_id: str
    policy_version: int
    owner_id: str | None
    tier: str
    started_at: datetime
    due_at: datetime
    warnings: tuple[tuple[int, datetime], ...] = ()
    warned: tuple[int, ...] = ()
    state: TimerState = "open"

    @property
    def next_fire_at(self) -> datetime | None:
        if self.state != "open":
            return None
        pending = [at for pct, at in self.warnings if pct not in self.warned and at < self.due_at]
        return min([*pending, self.due_at])


@dataclass(frozen=True)
class Warned:
    percent: int


@dataclass(frozen=True)
class Breached:
    at: datetime


@dataclass(frozen=True)
class Met:
    at: datetime


Outcome = Warned | Breached | Met


@dataclass(frozen=True)
class Step:
    timer: Timer
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)


def tick(timer: Timer, now: datetime) -> Step:
    """Everything that has come due by `now`: passed warnings in order, then the breach."""
    if timer.state != "open":
        return Step(timer)
    if now >= timer.due_at:
        # A warning overtaken by the breach itself would only be noise.
        return Step(replace(timer, state="breached"), (Breached(timer.due_at),))
    due = [pct for pct, at in timer.warnings if at <= now and pct not in timer.warned]
    if not due:
        return Step(timer)
    return Step(replace(timer, warned=tuple(sorted({*timer.warned, *due}))), tuple(Warned(p) for p in due))


def touch(timer: Timer, at: datetime) -> Step:
    """A qualifying touch: meets an open timer if it happened before the deadline."""
    if timer.state != "open" or at < timer.started_at - _CLOCK_SKEW:
        return Step(timer)
    if at <= timer.due_at:
        return Step(replace(timer, state="met"), (Met(at),))
    return Step(replace(timer, state="breached"), (Breached(timer.due_at),))




def root_cause(
    *, owner_id: str | None, contactable: bool, owner_calendar: BusinessCalendar | None, due_at: datetime
) -> str:
    """The contract's root causes, most structural first."""
    if owner_id is None:
        return "no_owner"
    if not contactable:
        return "missing_data"
    if owner_calendar is not None and not owner_calendar.is_open(due_at):
        return "off_hours_coverage"
    return "owner_missed"
