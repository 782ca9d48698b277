"""Rebuilds reporting's read models (lead facts, SLA timers) from its timeline, the record of
every event it has consumed, in arrival order. The fold is the live one (`domain.project_event`),
run in memory and written in bulk, inside one transaction that holds the read models
exclusively: live projections wait, and nothing is half rebuilt if it fails.

`verify=True` rebuilds the same way, compares with the live rows, and rolls back."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from leadsla.shared.config import Config
from leadsla.shared.events import CloudEvent

from .domain import project_event, timers_touched_by
from .projections import READ_MODELS_LOCK, calendars, lead_values, timer_values
from .tables import lead_state, sla_timers, timeline

BATCH = 2000
# Compared by --verify: every derived table, row for row.
DERIVED = ("reporting.leads", "reporting.sla_timers")

Progress = Callable[[int], None]


@dataclass
class ReplayResult:
    events: int
    seconds: float
    differences: dict[str, int] = field(default_factory=dict)  # table -> rows that differ

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def count_events(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(timeline)) or 0


async def rebuild(engine: AsyncEngine, config: Config | None, *, verify: bool = False,
                  progress: Progress | None = None) -> ReplayResult:
    started = time.perf_counter()
    async with engine.connect() as conn, conn.begin() as tx:
        await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(READ_MODELS_LOCK))))
        if verify:
            for table in DERIVED:
                await conn.execute(text(f"CREATE TEMP TABLE live_{table.split('.')[1]} ON COMMIT DROP AS "
                                        f"SELECT * FROM {table}"))
        await conn.execute(text(f"TRUNCATE {', '.join(DERIVED)}"))
        events = await _fold_timeline(conn, config, progress)
        differences = await _differences(conn) if verify else {}
        if verify:
            await tx.rollback()
        else:
            await tx.commit()
    return ReplayResult(events, time.perf_counter() - started, differences)


async def _fold_timeline(conn: AsyncConnection, config: Config | None, progress: Progress | None) -> int:
    leads: dict[str, dict[str, Any]] = {}
    timers: dict[str, dict[str, dict[str, Any]]] = {}  # lead id -> sla id -> row
    calendar_of = calendars(config)
    count = 0
    rows = await conn.stream(select(timeline).order_by(timeline.c.position).execution_options(yield_per=BATCH))
    async for r in rows.mappings():
        # Trusted rows we wrote ourselves: skip validation, the fold reads type, time and data.
        event = CloudEvent.model_construct(id=r["event_id"], source=r["source"], type=r["type"],
                                           subject=r["lead_id"], time=r["time"], data=r["data"],
                                           correlationid=r["correlation_id"], causationid=r["causation_id"])
        lead_id = r["lead_id"]
        own = timers.setdefault(lead_id, {})
        needed = timers_touched_by(event)
        relevant = {} if needed is None else (
            {k: v for k, v in own.items() if k == event.data["sla_id"]} if needed == "one"
            else {k: v for k, v in own.items() if v["metric"] == "first_response"})
        lead, changed = project_event(leads.get(lead_id) or {"lead_id": lead_id}, relevant, event, calendar_of)
        leads[lead_id] = lead
        for timer in changed:
            own[timer["sla_id"]] = timer
        count += 1
        if progress is not None and count % 500 == 0:
            progress(500)
    if progress is not None:
        progress(count % 500)
    await _write(conn, leads, timers)
    return count


async def _write(conn: AsyncConnection, leads: dict[str, dict[str, Any]],
                 timers: dict[str, dict[str, dict[str, Any]]]) -> None:
    lead_rows = [{"lead_id": lead_id, **lead_values(lead)} for lead_id, lead in leads.items()]
    timer_rows = [timer_values(t) for own in timers.values() for t in own.values()]
    for table, rows in ((lead_state, lead_rows), (sla_timers, timer_rows)):
        for i in range(0, len(rows), BATCH):
            await conn.execute(insert(table), rows[i:i + BATCH])


async def _differences(conn: AsyncConnection) -> dict[str, int]:
    found = {}
    for table in DERIVED:
        live = f"live_{table.split('.')[1]}"
        n = await conn.scalar(text(f"SELECT (SELECT count(*) FROM (SELECT * FROM {live} EXCEPT ALL "
                                   f"SELECT * FROM {table}) a) + (SELECT count(*) FROM (SELECT * FROM {table} "
                                   f"EXCEPT ALL SELECT * FROM {live}) b)"))
        if n:
            found[table] = n
    return found
