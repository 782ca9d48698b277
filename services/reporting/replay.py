"""Rebuilds reporting's read models (lead facts, SLA timers) from its timeline, the record of
every event it has consumed, in arrival order. The fold is the live one (`domain.fold_events`,
which `handlers.project` runs on a batch's leads), run lead by lead over the timeline and
written in bulk (one COPY per table, the leads' while the fold goes on), inside one
transaction that holds the read models exclusively: live projections wait, and nothing is half
rebuilt if it fails.

Why not `shared.replay.Projection`: that framework replays a service's own event store, and
reporting emits no events; its source is the timeline, the events of the other services'
topics as they arrived, which is itself part of what the live projection writes.

`verify=True` rebuilds the same way, compares with the live rows, and rolls back."""
from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from orjson import loads
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.config import Config

from .adapters import LEAD_COLUMNS, READ_MODELS_LOCK, TIMER_COLUMNS, lead_row, timer_row
from .domain import fold_events
from .handlers import CalendarOf, calendars
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
        # The timeline is read on a connection of its own, while this one COPYs the leads folded
        # so far. Nothing is added to it meanwhile: live projections wait for the lock we hold.
        async with engine.connect() as source:
            # Hundreds of thousands of short-lived dicts without a cycle among them: the cyclic
            # collector would only rescan the ones still alive.
            collecting = gc.isenabled()
            gc.disable()
            try:
                events = await _rebuild_tables(conn, source, config, progress)
            finally:
                if collecting:
                    gc.enable()
        differences = await _differences(conn) if verify else {}
        if verify:
            await tx.rollback()
        else:
            await tx.commit()
    return ReplayResult(events, time.perf_counter() - started, differences)


async def _rebuild_tables(conn: AsyncConnection, source: AsyncConnection, config: Config | None,
                          progress: Progress | None) -> int:
    """Folds the timeline lead by lead, each lead's events in arrival order (the order the live
    projection folded them in; leads do not depend on each other), so a lead's rows are final as
    soon as its last event is folded: they are COPYed while the next leads are folded, and only
    the leads of one page are in memory."""
    # The drivers' own connections: SQLAlchemy's row objects cost more than the fold reads of them.
    raw = (await conn.get_raw_connection()).driver_connection
    timers: list[tuple[Any, ...]] = []
    counted = [0]
    await raw.copy_records_to_table(lead_state.name, schema_name=lead_state.schema, columns=LEAD_COLUMNS,
                                    records=_folded_leads(source, calendars(config), timers, counted, progress))
    await raw.copy_records_to_table(sla_timers.name, schema_name=sla_timers.schema, columns=TIMER_COLUMNS,
                                    records=timers)
    return counted[0]


async def _folded_leads(source: AsyncConnection, calendar_of: CalendarOf, timer_rows: list[tuple[Any, ...]],
                        counted: list[int], progress: Progress | None) -> AsyncIterator[list[Any]]:
    """Each lead's COPY record once its events are folded; its timers' records go to `timer_rows`,
    and `counted[0]` counts the events."""
    await source.execute(text("SET TRANSACTION READ ONLY"))
    # Rows come in lead order from the timeline's (lead_id, time) index, each lead's few events
    # sorted by position as they pass; a sort of the whole timeline would spill to disk before
    # the first row came out.
    await source.execute(text("SET LOCAL enable_sort = off"))
    raw = (await source.get_raw_connection()).driver_connection
    t = timeline.c
    # JSONB as text, decoded here: the dialect's codec costs a Python call per value and two copies.
    cursor = await raw.cursor(f"SELECT {t.lead_id.name}, {t.type.name}, {t.time.name}, {t.data.name}::text "
                              f"FROM {timeline.schema}.{timeline.name} ORDER BY {t.lead_id.name}, {t.position.name}")
    leads: dict[str, dict[str, Any]] = {}
    timers: dict[str, dict[str, dict[str, Any]]] = {}  # lead id -> sla id -> row
    batch = await cursor.fetch(BATCH)
    while batch:
        # Ask for the next page before folding this one: Postgres produces it meanwhile.
        upcoming = asyncio.ensure_future(cursor.fetch(BATCH))
        await asyncio.sleep(0)  # let the request go out
        try:
            fold_events([_Recorded(lead_id, kind, at, loads(data)) for lead_id, kind, at, data in batch],
                        calendar_of, leads, timers)
        except BaseException:
            # Leave the connection idle, so it can go back to the pool.
            await asyncio.gather(upcoming, return_exceptions=True)
            raise
        counted[0] += len(batch)
        if progress is not None:
            progress(len(batch))
        going_on = batch[-1][0]  # the page's last lead may have more events in the next page
        batch = await upcoming
        for lead_id in [i for i in leads if i != going_on or not batch]:
            yield _lead_record(leads.pop(lead_id))
            timer_rows.extend(map(timer_row, timers.pop(lead_id).values()))


def _lead_record(lead: dict[str, Any]) -> list[Any]:
    row = lead_row(lead)
    for i in _JSON_INDEXES:  # COPY takes JSONB as text
        row[i] = orjson.dumps(row[i]).decode()
    return row


_JSON_INDEXES = tuple(LEAD_COLUMNS.index(name) for name in ("sla", "profile"))


class _Recorded(NamedTuple):
    """What the fold reads of an event; rows we wrote ourselves need no validation (and a tuple
    is the cheapest thing to build from a row)."""

    subject: str
    type: str
    time: Any
    data: dict[str, Any]


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
