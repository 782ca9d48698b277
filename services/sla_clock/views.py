"""The read side: a lead's timers as GET /v1/leads/{lead_id}/sla shows them."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row

from shared.business_hours import BusinessCalendar
from shared.config import Config
from shared.events import utc_iso

# The contract's names for a timer's state.
_STATES = {"open": "running"}


def timer_view(row: Row, config: Config, now: datetime) -> dict[str, Any]:
    calendar_config = config.calendar(row.calendar)
    if row.timezone:
        calendar_config = calendar_config.model_copy(update={"timezone": row.timezone})
    calendar = BusinessCalendar(calendar_config)
    # Time stops while paused and when the timer closes (a timer closed while paused keeps the
    # pause's start: it stopped there); paused business time never counts.
    end = min(filter(None, (row.closed_at, row.paused_at)), default=now)
    # A missed follow-up whose cadence then ended (cancelled, cadence_exhausted) is shown as the
    # miss it was, as the reports keep it, with the cancel reason beside it.
    missed = row.state == "breached" or (row.state == "cancelled" and row.root_cause is not None)
    if missed:
        # Its window ended at the deadline; closed_at is when the clock judged it (later in an outage).
        end = min(end, row.due_at)
    elapsed = max(calendar.elapsed(row.started_at, end) - row.paused_seconds, 0.0)
    remaining = (row.target_seconds - elapsed if row.target_seconds is not None
                 else calendar.elapsed(end, row.due_at))
    view: dict[str, Any] = {
        "sla_id": row.sla_id, "metric": row.metric, "state": "breached" if missed else _STATES.get(row.state, row.state),
        "policy_id": row.policy_id, "policy_version": row.policy_version, "owner_id": row.owner_id,
        "started_at": utc_iso(row.started_at), "due_at": utc_iso(row.due_at),
        "closed_at": utc_iso(row.closed_at) if row.closed_at else None,
        "elapsed_seconds": round(elapsed, 3), "remaining_seconds": round(remaining, 3),
        "root_cause": row.root_cause,
    }
    if row.state == "paused" and row.paused_at is not None:
        view["paused_at"] = utc_iso(row.paused_at)
    if row.reason is not None:
        view["cancel_reason"] = row.reason
    if row.metric == "next_action":
        view["step"] = row.step
    return view
