"""Reporting's pure rules: how each event changes a lead's facts and an SLA timer's row.
No I/O; `projections.py` loads the rows, calls these, and writes the results."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from shared.business_hours import BusinessCalendar
from shared.config import (
    ENGAGEMENT_OUTCOMES,
    TOUCH_SKEW,
    TOUCH_TYPES,
    is_history,
    keeps_owner,
    touch_time,
)
from shared.events import (
    PAYLOADS,
    ActivityRecorded,
    LeadAssigned,
    LeadDequeued,
    LeadMerged,
    LeadQueued,
    LeadReassigned,
    LeadReceived,
    LeadUpdated,
    Payload,
    SlaBreached,
    SlaCancelled,
    SlaMet,
    SlaPaused,
    SlaResumed,
    SlaStarted,
    SlaWarning,
    utc_iso,
    withdraws_consent,
)


class Event(Protocol):
    """What the fold reads of an event: a `CloudEvent`, or a row of the timeline in a rebuild."""

    @property
    def type(self) -> str: ...
    @property
    def time(self) -> datetime: ...
    @property
    def data(self) -> dict[str, Any]: ...

# Later lifecycle stages never fall back to earlier ones when events arrive out of order.
# nurture: the follow-up cadence ran out without a disposition (CONTRACT: cadence_exhausted); a
# disposition made later still wins. opted_out: the buyer asked not to be contacted; nothing after
# that changes what the lead is (no timer runs, nothing escalates).
STATUS_RANK = {"received": 0, "queued": 1, "assigned": 2, "responded": 3, "nurture": 4, "dispositioned": 5,
               "opted_out": 6}
TERMINAL = frozenset({"met", "breached", "cancelled"})
# sla.* payload class -> the timer state it leaves.
SLA_STATE: dict[type[Payload], str] = {SlaStarted: "open", SlaWarning: "open", SlaResumed: "open",
                                       SlaPaused: "paused", SlaMet: "met", SlaBreached: "breached",
                                       SlaCancelled: "cancelled"}


def payload_class(event: Event) -> type[Payload] | None:
    """The payload class of the event's type; None for a type the contract does not name."""
    return PAYLOADS.get(event.type)


