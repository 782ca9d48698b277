"""Read side: queries over the projected tables. Aggregates are computed by Postgres
(counts, `percentile_cont`); Python only names the columns."""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.events import utc_iso

from .domain import MERGED_IDS
from .tables import lead_state, timeline

# <group> -> SQL over `t` (an SLA timer) joined with `l` (its lead). Owner, team and policy are
# the timer's own: the person who held the clock, their team, and the promise it was measured against.
_TIMER_GROUP = {
    "tier": "coalesce(t.tier, l.tier)",
    "owner": "t.owner_id",
    "team": "t.team_id",
    "source": "l.source",
    "policy": "t.policy_id",
    "week": "to_char(date_trunc('week', t.started_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD')",
}
# Lead-level reports: the owner and team are the first ones the router picked (routing success is theirs).
_LEAD_GROUP = {
    "tier": "l.tier",
    "owner": "l.first_owner_id",
    "team": "l.first_team_id",
    "source": "l.source",
    "policy": "l.sla #>> '{first_response,policy_id}'",
    "week": "to_char(date_trunc('week', l.received_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD')",
}


@dataclass(frozen=True)
class Period:
    """[start, end): either side may be open."""

    start: datetime | None = None
    end: datetime | None = None

    def params(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end}


def _in_period(column: str) -> str:
    return (f"(CAST(:start AS timestamptz) IS NULL OR {column} >= :start)"
            f" AND (CAST(:end AS timestamptz) IS NULL OR {column} < :end)")


def _pct(expr: str, q: float) -> str:
    return f"round(CAST(percentile_cont({q}) WITHIN GROUP (ORDER BY {expr}) AS numeric), 3)"


def _ratio(num: str, den: str) -> str:
    return f"round(CAST({num} AS numeric) / NULLIF({den}, 0), 4)"


SLA_COLUMNS = ("metric", "started", "met", "breached", "open", "cancelled", "compliance",
               "ttfr_p50_seconds", "ttfr_p90_seconds", "ttfr_business_p50_seconds", "ttfr_business_p90_seconds")


async def sla_report(conn: AsyncConnection, period: Period, group_by: str, metric: str) -> list[dict[str, Any]]:
    """SLAs started in the period, per group: outcome counts, compliance (met over met+breached:
    open and cancelled timers are not judged yet, or never), and time to first response over
    every answered lead, late answers included."""
    g = _TIMER_GROUP[group_by]
    sql = f"""
        SELECT {g} AS grp, t.metric AS metric,
               count(*) AS started,
               count(*) FILTER (WHERE t.state = 'met') AS met,
               count(*) FILTER (WHERE t.state = 'breached') AS breached,
               count(*) FILTER (WHERE t.state IN ('open', 'paused')) AS open,
               count(*) FILTER (WHERE t.state = 'cancelled') AS cancelled,
               {_ratio("count(*) FILTER (WHERE t.state = 'met')",
                       "count(*) FILTER (WHERE t.state IN ('met', 'breached'))")} AS compliance,
               {_pct("t.ttfr_seconds", 0.5)} AS ttfr_p50_seconds,
               {_pct("t.ttfr_seconds", 0.9)} AS ttfr_p90_seconds,
               {_pct("t.ttfr_business_seconds", 0.5)} AS ttfr_business_p50_seconds,
               {_pct("t.ttfr_business_seconds", 0.9)} AS ttfr_business_p90_seconds
        FROM reporting.sla_timers t LEFT JOIN reporting.leads l ON l.lead_id = t.lead_id
        WHERE t.metric = :metric AND {_in_period("t.started_at")}
        GROUP BY 1, 2 ORDER BY 1 NULLS LAST, 2"""
    rows = await conn.execute(text(sql), {**period.params(), "metric": metric})
    return [_row(group_by, r, SLA_COLUMNS) for r in rows.mappings()]


ROUTING_COLUMNS = ("leads", "assigned", "touched", "touched_by_first_owner", "routing_success",
                   "fallback", "fallback_rate", "queued", "queue_rate", "time_in_queue_p50_seconds",
                   "time_in_queue_p90_seconds", "time_to_assign_p50_seconds", "time_to_assign_p90_seconds",
                   "reassigned", "meetings_booked", "meeting_rate")


