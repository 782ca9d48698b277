"""SLA timers, pure: deadlines in business time, what is due at `now`, and why a breach happened;
what a touch, pause, cancel or reassignment does to a timer; and the watermark, how far the clock
has seen its inputs. Every function takes the time as an argument; nothing here reads a clock."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Literal

from shared.business_hours import BusinessCalendar
from shared.config import TOUCH_SKEW, Config, SlaPolicy, is_history
from shared.events import WireModel

TimerState = Literal["open", "paused", "met", "breached", "cancelled"]


# --- What the clock keeps, as its own events ---------------------------------------------------
# The clock's state (services/sla_clock/projection.py) is derived from its store alone: the
# contract's sla.* events carry the timer as the transition leaves it (`timer`: a TimerRecord), and
# internal events, kept in the store and never published, carry what it notes about a lead (and a
# timer's change that is no news).
LEAD_NOTED = "sla_clock.lead_noted"
OWNER_CHANGED = "sla_clock.owner_changed"
TIMER_NOTED = "sla_clock.timer_noted"  # a timer's new record that is nobody's news (see `Settled`)


class LeadFacts(WireModel):
    """sla_clock.lead_noted: what the clock now knows about a lead (the whole record, so that the
    last one noted is the lead's state), taken from lead.received/assigned/queued/updated and
    from activities (the first response, the lead leaving the funnel)."""

    lead_id: str
    tier: str
    source: str
    contactable: bool
    received_at: datetime
    correlation_id: str | None = None
    owner_id: str | None = None
    first_touch_at: datetime | None = None
    queued_reason: str | None = None
    closed_reason: str | None = None
    timezone: str | None = None
    team_id: str | None = None
    assigned_at: datetime | None = None
    traceparent: str | None = None  # of the event that made the lead known: its timers' events continue it


class OwnerChanged(WireModel):
    """sla_clock.owner_changed: the lead has a new owner, who takes over its running timers (None:
    taken from its owner into the queue, nobody's until assigned again)."""

    lead_id: str
    owner_id: str | None
    # When the change was made: a running timer whose deadline had passed by then stays its
    # previous owner's (the miss was theirs; the clock may not have judged it yet). None: every
    # live timer goes (events stored before this was kept).
    as_of: datetime | None = None


class TimerRecord(WireModel):
    """A timer as an sla.* event leaves it: every stored column but its identity (sla_id, lead_id,
    metric, which the event names). `next_fire_at`: when the clock next has to look at it (the
    next pending warning, else the deadline; None unless open)."""

    policy_id: str
    policy_version: int
    calendar: str
    timezone: str | None = None
    owner_id: str | None = None
    tier: str
    started_at: datetime
    due_at: datetime
    warnings: list[tuple[int, datetime]]
    warned: list[int]
    state: str
    next_fire_at: datetime | None = None
    closed_at: datetime | None = None
    root_cause: str | None = None
    target_seconds: float | None = None
    paused_at: datetime | None = None
    paused_seconds: float = 0.0
    step: int = 1
    reason: str | None = None
    exhausts_at: datetime | None = None


def compute_deadline(start: datetime, target_seconds: float, calendar: BusinessCalendar) -> datetime:
    return calendar.add(start, target_seconds)


def warning_schedule(
    start: datetime, target_seconds: float, warn_at: list[int], calendar: BusinessCalendar
) -> tuple[tuple[int, datetime], ...]:
    """(percent, instant) pairs: when that share of the business-time target has been used."""
    return tuple((pct, calendar.add(start, target_seconds * pct / 100)) for pct in sorted(warn_at))


def select_policy(config: Config, tier: str, source: str) -> SlaPolicy | None:
    return config.sla_policy(tier, source)


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
    target_seconds: float | None = None
    paused_at: datetime | None = None
    paused_seconds: float = 0.0  # business time spent paused so far
    step: int = 1  # next_action: which follow-up of the cadence is due
    # next_action: once this follow-up is missed, the cadence ends at this instant (or at the
    # deadline, if later; see `cadence_exhausts_at`). None: a touch may start the next one any time.
    exhausts_at: datetime | None = None

    @property
    def next_fire_at(self) -> datetime | None:
        if self.state == "breached":  # a missed follow-up: when nothing can follow it any more
            return None if self.exhausts_at is None else max(self.due_at, self.exhausts_at)
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
    # When the clock could first know: the deadline, or later for a deadline already past when
    # its timer started (see `catch_up`); the breach's lateness is measured from here.
    noticed: datetime | None = None


@dataclass(frozen=True)
class Met:
    at: datetime


@dataclass(frozen=True)
class Paused:
    at: datetime


@dataclass(frozen=True)
class Resumed:
    at: datetime


@dataclass(frozen=True)
class Cancelled:
    reason: str  # opted_out | disqualified | merged | cadence_exhausted | policy_changed


@dataclass(frozen=True)
class Started:
    """The timer (re)started: a cadence's next follow-up, or a reset on reassignment."""

    at: datetime


@dataclass(frozen=True)
class Settled:
    """The timer changed with no news for anyone: a missed follow-up whose cadence a booked
    meeting, a disposition or the lead's leaving ended no longer ends by time (see `settle`)."""


Outcome = Warned | Breached | Met | Paused | Resumed | Cancelled | Started | Settled


@dataclass(frozen=True)
class Step:
    timer: Timer
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)


def tick(timer: Timer, now: datetime) -> Step:
    """Everything that has come due by `now`: passed warnings in order, then the breach; for a
    missed follow-up, the end of its cadence once no touch can start another inside its window."""
    if timer.state == "breached" and timer.next_fire_at is not None and now >= timer.next_fire_at:
        return Step(replace(timer, state="cancelled"), (Cancelled(CADENCE_EXHAUSTED),))
    if timer.state != "open":
        return Step(timer)
    if now >= timer.due_at:
        # A warning overtaken by the breach itself would only be noise.
        return Step(replace(timer, state="breached"), (Breached(timer.due_at),))
    due = [pct for pct, at in timer.warnings if at <= now and pct not in timer.warned]
    if not due:
        return Step(timer)
    return Step(replace(timer, warned=tuple(sorted({*timer.warned, *due}))), tuple(Warned(p) for p in due))


def judging_horizon(now: datetime, seen: datetime | None, confirm_wait: timedelta) -> datetime:
    """How far the clock may judge: an outcome due at X is decided once every input up to X has
    been consumed (`seen` >= X), or, never confirmed, once X is `confirm_wait` in the past (a
    watermark that cannot move must not hold breaches for ever; by then it is the system's
    delay, see `breach_root_cause`)."""
    return now - confirm_wait if seen is None else max(now - confirm_wait, min(seen, now))


def judge(timer: Timer, now: datetime, seen: datetime | None, confirm_wait: timedelta) -> Step:
    """`tick`, limited to what the clock has seen."""
    return tick(timer, judging_horizon(now, seen, confirm_wait))


def touch(timer: Timer, at: datetime) -> Step:
    """A qualifying touch: meets an open timer if it happened before the deadline, strictly (a paused timer's
    deadline is not running, so any touch meets it)."""
    # Touches stamped a little before the timer started (CRM clocks drift) still count.
    if timer.state == "paused" and not is_history(at, timer.started_at):
        # `paused_at` stays: the timer's time stopped there, not at the touch (see views.timer_view).
        return Step(replace(timer, state="met"), (Met(at),))
    if timer.state != "open" or is_history(at, timer.started_at):
        return Step(timer)
    if at < timer.due_at:  # as `tick` breaches at the deadline: a touch there met or breached by arrival order
        return Step(replace(timer, state="met"), (Met(at),))
    return Step(replace(timer, state="breached"), (Breached(timer.due_at),))


def metric_start_on(policy: SlaPolicy, metric: str) -> str:
    return policy.metrics[metric].start_on or policy.start_on  # type: ignore[index]


def metric_on_reassign(policy: SlaPolicy, metric: str) -> str:
    return policy.metrics[metric].on_reassign or policy.on_reassign  # type: ignore[index]


def metric_zone(policy: SlaPolicy, metric: str, *, owner_zone: str | None, lead_zone: str | None,
                team_zone: str | None) -> str | None:
    """The zone the metric's calendar is read in; None: the calendar's own (also when the chosen
    party's zone is unknown, e.g. a lead without contact.timezone)."""
    choice = policy.metrics[metric].timezone  # type: ignore[index]
    return {"owner": owner_zone, "lead": lead_zone, "team": team_zone}.get(choice)


CADENCE_EXHAUSTED = "cadence_exhausted"


def cadence_exhausts_at(policy: SlaPolicy, step: int, cadence_start: datetime,
                        calendar: BusinessCalendar) -> datetime | None:
    """When a missed follow-up (`step` of the next_action cadence that began at `cadence_start`)
    ends the cadence: after the last one, nothing is due any more (its start: at once, the breach
    being later); before, once a touch could no longer start another that falls due inside the
    window (`within - target` into it, as `follow_up` judges). None: no window, never by time."""
    cadence = policy.metrics["next_action"]  # type: ignore[index]
    if step >= cadence.touches:
        return cadence_start
    if cadence.within is None:
        return None
    return calendar.add(cadence_start, max(cadence.within - cadence.target, 0))


def start_timer(sla_id: str, lead_id: str, metric: str, policy: SlaPolicy, version: int, owner_id: str | None,
                tier: str, start: datetime, calendar: BusinessCalendar, step: int = 1,
                paused_seconds: float = 0.0, cadence_start: datetime | None = None) -> Timer:
    """`paused_seconds`: business time the lead already spent paused since `start` (a successor
    under a new policy keeps its predecessor's pauses): the deadline and warnings move by it.
    `cadence_start`: for next_action, when the cadence began (the first response; else `start`)."""
    target = policy.metrics[metric]  # type: ignore[index]
    exhausts_at = (cadence_exhausts_at(policy, step, cadence_start or start, calendar)
                   if metric == "next_action" else None)
    return Timer(
        sla_id=sla_id, lead_id=lead_id, metric=metric, policy_id=policy.id, policy_version=version,
        owner_id=owner_id, tier=tier, started_at=start,
        due_at=compute_deadline(start, target.target + paused_seconds, calendar),
        warnings=tuple((pct, calendar.add(start, target.target * pct / 100 + paused_seconds))
                       for pct in sorted(target.warn_at)),
        target_seconds=target.target, step=step, paused_seconds=paused_seconds, exhausts_at=exhausts_at,
    )


def _overdue(timer: Timer, at: datetime) -> Step | None:
    """A pause or cancel made after the deadline of a timer still waiting to be judged (see
    `judge`) comes too late: the breach happened first."""
    if timer.state == "open" and at > timer.due_at:
        return Step(replace(timer, state="breached"), (Breached(timer.due_at),))
    return None


def pause(timer: Timer, at: datetime) -> Step:
    if timer.state != "open":
        return Step(timer)
    return _overdue(timer, at) or Step(replace(timer, state="paused", paused_at=at), (Paused(at),))


def resume(timer: Timer, at: datetime, calendar: BusinessCalendar) -> Step:
    """Restart a paused timer: its deadline and pending warnings move by the paused business time."""
    if timer.state != "paused" or timer.paused_at is None:
        return Step(timer)
    paused = timer.paused_seconds + calendar.elapsed(timer.paused_at, max(at, timer.paused_at))
    target = timer.target_seconds
    if target is None:  # a timer from before pauses existed: its target is its business length
        target = calendar.elapsed(timer.started_at, timer.due_at) - timer.paused_seconds
    # Every pause so far lies before the deadline and the pending warnings: add it to each.
    warnings = tuple((pct, at_ if pct in timer.warned else calendar.add(timer.started_at, target * pct / 100 + paused))
                     for pct, at_ in timer.warnings)
    moved = replace(timer, state="open", paused_at=None, paused_seconds=paused, target_seconds=target,
                    due_at=calendar.add(timer.started_at, target + paused), warnings=warnings)
    return Step(moved, (Resumed(at),))


def cancel(timer: Timer, reason: str, at: datetime) -> Step:
    if timer.state not in ("open", "paused"):
        return Step(timer)
    return _overdue(timer, at) or Step(replace(timer, state="cancelled"), (Cancelled(reason),))  # paused_at: as touch


def restart(timer: Timer, policy: SlaPolicy, at: datetime, calendar: BusinessCalendar) -> Step:
    """on_reassign: reset: the new owner gets the whole target from the reassignment. Not once the
    deadline has passed: the breach came first, and a fresh window would wipe it. It is left to be
    judged (not breached here: a touch made in time may still be on its way on the intake topic)."""
    if timer.state not in ("open", "paused") or (timer.state == "open" and at > timer.due_at):
        return Step(timer)
    fresh = replace(start_timer(timer.sla_id, timer.lead_id, timer.metric, policy, timer.policy_version,
                                timer.owner_id, timer.tier, at, calendar, timer.step),
                    exhausts_at=timer.exhausts_at)  # the cadence's window stands as it began
    if timer.state == "paused":  # a paused lead stays paused under its new owner
        fresh = replace(fresh, state="paused", paused_at=at)
    return Step(fresh, (Started(at),))


def settle(timer: Timer) -> Step:
    """A missed follow-up whose cadence ended otherwise (a booked meeting, a disposition, the lead
    leaving the funnel): it stays missed, and its cadence no longer ends by time (no
    cadence_exhausted sends the lead to nurture later)."""
    if timer.state != "breached" or timer.exhausts_at is None:
        return Step(timer)
    return Step(replace(timer, exhausts_at=None), (Settled(),))


def follow_up(timer: Timer, policy: SlaPolicy, at: datetime, cadence_start: datetime, calendar: BusinessCalendar,
              *, ends_cadence: bool) -> Step:
    """A next_action touch: meets the due follow-up, then either the next one starts (due `target`
    after this touch; paused, while the lead is) or the cadence ends: `ends_cadence` (a booked meeting or a disposition) closes
    it met; the last of its `touches`, or its `within` window used up, cancels it as
    cadence_exhausted (the lead goes to nurture). So does a next follow-up that would fall due
    after the window closes: nobody promised it, so it must not breach. A touch after a missed
    follow-up restarts it."""
    if timer.state == "open" and is_history(at, timer.started_at):
        return Step(timer)
    if timer.state not in ("open", "paused", "breached"):
        return Step(timer)
    outcomes: list[Outcome] = []
    if timer.state != "breached":
        met = touch(timer, at)
        outcomes.extend(met.outcomes)
        if met.timer.state == "breached":  # late: the breach is this step's outcome
            return met
    if ends_cadence:
        if timer.state == "breached":
            return settle(timer)  # the missed follow-up stays missed; nothing more is due
        return Step(replace(timer, state="met"), tuple(outcomes))
    cadence = policy.metrics["next_action"]  # type: ignore[index]
    nxt = None
    if timer.step < cadence.touches:
        nxt = start_timer(timer.sla_id, timer.lead_id, timer.metric, policy, timer.policy_version, timer.owner_id,
                          timer.tier, at, calendar, timer.step + 1, cadence_start=cadence_start)
        if cadence.within is not None and calendar.elapsed(cadence_start, nxt.due_at) > cadence.within:
            nxt = None
    if nxt is None:
        return Step(replace(timer, state="cancelled"),
                    (*outcomes, Cancelled(CADENCE_EXHAUSTED)))
    if timer.state == "paused":  # the lead is paused: the next follow-up waits for the resume
        return Step(replace(nxt, state="paused", paused_at=at), (*outcomes, Started(at), Paused(at)))
    return Step(nxt, (*outcomes, Started(at)))


# --- A tier change: the lead's timers re-planned under the policy its new tier selects --------
# Not a contract reason (opted_out | disqualified | merged | cadence_exhausted fit none): the
# timer did not end for the lead's sake, a successor under the new policy replaces it.
POLICY_CHANGED = "policy_changed"


def clock_start(policy: SlaPolicy, metric: str, *, received_at: datetime, assigned_at: datetime | None,
                first_touch_at: datetime | None, unowned_timed: bool) -> datetime | None:
    """When the lead's clock for a metric it never had a timer for began under `policy`: its
    receipt or first assignment (a queued lead is timed from receipt), the first response for the
    cadence; None while that has not happened (the metric starts when it does)."""
    if metric == "next_action":
        return first_touch_at
    if metric_start_on(policy, metric) == "received" or unowned_timed:
        return received_at
    return assigned_at


@dataclass(frozen=True)
class Successor:
    """A timer to start under the new policy, where its predecessor's clock stood."""

    metric: str
    start: datetime
    step: int = 1
    paused_seconds: float = 0.0  # the predecessor's pauses that ended, in its calendar's business time
    paused_since: datetime | None = None  # the pause running at the change: measured in the new calendar


def replan(timers: Iterable[Timer], policy: SlaPolicy | None, at: datetime, starts: Mapping[str, datetime | None],
           ) -> tuple[list[tuple[Timer, Step]], list[Successor]]:
    """The lead's tier now selects `policy` (another than its timers run under): every running or
    paused timer ends (`policy_changed`; one already past its deadline at `at` breached first and
    its metric stays decided), and the new policy's metrics run from the same clock start: a
    faster tier does not give the owner a fresh window. A metric already met or breached stays
    so; one never timed starts at `starts[metric]` (see `clock_start`), if that has come.
    `timers`: the lead's current timers. A pause running at the change is handed over by its
    start, to be measured in the successor's calendar (a night paused counts no office hours)."""
    ended: list[tuple[Timer, Step]] = []
    successors: list[Successor] = []
    metrics = policy.metrics if policy is not None else {}
    for timer in timers:
        if timer.state not in ("open", "paused"):
            continue
        step = cancel(timer, POLICY_CHANGED, at)
        ended.append((timer, step))
        if step.timer.state != "cancelled" or timer.metric not in metrics:
            continue
        since = min(timer.paused_at or at, at) if timer.state == "paused" else None
        successors.append(Successor(timer.metric, timer.started_at, timer.step, timer.paused_seconds, since))
    decided = {t.metric for t in timers}
    for metric in metrics:
        start = starts.get(metric)
        if metric not in decided and start is not None:
            successors.append(Successor(metric, start))
    return ended, successors


def catch_up(timer: Timer, at: datetime) -> Step:
    """A timer started at `at` on a clock that began earlier (a successor): what is already due
    happens now; a breach is one nobody could know of before `at`, so its lateness counts from there."""
    step = tick(timer, at)
    return Step(step.timer, tuple(Breached(o.at, noticed=max(at, o.at)) if isinstance(o, Breached) else o
                                  for o in step.outcomes))


def touch_counts(policy: SlaPolicy, metric: str, activity_type: str, outcome: str | None, actor: str | None,
                 owner_id: str | None) -> bool:
    """Whether this activity is a touch for `metric` under the policy: type, outcome and actor."""
    return policy.counts_as_touch(metric, activity_type, outcome, actor, owner_id)


# Every root cause `root_cause` and `breach_root_cause` give, for the breach counter's series.
ROOT_CAUSES = ("missing_data", "capacity", "no_owner", "off_hours_coverage", "owner_missed", "system_delay")


def counted_series(config: Config) -> list[tuple[str, str]]:
    """(metric, tier) of every met and breach count the configuration can produce. Created at 0
    before the first breach: `increase()` over a series born inside its window misses its first
    count, so the first burst of breaches of a kind would not raise the alert on them."""
    measured = dict.fromkeys(metric for policy in config.sla_policies for metric in policy.metrics)
    return [(metric, tier) for metric in measured for tier in config.tiers.order]


def root_cause(
    *, owner_id: str | None, contactable: bool, owner_calendar: BusinessCalendar | None, due_at: datetime,
    queued_reason: str | None = None,
) -> str:
    """The contract's root causes, most structural first."""
    if owner_id is None:
        # The router queues a lead with reason at_capacity when every eligible owner was full, and
        # with missing_data when its rule's team cannot work it without fields the lead lacks.
        if queued_reason == "missing_data":
            return "missing_data"
        return "capacity" if queued_reason and "capacity" in queued_reason else "no_owner"
    if not contactable:
        return "missing_data"
    # Open just before the deadline, not at it: a deadline is often a closing time (1h from 16:00
    # on 09:00-17:00 is 17:00), and spans are half-open, so the owner who had the whole hour was
    # blamed on coverage.
    if owner_calendar is not None and not owner_calendar.is_open(due_at - timedelta(microseconds=1)):
        return "off_hours_coverage"
    return "owner_missed"


def breach_root_cause(person_cause: str, due_at: datetime, emitted_at: datetime, tolerance: timedelta,
                      outages: Iterable[Outage] = ()) -> str:
    """A breach that leaves `tolerance` or more after its deadline is the system's delay (the clock
    could not confirm in time that nothing was missed), and so is one whose deadline fell in an
    outage of the clock's inputs (nobody could log a touch): it goes to lead ops, not to a person."""
    if any(outage.covers(due_at) for outage in outages):
        return "system_delay"
    return "system_delay" if emitted_at - due_at >= tolerance else person_cause


@dataclass(frozen=True)
class Outage:
    """A time touches could not reach the clock: intake could not accept them (from its last beat
    to its first beat back), or the clock could not read its inputs (the broker away). `ended`
    None: still out."""

    began: datetime
    ended: datetime | None = None

    def covers(self, at: datetime) -> bool:
        return self.began < at and (self.ended is None or at <= self.ended)


@dataclass(frozen=True)
class InputHold:
    until: datetime | None = None  # judge no deadline after this (None: no hold)
    outages: tuple[Outage, ...] = ()  # the latest outages, for breaches' root cause

    def __and__(self, other: InputHold) -> InputHold:
        untils = [u for u in (self.until, other.until) if u is not None]
        return InputHold(min(untils, default=None), self.outages + other.outages)


def after_outage(outage: Outage | None, now: datetime, grace: timedelta) -> InputHold:
    """A touch made during an outage reaches the clock only when its sender retries, once the outage
    is over: no deadline after the outage began is judged while it lasts and for `grace` after it
    (then those due in it breach as system_delay, and a touch made before them and retried meets them)."""
    if outage is None:
        return InputHold()
    if outage.ended is None or now < outage.ended + grace:
        return InputHold(outage.began, (outage,))
    return InputHold(None, (outage,))


def after_outages(outages: Iterable[Outage], now: datetime, grace: timedelta) -> InputHold:
    """`after_outage` for each: held at the earliest that still holds, every one named (a breach
    due in an earlier outage, judged after a later one began, is the system's delay too)."""
    hold = InputHold()
    for outage in outages:
        hold &= after_outage(outage, now, grace)
    return hold


def intake_outages(runs: Iterable[tuple[datetime, datetime]], now: datetime, gap: timedelta) -> list[Outage]:
    """Intake's outages, oldest first, from its runs of heartbeats (first, last), every process's:
    runs less than `gap` apart are one time of availability; a silence longer than `gap` is an
    outage (down, or its database away), the last one still going on if intake is silent now. No
    runs at all: intake never ran here, no outage."""
    spans: list[list[datetime]] = []
    for first, last in sorted(runs):
        if spans and first <= spans[-1][1] + gap:
            spans[-1][1] = max(spans[-1][1], last)
        else:
            spans.append([first, last])
    outages = [Outage(before[1], after[0]) for before, after in pairwise(spans)]
    if spans and now - spans[-1][1] > gap:
        outages.append(Outage(spans[-1][1]))
    return outages


def intake_outage(runs: Iterable[tuple[datetime, datetime]], now: datetime, gap: timedelta) -> Outage | None:
    """Intake's latest outage (`intake_outages`), or None."""
    outages = intake_outages(runs, now, gap)
    return outages[-1] if outages else None


def blind_since(last_round: datetime | None, now: datetime, after: timedelta) -> Outage | None:
    """The clock's own outage still going on: no round of its watermark completed for longer than
    `after` (the broker or the database away, the process stalled), so it cannot know whether
    touches could be logged since its last one. None: a round is recent (or none ran yet)."""
    if last_round is None or now - last_round <= after:
        return None
    return Outage(last_round)


def held_watermark(seen: datetime | None, hold: InputHold) -> datetime | None:
    """The watermark the timer loop judges by: its inputs' (`seen`), no further than the hold."""
    if seen is None or hold.until is None:
        return seen
    return min(seen, hold.until)


@dataclass(frozen=True)
class ClockRules:
    """Operational tolerances of the clock (from settings)."""

    # A breach leaving this long or longer after its deadline carries root cause system_delay.
    tolerance: timedelta = timedelta(seconds=60)
    # How long after a deadline the clock waits for its watermark to confirm it before judging
    # anyway. Longer than the tolerance: a touch accepted in time but held up by an outage and
    # the recovery after it (reconnect backoff, a backlog) still meets the SLA when it arrives.
    confirm_wait: timedelta = timedelta(seconds=300)
    # How far a sender's occurred_at may precede intake's acceptance and still date the touch.
    touch_skew: timedelta = TOUCH_SKEW
    # The latest outages of the clock's inputs (the watermark's hold): breaches due in them are
    # system_delay.
    input_outages: tuple[Outage, ...] = ()


# --- The watermark: how far the clock has consumed its inputs ---------------------------------
# A mark (offset, instant) on an input partition says "every record appended to this partition
# before `instant` lies below `offset`". Two kinds: an empty fetch at offset E issued at t gives
# (E, t); a record at offset o stamped s gives (o + 1, s). Once the clock's consumer has committed
# past a mark's offset, the partition is consumed up to its instant.


@dataclass(frozen=True)
class PartitionMarks:
    floor: datetime | None = None  # the best instant already consumed
    pending: tuple[tuple[int, datetime], ...] = ()  # marks beyond the consumed offset


def add_marks(state: PartitionMarks, marks: Iterable[tuple[int, datetime]]) -> PartitionMarks:
    """Keep only useful marks: one is useless when another, at a lower-or-equal offset (reached no
    later), has an equal-or-later instant (says at least as much)."""
    kept: list[tuple[int, datetime]] = []
    for offset, instant in sorted({*state.pending, *marks}, key=lambda m: (m[0], -m[1].timestamp())):
        if not kept or instant > kept[-1][1]:
            kept.append((offset, instant))
    if state.floor is not None:
        kept = [m for m in kept if m[1] > state.floor]
    return replace(state, pending=tuple(kept))


def consume(state: PartitionMarks, consumed_offset: int) -> PartitionMarks:
    """The consumer committed up to `consumed_offset` (the next offset it will read)."""
    reached = [t for o, t in state.pending if o <= consumed_offset]
    floor = max([*reached, *([state.floor] if state.floor else [])], default=None)
    return PartitionMarks(floor, tuple(m for m in state.pending if m[0] > consumed_offset))


def inputs_seen_until(partitions: Mapping[object, PartitionMarks]) -> datetime | None:
    """Every input partition is consumed up to this instant (None: not yet known for some)."""
    floors = [p.floor for p in partitions.values()]
    if not floors or any(f is None for f in floors):
        return None
    return min(f for f in floors if f is not None)


def upstream_settled(checked_at: datetime, oldest_unpublished: datetime | None,
                     commit_allowance: timedelta) -> datetime:
    """Producers publish from their outbox: everything they stamped before this instant was on the
    broker when `checked_at` was read. A transaction stamps its events up to `commit_allowance`
    before it commits, so it may still be invisible at `checked_at`."""
    bound = checked_at if oldest_unpublished is None else min(checked_at, oldest_unpublished)
    return bound - commit_allowance


def settled_watermark(checks: Iterable[tuple[datetime, datetime]], broker_seen: datetime | None) -> datetime | None:
    """Combine upstream checks (checked_at, settled) with the broker side: a check counts once the
    broker has been consumed past the moment it was made (what it saw published is then handled)."""
    if broker_seen is None:
        return None
    usable = [settled for checked_at, settled in checks if checked_at <= broker_seen]
    return max(usable, default=None)