def _at(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def _earlier(current: str | None, candidate: str) -> bool:
    return current is None or _at(candidate) < _at(current)  # type: ignore[operator]


def is_touch(data: dict[str, Any]) -> bool:
    # An email opened or clicked is the buyer's engagement, no touch (shared.config.ENGAGEMENT_OUTCOMES).
    return data.get("type") in TOUCH_TYPES and data.get("outcome") not in ENGAGEMENT_OUTCOMES


def _before_lead(s: dict[str, Any], at: str) -> bool:
    """A touch made before the lead came (a CRM back-filling its history), as the SLA clock sees
    it: no response to the lead (its `first_response_at` would precede its receipt)."""
    received = _at(s.get("received_at"))
    return received is not None and is_history(_at(at), received)  # type: ignore[arg-type]


# (the lead's facts, an activity's data) -> whether it answers the lead's first response.
Answers = Callable[[dict[str, Any], dict[str, Any]], bool]


class PolicyRules(Protocol):
    """The SLA policies as the fold reads them (see `handlers.PolicyRules`)."""

    def __call__(self, timer: dict[str, Any]) -> BusinessCalendar | None: ...
    def answers(self, lead: dict[str, Any], activity: dict[str, Any]) -> bool: ...
    def team_of(self, owner_id: str) -> str | None: ...


def fold(state: dict[str, Any], event: Event) -> dict[str, Any]:
    """The lead's facts after `event` (timestamps as RFC 3339 strings, but `updated_at`: the
    event's instant as it is, only ever written, never compared; formatting it for every event
    was a fifth of a rebuild's fold). Unknown types only touch `updated_at`: they are in the
    timeline, and nothing here breaks on them."""
    s = _own_copy(state)
    _fold(s, event, payload_class(event))
    return s


def _own_copy(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of the lead's facts to fold into, with the facts every lead has. A shallow copy is
    enough: the projectors replace `sla` and `profile`, never change them in place, so the old
    state stays as it was."""
    s = dict(state)
    if not s.get("sla"):
        s["sla"] = {}
    if not s.get("profile"):
        s["profile"] = {}
    s.setdefault("status", "received")
    s.setdefault("reassignments", 0)
    if "breached" not in s:  # else as SLA events left it: nothing else changes it
        s["breached"] = any(entry.get("state") == "breached" for entry in s["sla"].values())
    return s


def _fold(s: dict[str, Any], event: Event, kind: type[Payload] | None,
          answers: Answers | None = None, touch_skew: timedelta = TOUCH_SKEW) -> None:
    """`fold` into an own copy (`_own_copy`), in place. `answers` judges first responses (any
    touch without one); `touch_skew` dates them as the SLA clock does (`touch_time`)."""
    if kind is ActivityRecorded:
        _activity(s, event.data, event, answers, touch_skew)
    else:
        projector = PROJECTORS.get(kind)  # type: ignore[arg-type]
        if projector is not None:
            projector(s, event.data, event)
    s["updated_at"] = event.time


def _advance(s: dict[str, Any], status: str) -> None:
    """Later lifecycle stages win, whatever order the events came in."""
    if STATUS_RANK[status] >= STATUS_RANK.get(s.get("status") or "received", 0):
        s["status"] = status


# How one event type changes the lead's facts (a fresh shallow copy): (facts, data, event).
Projector = Callable[[dict[str, Any], dict[str, Any], Event], None]


# The lead's facts as lead.received carries them (the lead's `profile`).
PROFILE_FIELDS = ("contact", "company", "intent", "score", "consent", "contactable", "missing_fields",
                  "external_id")


def _received(s: dict[str, Any], d: dict[str, Any], event: Event) -> None:
    s.update(source=d["source"], tier=d["tier"], received_at=d["received_at"])
    merged = (s.get("profile") or {}).get(MERGED_IDS)
    s["profile"] = {k: d.get(k) for k in PROFILE_FIELDS}
    if merged:
        s["profile"][MERGED_IDS] = merged
    # Received without consent to contact: opted out from the start (never timed, as by an opt-out).
    _advance(s, "opted_out" if (d.get("consent") or {}).get("contact") is False else "received")


MERGED_IDS = "merged_external_ids"


def _merged(s: dict[str, Any], d: dict[str, Any], event: Event) -> None:
    """A repeat merged into the lead: the sender's own id for the repeat (its record of the second
    form fill) finds the lead in `GET /v1/leads?external_id=`, as it does for the sender's touches."""
    external_id = (d.get("duplicate_submission") or {}).get("external_id")
    profile = s.get("profile") or {}
    known = profile.get(MERGED_IDS) or []
    if external_id is None or str(external_id) in known or str(external_id) == profile.get("external_id"):
        return
    s["profile"] = {**profile, MERGED_IDS: [*known, str(external_id)]}  # replaced, never changed in place


def _updated(s: dict[str, Any], d: dict[str, Any], event: Event) -> None:
    """A PATCH's corrections, a repeat's raised intent, an opt-out's consent: the profile reads as
    intake now holds the lead (the timeline keeps what was received)."""
    if d.get("tier"):
        s["tier"] = d["tier"]
    profile = copy.deepcopy(s["profile"])  # replaced, never changed in place (see `_own_copy`)
    for path, change in (d.get("changed") or {}).items():
        *parents, name = path.split(".")
        if (parents[0] if parents else name) not in PROFILE_FIELDS:
            continue  # attributes and the like: kept in the timeline only
        node = profile
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[name] = change.get("new") if isinstance(change, dict) else change
    if "contactable" in d:
        profile["contactable"] = d["contactable"]
    if d.get("missing_fields") is not None:
        profile["missing_fields"] = d["missing_fields"]
    s["profile"] = profile
    if withdraws_consent(d.get("reason"), d.get("changed") or {}):  # an opt-out, or consent withdrawn by a PATCH
        _advance(s, "opted_out")


def _assigned(s: dict[str, Any], d: dict[str, Any], event: Event) -> None:
    if (d.get("assignment_no") or 1) > 1:
        # Handed out of the queue after being taken from its owner (lead.queued from_owner_id): the
        # lead changed hands as a reassignment does.
        s["reassignments"] = (s.get("reassignments") or 0) + 1
    _assign(s, d, event, first=True)
    _advance(s, "assigned")


def _reassigned(s: dict[str, Any], d: dict[str, Any], event: Event) -> None:
    s["reassignments"] = (s.get("reassignments") or 0) + 1
    _assign(s, d, event, first=False)
    _advance(s, "assigned")


def _queued(s: dict[str, Any], d: dict[str, Any], event: Event) -> None:
    at = utc_iso(event.time)
    if _earlier(s.get("queued_at"), at):
        s["queued_at"] = at
    number = d.get("assignment_no")
    if d.get("from_owner_id") and number is not None and number > (s.get("assignment_no") or 0):
        # Taken from its owner into the queue: nobody's until the hand-out (same number) comes,
        # and waiting again (a lead list filtered by status `queued` shows it), unless worked.
        s.update(assignment_no=number, owner_id=None)
        if s.get("status") == "assigned":
            s["status"] = "queued"
    _advance(s, "queued")


def _dequeued(s: dict[str, Any], d: dict[str, Any], event: Event) -> None:
    # The end of the lead's first stay, as `queued_at` is its start: a later stay (its owner went
    # out of office) must not stretch the time in queue over the days it spent with that owner.
    at = utc_iso(event.time)
    if _earlier(s.get("dequeued_at"), at):
        s["dequeued_at"] = at


def _sla_projector(kind: type[Payload]) -> Projector:
    """How an `sla.*` event of `kind` changes the lead's summary of that timer (metric -> state,
    due, ...): a projector per class, so the fold looks the state up once, not per event."""
    state = SLA_STATE[kind]
    warning = kind is SlaWarning
    starts = kind is SlaStarted
    cancels = kind is SlaCancelled

    def project(s: dict[str, Any], d: dict[str, Any], event: Event) -> None:
        metric = d.get("metric")
        if not metric:
            return
        entry = dict(s["sla"].get(metric) or {})
        if starts and _starts_anew(entry, d):
            entry = {}  # the metric's next timer (a policy change's, a follow-up's): not the ended one's state
        for key in _SUMMARY_FIELDS:
            value = d.get(key)
            if value is not None:
                entry[key] = value
        if warning:
            entry["last_warning_percent"] = d.get("percent")
        if entry.get("state") not in TERMINAL:
            entry["state"] = state
        s["sla"] = {**s["sla"], metric: entry}
        if entry["state"] == "breached":  # final: once a timer breached, the lead stays breached
            s["breached"] = True
        if cancels and d.get("reason") == "cadence_exhausted":
            _advance(s, "nurture")

    return project


# What an `sla.*` event copies into the lead's summary of its timer, when it carries it.
_SUMMARY_FIELDS = ("sla_id", "policy_id", "started_at", "due_at", "breached_at", "root_cause", "met_at", "reason")


def _starts_anew(ended: dict[str, Any], d: dict[str, Any]) -> bool:
    """Whether an `sla.started` opens another timer than the one that `ended` (met, breached or
    cancelled): another sla_id (a policy change replaced it), or the same one started again at
    another instant (the next follow-up of a next_action cadence keeps its sla_id). A late
    `started` of the timer that ended is neither."""
    if ended.get("state") not in TERMINAL:
        return False
    return d.get("sla_id") != ended.get("sla_id") or _at(d.get("started_at")) != _at(ended.get("started_at"))


# The lead facts an assignment carries (CONTRACT: to act before lead.received), taken only while
# intake's own word on them has not come: lead.received and lead.updated set them for good.
_CARRIED_FACTS = ("tier", "source", "received_at")


def _assign(s: dict[str, Any], d: dict[str, Any], event: Event, *, first: bool) -> None:
    for key in _CARRIED_FACTS:
        if s.get(key) is None and d.get(key) is not None:
            s[key] = d[key]
    number = d.get("assignment_no") or 1
    owner = d.get("owner_id") or d.get("to_owner_id")
    at = d.get("assigned_at") or utc_iso(event.time)
    # The highest assignment number is the current owner, whatever order the events came in.
    if number >= (s.get("assignment_no") or 0):
        s.update(assignment_no=number, owner_id=owner, assigned_at=at)
        if "team_id" in d:
            s["team_id"] = d["team_id"]
    if first and (s.get("first_owner_id") is None or number == 1):
        s.update(first_owner_id=owner, first_assign_method=d.get("method"), first_assigned_at=at,
                 first_team_id=d.get("team_id"))
        s.setdefault("team_id", d.get("team_id"))


def _activity(s: dict[str, Any], d: dict[str, Any], event: Event, answers: Answers | None = None,
              touch_skew: timedelta = TOUCH_SKEW) -> None:
    at = d["occurred_at"]
    if d.get("disposition"):
        if s.get("dispositioned_at") is None or not _earlier(s["dispositioned_at"], at):
            s.update(disposition_status=d["disposition"].get("status"),
                     disposition_reason=d["disposition"].get("reason"), dispositioned_at=at)
        _advance(s, "dispositioned")
    # A call that carries its disposition is a touch too, as the SLA clock judges it.
    if is_touch(d) and not _before_lead(s, at) and (answers is None or answers(s, d)):
        # A first response as the SLA clock judges it: what the lead's policy counts (an unanswered
        # call may be a cadence attempt only), not any touch; and made when the clock dates it, at
        # most `touch_skew` before intake accepted it (a CRM syncing its calls an hour late).
        counted = utc_iso(touch_time(_at(at), event.time, event.time, touch_skew))  # type: ignore[arg-type]
        if _earlier(s.get("first_response_at"), counted):
            s.update(first_response_at=counted, first_touch_actor=d.get("actor"))
        _advance(s, "responded")
    if d.get("type") == "meeting" and d.get("outcome") == "booked" and _earlier(s.get("meeting_booked_at"), at):
        s["meeting_booked_at"] = at


def fold_timer(timer: dict[str, Any] | None, event: Event) -> dict[str, Any]:
    """One SLA timer's row after an `sla.*` event. A final state (met, breached, cancelled)
    is never reopened by a `started` or `warning` that arrives late."""
    return _fold_timer(timer, event, payload_class(event))


def _fold_timer(timer: dict[str, Any] | None, event: Event, kind: type[Payload] | None) -> dict[str, Any]:
    d = event.data
    t = dict(timer or {"sla_id": d["sla_id"], "lead_id": d["lead_id"], "metric": d["metric"], "state": "open"})
    for key in _TIMER_FIELDS:
        value = d.get(key)
        if value is not None:
            t[key] = value
    for key in _TIMER_INSTANTS:
        value = d.get(key)
        if value is not None:
            t[key] = _at(value)
    if d.get("root_cause"):
        t["root_cause"] = d["root_cause"]
    if kind is SlaCancelled:
        t["cancel_reason"] = d.get("reason")
    clock = d.get("timer")
    if isinstance(clock, dict) and clock.get("calendar"):  # as the SLA clock timed it
        t["calendar"], t["timezone"] = clock["calendar"], clock.get("timezone")
        t["paused_seconds"], t["paused_at"] = clock.get("paused_seconds"), _at(clock.get("paused_at"))
    state = SLA_STATE.get(kind)  # type: ignore[arg-type]
    if state is not None and t.get("state") not in TERMINAL:
        t["state"] = state
    t["updated_at"] = event.time
    return t


_TIMER_FIELDS = ("policy_id", "tier", "owner_id")
LIVE = frozenset({"open", "paused"})
_TIMER_INSTANTS = ("started_at", "due_at", "met_at", "breached_at")


def _held_by_current_owner(timer: dict[str, Any], lead: dict[str, Any], event: Event) -> dict[str, Any]:
    """A running timer's owner as the SLA clock holds it: an `sla.*` event names the owner when it
    was sent, and leads.sla is read apart from leads.routing, so one sent before the lead's current
    assignment (a warning, a start on receipt) may be folded after it and must not hand the timer
    back to the previous owner."""
    assigned_at = _at(lead.get("assigned_at"))
    if (timer.get("state") in LIVE and lead.get("owner_id") and assigned_at is not None
            and event.time < assigned_at and timer.get("owner_id") != lead["owner_id"]
            and not keeps_owner(timer["state"], timer.get("due_at"), assigned_at)):
        timer["owner_id"] = lead["owner_id"]
    return timer


def _team_of(lead: dict[str, Any], owner_id: str | None, rules: PolicyRules) -> str | None:
    """The team the lead was assigned in to `owner_id`, as far as the lead's facts tell: its
    current owner's or its first owner's; for an owner in between, the first team the
    configuration lists them in."""
    if owner_id is None:
        return None
    if owner_id == lead.get("owner_id"):
        return lead.get("team_id")
    if owner_id == lead.get("first_owner_id"):
        return lead.get("first_team_id")
    return rules.team_of(owner_id)


def _in_owner_team(timer: dict[str, Any], before: dict[str, Any] | None, lead: dict[str, Any],
                   rules: PolicyRules) -> dict[str, Any]:
    """A timer counts for the team of the owner who held it (the SLA report by team), not the
    lead's team now: a lead reassigned to another team leaves its judged SLAs where they were. Kept
    while the owner stays; found anew when the owner changes (unknown: none)."""
    if before is None or timer.get("owner_id") != before.get("owner_id") or timer.get("team_id") is None:
        timer["team_id"] = _team_of(lead, timer.get("owner_id"), rules)
    return timer


def with_response(timer: dict[str, Any], first_touch_at: datetime | None,
                  calendar: BusinessCalendar | None) -> dict[str, Any]:
    """Time to first response for a first_response timer, late answers included: the met time
    when the SLA was met, else the first touch after the clock started (a breached lead that is
    called an hour late counts as an hour, not as nothing); none for a cancelled timer."""
    return _respond(dict(timer), first_touch_at, calendar)


def _respond(t: dict[str, Any], first_touch_at: datetime | None, calendar: BusinessCalendar | None) -> dict[str, Any]:
    """`with_response` on a row of the fold's own (a fresh copy): changed in place."""
    if t["metric"] != "first_response" or t.get("started_at") is None:
        return t
    started = t["started_at"]
    if t.get("state") == "met" and t.get("met_at") is not None:
        responded = t["met_at"]
    elif t.get("state") == "cancelled":
        # Ended unanswered (a qualifying touch would have met it first): a later touch answers the
        # timer that replaced it (a tier change's successor, from the same clock start), or no SLA
        # at all (opted out, disqualified, merged); counted here it was the same answer twice.
        responded = None
    elif first_touch_at is not None and not is_history(first_touch_at, started):  # as sla_clock judges it
        responded = first_touch_at
    else:
        responded = None
    wall = None if responded is None else max((responded - started).total_seconds(), 0.0)
    if responded == t.get("responded_at") and wall == t.get("ttfr_seconds") and "ttfr_business_seconds" in t:
        return t  # same start, same answer: the business time stands (it costs a calendar walk)
    t["responded_at"], t["ttfr_seconds"] = responded, wall
    t["ttfr_business_seconds"] = None if responded is None else _business(t, started, responded, calendar)
    return t


def _business(t: dict[str, Any], started: datetime, responded: datetime, calendar: BusinessCalendar | None) -> float:
    """Business time from the start to the response, less the time the timer spent paused (the
    SLA clock's `elapsed_seconds`: a pause stops the clock), up to the response if it came while
    paused."""
    def elapsed(since: datetime, until: datetime) -> float:
        return calendar.elapsed(since, until) if calendar else max((until - since).total_seconds(), 0.0)

    paused = t.get("paused_seconds") or 0.0
    paused_at = t.get("paused_at")
    if paused_at is not None and responded > paused_at:
        paused += elapsed(paused_at, responded)
    return max(elapsed(started, responded) - paused, 0.0)


def fold_events(events: Iterable[Event], rules: PolicyRules, leads: dict[str, dict[str, Any]],
                timers: dict[str, dict[str, dict[str, Any]]],
                touch_skew: timedelta = TOUCH_SKEW) -> tuple[set[str], set[str]]:
    """The events in order, each on its lead (`event.subject`): `leads` (lead id -> facts) and
    `timers` (lead id -> sla id -> row) are updated in place; a lead is copied at its first event
    here and its later ones fold into that copy (a copy per event was a tenth of a rebuild's
    fold). An `sla.*` event changes its own timer; a touch every first_response timer of the
    lead (a late touch still answers a timer that already breached). `rules(timer)`
    gives the business calendar the timer was timed by; `touch_skew` dates touches as the SLA
    clock does (LEADSLA_SLA_TOUCH_SKEW_SECONDS). The live projection (a fetched batch) and the rebuild
    (the whole timeline) both fold through here, so they cannot disagree. Returns the ids of the
    leads and of the timers that changed."""
    changed_leads: set[str] = set()
    changed_timers: set[str] = set()
    folding: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}  # lead id -> (copy, timers)
    for event in events:
        lead_id = event.subject  # type: ignore[attr-defined]
        found = folding.get(lead_id)
        if found is None:
            known = leads.get(lead_id)
            lead = leads[lead_id] = _own_copy(known if known is not None else {"lead_id": lead_id})
            own = timers.get(lead_id)
            if own is None:
                own = timers[lead_id] = {}
            found = folding[lead_id] = lead, own
            changed_leads.add(lead_id)
        lead, own = found
        kind = PAYLOADS.get(event.type)
        _fold(lead, event, kind, rules.answers, touch_skew)
        d = event.data
        if kind in SLA_STATE and d.get("sla_id") and d.get("metric"):
            current = own.get(d["sla_id"])
            if kind is SlaStarted and current is not None and _starts_anew(current, d):
                # A cadence's next follow-up: the step that ended keeps a row of its own (its met
                # or breach counts), and the sla_id's row follows the new step.
                done = {**current, "sla_id": f"{current['sla_id']}@{utc_iso(_at(current['started_at']))}"}
                own[done["sla_id"]] = done
                changed_timers.add(done["sla_id"])
                current = None
            timer = _in_owner_team(_held_by_current_owner(_fold_timer(current, event, kind), lead, event),
                                   current, lead, rules)
            own[timer["sla_id"]] = _respond(timer, _at(lead.get("first_response_at")),
                                            rules(timer))
            changed_timers.add(timer["sla_id"])
        elif kind in (LeadAssigned, LeadReassigned, LeadQueued) and (
                lead.get("owner_id") or (kind is LeadQueued and d.get("from_owner_id"))):
            # The SLA clock hands the running timers to the lead's owner (sla_clock.owner_changed,
            # no sla.* event on the topic), or to nobody when the lead is taken back into the queue:
            # so does the read model, or the board and the per-owner reports keep chasing the
            # person the lead was taken from. As the clock, it leaves a timer already past its
            # deadline then with the owner who missed it. A timer judged before this assignment
            # arrived (leads.sla is read apart) learns its owner's team from it.
            for sla_id, timer in own.items():
                if (timer.get("state") in LIVE and timer.get("owner_id") != lead.get("owner_id")
                        and not keeps_owner(timer["state"], timer.get("due_at"), event.time)):
                    own[sla_id] = {**timer, "owner_id": lead.get("owner_id"), "team_id": lead.get("team_id")
                                   if lead.get("owner_id") else None}
                    changed_timers.add(sla_id)
                elif timer.get("team_id") is None and (team := _team_of(lead, timer.get("owner_id"), rules)) is not None:
                    own[sla_id] = {**timer, "team_id": team}
                    changed_timers.add(sla_id)
        elif kind is ActivityRecorded and is_touch(d):
            first_touch = _at(lead.get("first_response_at"))
            for sla_id, timer in own.items():
                if timer["metric"] == "first_response":
                    own[sla_id] = with_response(timer, first_touch, rules(timer))
                    changed_timers.add(sla_id)
    return changed_leads, changed_timers


# How each payload class changes the lead's facts; other types only move `updated_at`.
PROJECTORS: dict[type[Payload], Projector] = {
    LeadReceived: _received,
    LeadUpdated: _updated,
    LeadAssigned: _assigned,
    LeadReassigned: _reassigned,
    LeadQueued: _queued,
    LeadDequeued: _dequeued,
    LeadMerged: _merged,
    ActivityRecorded: _activity,
    **{cls: _sla_projector(cls) for cls in SLA_STATE},
}
