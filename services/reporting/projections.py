"""Projects every event into the timeline and folds it into the lead's current state.
The fold is pure (`fold`); `project` does the I/O inside the consumer's transaction."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from leadsla.shared.events import CloudEvent, utc_iso
from leadsla.shared.uow import UnitOfWork

from .tables import lead_state, timeline

# Later lifecycle stages never fall back to earlier ones when events arrive out of order.
STATUS_RANK = {"received": 0, "queued": 1, "assigned": 2, "responded": 3, "dispositioned": 4}


def fold(state: dict[str, Any], event: CloudEvent) -> dict[str, Any]:
    """Pure: the lead's state after `event`."""
    s = {**state, "sla": dict(state.get("sla") or {}), "profile": dict(state.get("profile") or {})}
    d = event.data

    def advance(status: str) -> None:
        if STATUS_RANK[status] >= STATUS_RANK.get(s.get("status") or "received", 0):
            s["status"] = status

    if event.type == "lead.received":
        s.update(source=d["source"], tier=d["tier"], received_at=d["received_at"])
        s["profile"] = {k: d.get(k) for k in ("contact", "company", "intent", "score", "consent",
                                               "contactable", "missing_fields", "external_id")}
        advance("received")
    elif event.type in ("lead.assigned", "lead.reassigned"):
        s["owner_id"] = d.get("owner_id") or d.get("to_owner_id")
        s["team_id"] = d.get("team_id", s.get("team_id"))
        s["assigned_at"] = d.get("assigned_at") or utc_iso(event.time)
        advance("assigned")
    elif event.type == "lead.queued":
        advance("queued")
    elif event.type == "activity.recorded":
        if d.get("disposition"):
            advance("dispositioned")
        elif d["type"] in ("call", "email", "meeting", "sms", "chat"):
            first = s.get("first_response_at")
            if first is None or datetime.fromisoformat(d["occurred_at"]) < datetime.fromisoformat(first):
                s["first_response_at"] = d["occurred_at"]
            advance("responded")
    elif event.type.startswith("sla."):
        metric = d["metric"]
        entry = dict(s["sla"].get(metric) or {})
        kind = event.type.removeprefix("sla.")
        entry.update(sla_id=d["sla_id"], policy_id=d["policy_id"], due_at=d["due_at"])
        if kind == "warning":
            entry["last_warning_percent"] = d.get("percent")
            entry.setdefault("state", "open")
        elif kind == "started":
            entry.setdefault("state", "open")
        else:
            entry["state"] = kind
            for key in ("breached_at", "root_cause", "met_at", "reason"):
                if d.get(key) is not None:
                    entry[key] = d[key]
        s["sla"][metric] = entry
    s["updated_at"] = utc_iso(event.time)
    s.setdefault("status", "received")
    return s


async def project(uow: UnitOfWork, event: CloudEvent) -> None:
    lead_id = event.subject or event.data.get("lead_id")
    if not lead_id:
        return
    await uow.conn.execute(pg_insert(timeline).values(
        event_id=event.id, lead_id=lead_id, type=event.type, source=event.source, time=event.time,
        correlation_id=event.correlationid, causation_id=event.causationid, data=event.data,
    ).on_conflict_do_nothing())
    row = (await uow.conn.execute(
        select(lead_state).where(lead_state.c.lead_id == lead_id).with_for_update()
    )).mappings().first()
    current = _as_wire(dict(row)) if row else {"lead_id": lead_id}
    new = fold(current, event)
    values = {k: new.get(k) for k in ("source", "tier", "status", "owner_id", "team_id", "sla", "profile")}
    values.update({k: _instant(new.get(k)) for k in TIMESTAMP_COLUMNS})
    await uow.conn.execute(pg_insert(lead_state).values(lead_id=lead_id, **values)
                           .on_conflict_do_update(index_elements=[lead_state.c.lead_id], set_=values))


TIMESTAMP_COLUMNS = ("received_at", "assigned_at", "first_response_at", "updated_at")


def _instant(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _as_wire(row: dict[str, Any]) -> dict[str, Any]:
    """Database row -> the JSON-ish shape `fold` works on (timestamps as RFC 3339 strings)."""
    return {k: utc_iso(v) if hasattr(v, "tzinfo") and v is not None else v for k, v in row.items()}
