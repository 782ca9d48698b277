"""A reproducible week of leads, as the events the other services would publish, and an
independent recomputation of every report from those events (the reference the projected
read models are checked against)."""
from __future__ import annotations

import math
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.business_hours import BusinessCalendar
from shared.config import CalendarConfig
from shared.events import (
    TOPIC_INTAKE,
    TOPIC_NOTIFICATIONS,
    TOPIC_ROUTING,
    TOPIC_SLA,
    CloudEvent,
    utc_iso,
)

CONFIG = """
owners: [{id: alice}, {id: bob}, {id: carol}]
teams: [{id: sdr, members: [alice, bob]}, {id: ae, members: [carol]}]
routing: {rules: [{id: inbound, team: sdr}]}
calendars:
  office: {timezone: UTC, hours: {mon: ["09:00-17:00"], tue: ["09:00-17:00"], wed: ["09:00-17:00"],
           thu: ["09:00-17:00"], fri: ["09:00-17:00"]}}
sla_policies:
  - {id: fast, filter: {tiers: [A]}, metrics: {first_response: {target: 5m}},
     qualifying_touches: [email, sms, meeting, {type: call, outcomes: [connected]}]}
  - {id: office, filter: {tiers: [B]}, calendar: office, metrics: {first_response: {target: 1h}}}
  - {id: day, filter: {tiers: [C]}, metrics: {first_response: {target: 1d}}}
"""
OFFICE = BusinessCalendar(CalendarConfig(timezone="UTC", hours={d: ["09:00-17:00"] for d in
                                                               ("mon", "tue", "wed", "thu", "fri")}))
POLICY = {"A": ("fast", 300), "B": ("office", 3600), "C": ("day", 86400)}
TEAM = {"alice": "sdr", "bob": "sdr", "carol": "ae"}
# What answers a first response under each policy (CONFIG): "fast" takes a call only when
# connected; the others take the default touches (no chat).
DEFAULT_TOUCHES = {"call", "email", "meeting", "sms"}


def answers(policy: str, type_: str, outcome: str | None) -> bool:
    if policy == "fast":
        return type_ in {"email", "sms", "meeting"} or (type_ == "call" and outcome == "connected")
    return type_ in DEFAULT_TOUCHES


@dataclass
class Scenario:
    """Events in publish order, as (topic, event); `start`/`end` bound the scenario's period."""

    start: datetime
    end: datetime
    events: list[tuple[str, CloudEvent]] = field(default_factory=list)
    lead_ids: list[str] = field(default_factory=list)

    def add(self, topic: str, type_: str, lead_id: str, at: datetime, **data: Any) -> CloudEvent:
        event = CloudEvent(id=str(uuid.uuid4()), source="leadsla/test", type=type_, subject=lead_id, time=at,
                           data={"lead_id": lead_id, **{k: utc_iso(v) if isinstance(v, datetime) else v
                                                         for k, v in data.items()}})
        self.events.append((topic, event))
        return event