async def routing_report(conn: AsyncConnection, period: Period, group_by: str) -> list[dict[str, Any]]:
    """Leads received in the period, per group: routing success (the first touch came from the
    first assigned owner, over leads touched), fallback and queue rates, time in queue and to
    assignment, reassignments, meeting-booked rate."""
    g = _LEAD_GROUP[group_by]
    first_owner_touched = "l.first_touch_actor IS NOT NULL AND l.first_touch_actor = l.first_owner_id"
    sql = f"""
        SELECT {g} AS grp,
               count(*) AS leads,
               count(*) FILTER (WHERE l.first_assigned_at IS NOT NULL) AS assigned,
               count(*) FILTER (WHERE l.first_response_at IS NOT NULL) AS touched,
               count(*) FILTER (WHERE {first_owner_touched}) AS touched_by_first_owner,
               {_ratio(f"count(*) FILTER (WHERE {first_owner_touched})",
                       "count(*) FILTER (WHERE l.first_response_at IS NOT NULL)")} AS routing_success,
               count(*) FILTER (WHERE l.first_assign_method = 'fallback') AS fallback,
               {_ratio("count(*) FILTER (WHERE l.first_assign_method = 'fallback')",
                       "count(*) FILTER (WHERE l.first_assigned_at IS NOT NULL)")} AS fallback_rate,
               count(*) FILTER (WHERE l.queued_at IS NOT NULL) AS queued,
               {_ratio("count(*) FILTER (WHERE l.queued_at IS NOT NULL)", "count(*)")} AS queue_rate,
               {_pct("extract(epoch FROM l.dequeued_at - l.queued_at)", 0.5)} AS time_in_queue_p50_seconds,
               {_pct("extract(epoch FROM l.dequeued_at - l.queued_at)", 0.9)} AS time_in_queue_p90_seconds,
               {_pct("extract(epoch FROM l.first_assigned_at - l.received_at)", 0.5)} AS time_to_assign_p50_seconds,
               {_pct("extract(epoch FROM l.first_assigned_at - l.received_at)", 0.9)} AS time_to_assign_p90_seconds,
               count(*) FILTER (WHERE l.reassignments > 0) AS reassigned,
               count(*) FILTER (WHERE l.meeting_booked_at IS NOT NULL) AS meetings_booked,
               {_ratio("count(*) FILTER (WHERE l.meeting_booked_at IS NOT NULL)", "count(*)")} AS meeting_rate
        FROM reporting.leads l
        WHERE l.received_at IS NOT NULL AND {_in_period("l.received_at")}
        GROUP BY 1 ORDER BY 1 NULLS LAST"""
    rows = await conn.execute(text(sql), period.params())
    return [_row(group_by, r, ROUTING_COLUMNS) for r in rows.mappings()]


DISPOSITION_COLUMNS = ("status", "reason", "dispositions", "leads")


async def dispositions_report(conn: AsyncConnection, period: Period, group_by: str) -> list[dict[str, Any]]:
    """Dispositions recorded in the period (by when they happened), per group, status and reason."""
    g = _LEAD_GROUP[group_by].replace("l.received_at", "CAST(e.data ->> 'occurred_at' AS timestamptz)")
    sql = f"""
        SELECT {g} AS grp, e.data #>> '{{disposition,status}}' AS status,
               e.data #>> '{{disposition,reason}}' AS reason,
               count(*) AS dispositions, count(DISTINCT e.lead_id) AS leads
        FROM reporting.timeline e LEFT JOIN reporting.leads l ON l.lead_id = e.lead_id
        WHERE e.type = 'activity.recorded' AND jsonb_typeof(e.data -> 'disposition') = 'object'
          AND {_in_period("CAST(e.data ->> 'occurred_at' AS timestamptz)")}
        GROUP BY 1, 2, 3 ORDER BY 1 NULLS LAST, 2, 3 NULLS FIRST"""
    rows = await conn.execute(text(sql), period.params())
    return [_row(group_by, r, DISPOSITION_COLUMNS) for r in rows.mappings()]


BREACH_COLUMNS = ("metric", "root_cause", "breached", "share")


