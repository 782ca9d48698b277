"""Read side of the router: owners with their live load, the queue in drain order."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.config import Config, Tiers
from shared.events import utc_iso

from .adapters import drain_order, load_state
from .domain import LeadFacts, current_status, eligibility
from .tables import assignments, owner_state, queue


async def list_owners(conn: AsyncConnection, config: Config, now: datetime) -> list[dict[str, Any]]:
    """Every configured owner with their live load and availability, then every owner the
    configuration no longer names who still holds open leads (status `removed`)."""
    state = await load_state(conn, config, now)
    owners = state.owners
    versions = dict((await conn.execute(select(owner_state.c.owner_id, owner_state.c.version))).all())
    teams: dict[str, list[str]] = {}
    for team in config.teams:
        for member in team.members:
            teams.setdefault(member, []).append(team.id)
    # Availability for an ordinary lead: whatever a specific lead adds (language, tier) aside.
    probe = LeadFacts(lead_id="", tier="", source="")
    return [
        {
            "owner_id": o.id,
            "name": o.name,
            "status": current_status(o, now),
            "until": utc_iso(o.until) if o.until and current_status(o, now) == "out_of_office" else None,
            "capacity": o.capacity,
            "daily_cap": o.daily_cap,
            "weight": o.weight,
            "languages": list(o.languages),
            "calendar": o.calendar,
            "working_hours": o.working_hours.model_dump(mode="json") if o.working_hours else None,
            "open_leads": state.open_leads.get(o.id, 0),
            "assigned_today": state.today.get(o.id, 0),
            "available_now": (why := eligibility(o, probe, state, config, now)) is None,
            "unavailable_because": why,
            "teams": teams.get(o.id, []),
            "version": versions.get(o.id, 0),
        }
        for o in owners.values()
    ] + [
        # Taken out of the file, still holding leads: ops must see whose they are.
        {
            "owner_id": owner_id, "name": None, "status": "removed", "until": None, "capacity": None,
            "daily_cap": None, "weight": None, "languages": [], "calendar": None, "working_hours": None,
            "open_leads": n, "assigned_today": state.today.get(owner_id, 0), "available_now": False,
            "unavailable_because": "not in the configuration; their open leads stay theirs until reassigned",
            "teams": [], "version": versions.get(owner_id, 0),
        }
        for owner_id, n in (await open_leads_of_unknown_owners(conn, config)).items()
    ]


async def queued_leads(conn: AsyncConnection, tiers: Tiers, source: str | None = None) -> list[dict[str, Any]]:
    """The queue in drain order (`tiers`' rank, then age); `source`: only that source's leads
    (what a source key sees)."""
    statement = (select(queue.c.lead_id, queue.c.tier, queue.c.reason, queue.c.queued_at, queue.c.facts)
                 .order_by(*drain_order(queue, tiers, queue.c.queued_at)))
    if source is not None:
        statement = statement.where(queue.c.facts["source"].astext == source)
    rows = await conn.execute(statement)
    return [
        {"lead_id": r.lead_id, "tier": r.tier, "reason": r.reason, "queued_at": utc_iso(r.queued_at),
         "source": (r.facts or {}).get("source")}
        for r in rows
    ]


async def open_leads_of_unknown_owners(conn: AsyncConnection, config: Config) -> dict[str, int]:
    """Owners `config` does not name who still hold open leads, with how many: an owner taken out
    of the file keeps their leads (nothing reroutes them), so `config apply` says so."""
    known = [o.id for o in config.owners]
    rows = await conn.execute(
        select(assignments.c.owner_id, func.count()).where(assignments.c.closed_at.is_(None),
                                                           assignments.c.owner_id.not_in(known))
        .group_by(assignments.c.owner_id).order_by(assignments.c.owner_id))
    return {owner: n for owner, n in rows}
