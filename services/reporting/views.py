"""Read side: queries over the projected tables."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from leadsla.shared.events import utc_iso

from .tables import lead_state, timeline


async def lead_with_timeline(conn: AsyncConnection, lead_id: str) -> dict[str, Any] | None:
    state = (await conn.execute(select(lead_state).where(lead_state.c.lead_id == lead_id))).mappings().first()
    if state is None:
        return None
    events = (await conn.execute(
        select(timeline).where(timeline.c.lead_id == lead_id).order_by(timeline.c.time, timeline.c.event_id)
    )).mappings().all()
    lead = {k: utc_iso(v) if hasattr(v, "tzinfo") and v is not None else v for k, v in state.items()}
    return {
        "lead": lead,
        "timeline": [
            {"time": utc_iso(e["time"]), "type": e["type"], "event_id": e["event_id"], "source": e["source"],
             "causation_id": e["causation_id"], "data": e["data"]}
            for e in events
        ],
    }