def build(seed: int, leads: int = 30) -> Scenario:
    """Two weeks starting on a Monday far from any other test's data, one lead every ~11 hours."""
    rnd = random.Random(seed)
    start = datetime(2031, 3, 3, tzinfo=UTC) + timedelta(weeks=rnd.randrange(0, 400))
    s = Scenario(start, start + timedelta(weeks=2))
    for i in range(leads):
        lead_id = f"rep-{seed}-{i:03d}"
        s.lead_ids.append(lead_id)
        tier, source = "ABC"[i % 3], ("web", "chat", "webinar")[i % 4 % 3]
        owner = ("alice", "bob", "carol")[i % 3 if i % 2 else (i + 1) % 3]
        received = start + timedelta(hours=11 * i, minutes=rnd.randrange(0, 50))
        s.add(TOPIC_INTAKE, "lead.received", lead_id, received, source=source, tier=tier,
              received_at=received, contact={"email": f"{lead_id}@example.com"}, company={},
              intent={"type": "inquiry"}, consent={}, contactable=True)
        assigned = received + timedelta(seconds=2)
        if i % 4 == 1:
            s.add(TOPIC_ROUTING, "lead.queued", lead_id, received + timedelta(seconds=1), tier=tier,
                  queue="default", reason="nobody eligible")
            assigned = received + timedelta(seconds=30 + 7 * i)
            s.add(TOPIC_ROUTING, "lead.dequeued", lead_id, assigned, tier=tier, queue="default", reason="owner free")
        s.add(TOPIC_ROUTING, "lead.assigned", lead_id, assigned, owner_id=owner, team_id=TEAM[owner],
              rule_id="inbound", method="fallback" if i % 5 == 4 else "round_robin", reason="rule", assignment_no=1,
              candidates=[], assigned_at=assigned, tier=tier)
        policy, target = POLICY[tier]
        sla_id = f"sla-{lead_id}"
        due = OFFICE.add(assigned, target) if policy == "office" else assigned + timedelta(seconds=target)
        timer = dict(sla_id=sla_id, metric="first_response", policy_id=policy, policy_version=1, owner_id=owner,
                     tier=tier, started_at=assigned, due_at=due)
        s.add(TOPIC_SLA, "sla.started", lead_id, assigned, **timer)
        toucher = owner if i % 7 else "bob"
        outcome = i % 5
        if outcome == 0:  # answered in time
            touch = assigned + min(timedelta(seconds=20 + 13 * i), (due - assigned) / 2)
            s.add(TOPIC_INTAKE, "activity.recorded", lead_id, touch, activity_id=f"a-{lead_id}", type="call",
                  actor=toucher, occurred_at=touch, outcome="connected")
            s.add(TOPIC_SLA, "sla.met", lead_id, touch, **timer, met_at=touch)
        elif outcome in (1, 2):  # breached; the first one is answered late anyway
            if outcome == 2:  # a touch that does not answer under the lead's policy, before the deadline
                tried = assigned + (due - assigned) / 3
                s.add(TOPIC_INTAKE, "activity.recorded", lead_id, tried, activity_id=f"t-{lead_id}",
                      **({"type": "call", "outcome": "no_answer"} if tier == "A" else {"type": "chat"}),
                      actor=toucher, occurred_at=tried)
            s.add(TOPIC_SLA, "sla.breached", lead_id, due, **timer, breached_at=due,
                  root_cause="owner_missed" if outcome == 1 else ("capacity", "no_owner")[i % 2])
            if outcome == 1:
                late = due + timedelta(minutes=10 + i)
                s.add(TOPIC_INTAKE, "activity.recorded", lead_id, late, activity_id=f"a-{lead_id}", type="email",
                      actor=toucher, occurred_at=late, outcome="sent")
        elif outcome == 4:
            s.add(TOPIC_SLA, "sla.cancelled", lead_id, assigned + timedelta(minutes=1), **timer, reason="disqualified")
        if i % 4 == 0:
            at = assigned + timedelta(hours=3)
            status, reason = (("qualified", None), ("disqualified", "no_budget"), ("disqualified", "spam"))[i % 12 // 4]
            s.add(TOPIC_INTAKE, "activity.recorded", lead_id, at, activity_id=f"d-{lead_id}", type="disposition",
                  actor=owner, occurred_at=at, disposition={"status": status, "reason": reason})
        if i % 7 == 3:
            at = assigned + timedelta(hours=2)
            s.add(TOPIC_INTAKE, "activity.recorded", lead_id, at, activity_id=f"m-{lead_id}", type="meeting",
                  actor=owner, occurred_at=at, outcome="booked")
        if i == 7:
            s.add(TOPIC_ROUTING, "lead.reassigned", lead_id, assigned + timedelta(hours=1), from_owner_id=owner,
                  to_owner_id="carol", reason="manual", assignment_no=2)
        if i == 0:  # a type nobody told reporting about: kept in the timeline, breaks nothing
            s.add(TOPIC_NOTIFICATIONS, "lead.frobnicated", lead_id, received, level=11)
    _add_replaced_timers(s, seed, start + timedelta(days=1, hours=3))
    return s


def _add_replaced_timers(s: Scenario, seed: int, at: datetime) -> None:
    """Two leads whose timers the SLA clock replaces, as it does: `cadence`'s next_action keeps
    one sla_id for every follow-up (the first met, the second breached), and `upgraded`'s
    first_response timer is cancelled by a policy change and its successor breaches."""
    for name in ("cadence", "upgraded"):
        lead_id = f"rep-{seed}-{name}"
        s.lead_ids.append(lead_id)
        s.add(TOPIC_INTAKE, "lead.received", lead_id, at, source="web", tier="A", received_at=at,
              contact={"email": f"{lead_id}@example.com"}, company={}, intent={"type": "inquiry"}, consent={},
              contactable=True)
        s.add(TOPIC_ROUTING, "lead.assigned", lead_id, at, owner_id="alice", team_id="sdr", rule_id="inbound",
              method="round_robin", reason="rule", assignment_no=1, candidates=[], assigned_at=at, tier="A")
    lead_id, touch = f"rep-{seed}-cadence", at + timedelta(minutes=1)
    first = dict(sla_id=f"sla-{lead_id}", metric="first_response", policy_id="fast", policy_version=1,
                 owner_id="alice", tier="A", started_at=at, due_at=at + timedelta(minutes=5))
    s.add(TOPIC_SLA, "sla.started", lead_id, at, **first)
    s.add(TOPIC_INTAKE, "activity.recorded", lead_id, touch, activity_id=f"a-{lead_id}", type="email",
          actor="alice", occurred_at=touch)
    s.add(TOPIC_SLA, "sla.met", lead_id, touch, **first, met_at=touch)
    follow_ups = f"na-{lead_id}"
    step1 = dict(sla_id=follow_ups, metric="next_action", policy_id="fast", policy_version=1, owner_id="alice",
                 tier="A", started_at=touch, due_at=touch + timedelta(hours=1))
    s.add(TOPIC_SLA, "sla.started", lead_id, touch, **step1)
    again = touch + timedelta(minutes=30)
    s.add(TOPIC_INTAKE, "activity.recorded", lead_id, again, activity_id=f"b-{lead_id}", type="email",
          actor="alice", occurred_at=again)
    s.add(TOPIC_SLA, "sla.met", lead_id, again, **step1, met_at=again)
    step2 = {**step1, "started_at": again, "due_at": again + timedelta(hours=1)}
    s.add(TOPIC_SLA, "sla.started", lead_id, again, **step2)
    s.add(TOPIC_SLA, "sla.breached", lead_id, step2["due_at"], **step2, breached_at=step2["due_at"],
          root_cause="owner_missed")

    lead_id = f"rep-{seed}-upgraded"
    old = dict(sla_id=f"sla-{lead_id}-day", metric="first_response", policy_id="day", policy_version=1,
               owner_id="alice", tier="C", started_at=at, due_at=at + timedelta(days=1))
    s.add(TOPIC_SLA, "sla.started", lead_id, at, **old)
    s.add(TOPIC_SLA, "sla.cancelled", lead_id, at + timedelta(seconds=5), **old, reason="policy_changed")
    new = {**old, "sla_id": f"sla-{lead_id}-fast", "policy_id": "fast", "tier": "A",
           "due_at": at + timedelta(minutes=5)}
    s.add(TOPIC_SLA, "sla.started", lead_id, at + timedelta(seconds=5), **new)
    s.add(TOPIC_SLA, "sla.breached", lead_id, new["due_at"], **new, breached_at=new["due_at"],
          root_cause="owner_missed")


# ---- the reference: reports recomputed from the events alone --------------------------------


def percentile_cont(values: list[float], q: float) -> float | None:
    """Postgres's percentile_cont: linear interpolation between the closest ranks."""
    if not values:
        return None
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 3)


def ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _at(v: str) -> datetime:
    return datetime.fromisoformat(v)


def _week(t: datetime) -> str:
    return (t - timedelta(days=t.weekday())).date().isoformat()


def facts(s: Scenario) -> tuple[dict[str, dict], dict[str, dict], list[dict]]:
    leads: dict[str, dict] = {}
    timers: dict[str, dict] = {}
    dispositions: list[dict] = []
    for _, e in s.events:
        d = e.data
        lead = leads.setdefault(e.subject, {"touches": [], "meetings": 0, "reassigned": 0})
        if e.type == "lead.received":
            lead.update(tier=d["tier"], source=d["source"], received=_at(d["received_at"]))
        elif e.type == "lead.assigned" and d["assignment_no"] == 1:
            lead.update(first_owner=d["owner_id"], method=d["method"], assigned=_at(d["assigned_at"]),
                        team=d["team_id"])
        elif e.type == "lead.reassigned":
            lead["reassigned"] += 1
        elif e.type == "lead.queued":
            lead["queued"] = e.time
        elif e.type == "lead.dequeued":
            lead["dequeued"] = e.time
        elif e.type == "activity.recorded":
            if d.get("disposition"):
                dispositions.append({"lead": e.subject, **d["disposition"], "at": _at(d["occurred_at"])})
            elif answers(POLICY[lead["tier"]][0], d["type"], d.get("outcome")):
                lead["touches"].append((_at(d["occurred_at"]), d.get("actor"), d["type"], d.get("outcome")))
            if d["type"] == "meeting" and d.get("outcome") == "booked":
                lead["meetings"] += 1
        elif e.type.startswith("sla.") and d["metric"] == "first_response":
            t = timers.setdefault(d["sla_id"], {"lead": e.subject, "state": "open"})
            t.update(policy=d["policy_id"], owner=d["owner_id"], tier=d["tier"], started=_at(d["started_at"]),
                     due=_at(d["due_at"]))
            kind = e.type.removeprefix("sla.")
            if kind in ("met", "breached", "cancelled"):
                t["state"] = kind
            if kind == "met":
                t["met_at"] = _at(d["met_at"])
            if kind == "breached":
                t.update(breached_at=_at(d["breached_at"]), root_cause=d["root_cause"])
    for t in timers.values():
        touches = sorted(leads[t["lead"]]["touches"])
        # A cancelled timer ended unanswered: a later touch is no response to it.
        responded = None if t["state"] == "cancelled" else t.get("met_at") or next(
            (at for at, *_ in touches if at >= t["started"] - timedelta(minutes=5)), None)
        t["ttfr"] = None if responded is None else (responded - t["started"]).total_seconds()
        calendar = OFFICE if t["policy"] == "office" else None
        t["ttfr_business"] = None if responded is None else (
            calendar.elapsed(t["started"], responded) if calendar else t["ttfr"])
    return leads, timers, dispositions