async def breaches_report(conn: AsyncConnection, period: Period, group_by: str,
                          metric: str | None) -> list[dict[str, Any]]:
    """Breaches in the period (by breach time), per group, metric and root cause; `share` is the
    cause's part of that group's breaches of that metric."""
    g = _TIMER_GROUP[group_by].replace("t.started_at", "t.breached_at")
    sql = f"""
        SELECT grp, metric, root_cause, breached,
               round(CAST(breached AS numeric) / sum(breached) OVER (PARTITION BY grp, metric), 4) AS share
        FROM (SELECT {g} AS grp, t.metric, coalesce(t.root_cause, 'unknown') AS root_cause, count(*) AS breached
              FROM reporting.sla_timers t LEFT JOIN reporting.leads l ON l.lead_id = t.lead_id
              WHERE t.state = 'breached' AND (CAST(:metric AS text) IS NULL OR t.metric = :metric)
                AND {_in_period("t.breached_at")}
              GROUP BY 1, 2, 3) per_cause
        ORDER BY 1 NULLS LAST, 2, 4 DESC, 3"""
    rows = await conn.execute(text(sql), {**period.params(), "metric": metric})
    return [_row(group_by, r, BREACH_COLUMNS) for r in rows.mappings()]


def _row(group_by: str, r: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    return {group_by: r["grp"], **{c: _plain(r[c]) for c in columns}}


def _plain(value: Any) -> Any:
    # Postgres numerics arrive as Decimal: JSON and CSV want plain numbers.
    if value is not None and not isinstance(value, int | float | str | bool):
        return float(value)
    return value


def report_columns(group_by: str, columns: tuple[str, ...]) -> list[str]:
    return [group_by, *columns]


# ---- one lead, and the list --------------------------------------------------------------------


async def lead_with_timeline(conn: AsyncConnection, lead_id: str) -> dict[str, Any] | None:
    state = (await conn.execute(select(lead_state).where(lead_state.c.lead_id == lead_id))).mappings().first()
    if state is None:
        return None
    events = (await conn.execute(
        select(timeline).where(timeline.c.lead_id == lead_id).order_by(timeline.c.time, timeline.c.position)
    )).mappings().all()
    lead = {k: utc_iso(v) if isinstance(v, datetime) else v for k, v in state.items()}
    if isinstance(lead.get("sla"), dict):
        lead["sla"] = {metric: {**entry, "state": shown_state(entry.get("state"))} if isinstance(entry, dict) else entry
                       for metric, entry in lead["sla"].items()}
    return {
        "lead": lead,
        "timeline": [
            {"time": utc_iso(e["time"]), "type": e["type"], "event_id": e["event_id"], "source": e["source"],
             "correlation_id": e["correlation_id"], "causation_id": e["causation_id"], "data": e["data"]}
            for e in events
        ],
    }


def shown_state(state: str | None) -> str | None:
    """A timer's state in the API's words, as the SLA clock shows it (CONTRACT: running | paused |
    met | breached | cancelled); the read model keeps `open` for a running one (`open` is also the
    SLA report's column of running and paused timers)."""
    return "running" if state == "open" else state


LIST_FIELDS = ("lead_id", "status", "source", "tier", "owner_id", "team_id", "received_at", "assigned_at",
               "first_response_at", "breached", "disposition_status", "disposition_reason", "updated_at")


@dataclass(frozen=True)
class LeadFilter:
    status: str | None = None
    owner_id: str | None = None
    team_id: str | None = None
    tier: str | None = None
    source: str | None = None
    breached: bool | None = None
    external_id: str | None = None  # the sender's own id for the lead (index: migration 0022)
    period: Period = Period()


class BadCursor(ValueError):
    pass


def encode_cursor(received_at: datetime, lead_id: str) -> str:
    raw = json.dumps([utc_iso(received_at), lead_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        received, lead_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(received), str(lead_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadCursor("not a cursor this API returned") from exc


async def list_leads(conn: AsyncConnection, f: LeadFilter, limit: int,
                     cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first (by received time, then id); keyset pagination, so pages stay stable while
    new leads arrive at the top."""
    l = lead_state.c  # noqa: E741
    external_id = l.profile["external_id"].astext
    q = select(*(getattr(l, name) for name in LIST_FIELDS), l.sla, external_id.label("external_id")).where(
        l.received_at.is_not(None))
    if f.external_id is not None:  # the lead's own, or a repeat's merged into it (migrations 0022, 0025)
        q = q.where(or_(external_id == f.external_id, l.profile[MERGED_IDS].contains([f.external_id])))
    for column, value in (("status", f.status), ("owner_id", f.owner_id), ("team_id", f.team_id),
                          ("tier", f.tier), ("source", f.source), ("breached", f.breached)):
        if value is not None:
            q = q.where(getattr(l, column) == value)
    if f.period.start is not None:
        q = q.where(l.received_at >= f.period.start)
    if f.period.end is not None:
        q = q.where(l.received_at < f.period.end)
    if cursor:
        received, lead_id = decode_cursor(cursor)
        q = q.where((l.received_at < received) | ((l.received_at == received) & (l.lead_id < lead_id)))
    rows = (await conn.execute(q.order_by(l.received_at.desc(), l.lead_id.desc()).limit(limit + 1))).mappings().all()
    page = rows[:limit]
    leads = []
    for r in page:
        lead = {k: utc_iso(r[k]) if isinstance(r[k], datetime) else r[k] for k in LIST_FIELDS}
        lead["external_id"] = r["external_id"]
        lead["sla"] = {metric: shown_state(entry.get("state")) for metric, entry in (r["sla"] or {}).items()}
        leads.append(lead)
    next_cursor = encode_cursor(page[-1]["received_at"], page[-1]["lead_id"]) if len(rows) > limit else None
    return leads, next_cursor


async def overdue_timer_counts(conn: AsyncConnection, due_before: datetime) -> list[tuple[str, str, int]]:
    """(metric, tier, count) of timers still open although due before `due_before`."""
    rows = await conn.execute(text("""
        SELECT t.metric, coalesce(t.tier, l.tier, 'unknown') AS tier, count(*) AS overdue
        FROM reporting.sla_timers t LEFT JOIN reporting.leads l ON l.lead_id = t.lead_id
        WHERE t.state = 'open' AND t.due_at < :due_before
        GROUP BY 1, 2 ORDER BY 1, 2"""), {"due_before": due_before})
    return [(r.metric, r.tier, r.overdue) for r in rows]


# ---- the board --------------------------------------------------------------------------------


async def board_data(conn: AsyncConnection, now: datetime, open_limit: int = 25,
                     breach_limit: int = 50) -> dict[str, Any]:
    """Open timers nearest to breach, today's breaches (UTC day), and 7-day compliance by tier,
    with how many of each there are beyond the rows listed. An open timer belongs to the lead's
    current owner (a reassignment hands the running timers over, as the SLA clock does), not to
    the owner it started with."""
    open_timers = (await conn.execute(text("""
        SELECT t.lead_id, t.metric, coalesce(t.tier, l.tier) AS tier, coalesce(l.owner_id, t.owner_id) AS owner_id,
               t.due_at, t.policy_id
        FROM reporting.sla_timers t LEFT JOIN reporting.leads l ON l.lead_id = t.lead_id
        WHERE t.state = 'open' AND t.due_at IS NOT NULL
        ORDER BY t.due_at, t.lead_id LIMIT :limit"""), {"limit": open_limit})).mappings().all()
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    breaches = (await conn.execute(text("""
        SELECT t.lead_id, t.metric, coalesce(t.tier, l.tier) AS tier, t.owner_id, t.breached_at, t.root_cause
        FROM reporting.sla_timers t LEFT JOIN reporting.leads l ON l.lead_id = t.lead_id
        WHERE t.state = 'breached' AND t.breached_at >= :start AND t.breached_at < :end
        ORDER BY t.breached_at DESC LIMIT :limit"""),
        {"start": day_start, "end": day_start + timedelta(days=1), "limit": breach_limit})).mappings().all()
    # The rows above are capped; the headings count them all (a day of 60 breaches is not 50).
    totals = (await conn.execute(text("""
        SELECT count(*) FILTER (WHERE state = 'open' AND due_at IS NOT NULL) AS open_total,
               count(*) FILTER (WHERE state = 'breached' AND breached_at >= :start AND breached_at < :end)
                   AS breaches_today
        FROM reporting.sla_timers WHERE state IN ('open', 'breached')"""),
        {"start": day_start, "end": day_start + timedelta(days=1)})).mappings().one()
    compliance = await sla_report(conn, Period(now - timedelta(days=7), now + timedelta(seconds=1)),
                                  "tier", "first_response")
    return {"open": [dict(r) for r in open_timers], "breaches": [dict(r) for r in breaches],
            "open_total": totals["open_total"], "breaches_today": totals["breaches_today"],
            "compliance": compliance}