def expected_sla(s: Scenario, group_by: str) -> list[dict]:
    leads, timers, _ = facts(s)
    groups: dict[Any, list[dict]] = defaultdict(list)
    for t in timers.values():
        lead = leads[t["lead"]]
        key = {"tier": t["tier"], "owner": t["owner"], "team": lead.get("team"), "source": lead["source"],
               "policy": t["policy"], "week": _week(t["started"])}[group_by]
        groups[key].append(t)
    rows = []
    for key in sorted(groups, key=lambda k: (k is None, k)):
        ts = groups[key]
        count = {state: sum(1 for t in ts if t["state"] == state) for state in ("met", "breached", "cancelled")}
        ttfr = [t["ttfr"] for t in ts if t["ttfr"] is not None]
        business = [t["ttfr_business"] for t in ts if t["ttfr_business"] is not None]
        rows.append({group_by: key, "metric": "first_response", "started": len(ts), **count,
                     "open": len(ts) - sum(count.values()),
                     "compliance": ratio(count["met"], count["met"] + count["breached"]),
                     "ttfr_p50_seconds": percentile_cont(ttfr, 0.5), "ttfr_p90_seconds": percentile_cont(ttfr, 0.9),
                     "ttfr_business_p50_seconds": percentile_cont(business, 0.5),
                     "ttfr_business_p90_seconds": percentile_cont(business, 0.9)})
    return rows


def expected_routing(s: Scenario, group_by: str) -> list[dict]:
    leads, _, _ = facts(s)
    groups: dict[Any, list[dict]] = defaultdict(list)
    for lead in leads.values():
        key = {"tier": lead["tier"], "owner": lead["first_owner"], "team": lead["team"],
               "source": lead["source"], "week": _week(lead["received"])}[group_by]
        groups[key].append(lead)
    rows = []
    for key in sorted(groups, key=lambda k: (k is None, k)):
        ls = groups[key]
        touched = [lead for lead in ls if lead["touches"]]
        by_first = [lead for lead in touched if min(lead["touches"])[1] == lead["first_owner"]]
        fallback = sum(1 for lead in ls if lead["method"] == "fallback")
        queued = [lead for lead in ls if "queued" in lead]
        in_queue = [(lead["dequeued"] - lead["queued"]).total_seconds() for lead in queued]
        to_assign = [(lead["assigned"] - lead["received"]).total_seconds() for lead in ls]
        meetings = sum(1 for lead in ls if lead["meetings"])
        rows.append({group_by: key, "leads": len(ls), "assigned": len(ls), "touched": len(touched),
                     "touched_by_first_owner": len(by_first), "routing_success": ratio(len(by_first), len(touched)),
                     "fallback": fallback, "fallback_rate": ratio(fallback, len(ls)), "queued": len(queued),
                     "queue_rate": ratio(len(queued), len(ls)),
                     "time_in_queue_p50_seconds": percentile_cont(in_queue, 0.5),
                     "time_in_queue_p90_seconds": percentile_cont(in_queue, 0.9),
                     "time_to_assign_p50_seconds": percentile_cont(to_assign, 0.5),
                     "time_to_assign_p90_seconds": percentile_cont(to_assign, 0.9),
                     "reassigned": sum(1 for lead in ls if lead["reassigned"]),
                     "meetings_booked": meetings, "meeting_rate": ratio(meetings, len(ls))})
    return rows


def expected_dispositions(s: Scenario) -> list[dict]:
    leads, _, dispositions = facts(s)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for d in dispositions:
        groups[(leads[d["lead"]]["tier"], d["status"], d["reason"])].append(d)
    return [{"tier": tier, "status": status, "reason": reason, "dispositions": len(ds),
             "leads": len({d["lead"] for d in ds})}
            for (tier, status, reason), ds in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                      kv[0][2] is not None, kv[0][2] or ""))]


def expected_breaches(s: Scenario) -> list[dict]:
    counts: dict[tuple, int] = defaultdict(int)
    for _, e in s.events:  # a breach ends its timer (a next_action follow-up's own): one each
        if e.type == "sla.breached":
            counts[(e.data["tier"], e.data["metric"], e.data["root_cause"])] += 1
    totals: dict[tuple, int] = defaultdict(int)
    for (tier, metric, _), n in counts.items():
        totals[(tier, metric)] += n
    rows = [{"tier": tier, "metric": metric, "root_cause": cause, "breached": n, "share": ratio(n, totals[(tier, metric)])}
            for (tier, metric, cause), n in counts.items()]
    return sorted(rows, key=lambda r: (r["tier"], r["metric"], -r["breached"], r["root_cause"]))
