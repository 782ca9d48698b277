"""Rebuilds reporting's read models (lead facts, SLA timers) from its timeline, the record of
every event it has consumed, in arrival order. The fold is the live one (`domain.fold_events`,
which `handlers.project` runs on a batch's leads), run over the whole timeline in memory and written in
bulk (one COPY per table), inside one transaction that holds the read models exclusively: live
projections wait, and nothing is half rebuilt if it fails.

Why not `shared.replay.Projection`: that framework replays a service's own event store, and
reporting emits no events; its source is the timeline, the events of the other services'
topics as they arrived, which is itself part of what the live projection writes.

`verify=True` rebuilds the same way, compares with the live rows, and rolls back."""
from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.config import Config

from .adapters import LEAD_COLUMNS, READ_MODELS_LOCK, TIMER_COLUMNS, lead_row, timer_row
from .domain import fold_events
from .handlers import calendars
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
    # The driver's own cursor, in this transaction: SQLAlchemy's row objects cost more than the
    # fold reads of them. JSONB arrives decoded (the dialect's codec on this connection).
    raw = (await conn.get_raw_connection()).driver_connection
    t = timeline.c
    cursor = await raw.cursor(f"SELECT {t.lead_id.name}, {t.type.name}, {t.time.name}, {t.data.name} "
                              f"FROM {timeline.schema}.{timeline.name} ORDER BY {t.position.name}")
    # The fold keeps every lead's facts and timers alive until the write, hundreds of thousands
    # of dicts without a cycle among them; the cyclic collector would rescan them all at every
    # full pass (a third of the rebuild's time), so it stays off until they are written.
    collecting = gc.isenabled()
    gc.disable()
    try:
        batch = await cursor.fetch(BATCH)
        while batch:
            # Ask for the next page before folding this one: Postgres produces it meanwhile.
            upcoming = asyncio.ensure_future(cursor.fetch(BATCH))
            await asyncio.sleep(0)  # let the request go out
            try:
                fold_events(map(_Recorded._make, batch), calendar_of, leads, timers)
                count += len(batch)
                if progress is not None:
                    progress(len(batch))
            except BaseException:
                # Leave the connection idle, so the rollback can use it.
                await asyncio.gather(upcoming, return_exceptions=True)
                raise
            batch = await upcoming
        await _write(raw, leads, timers)
    finally:
        if collecting:
            gc.enable()
    return count


class _Recorded(NamedTuple):
    """What the fold reads of an event; rows we wrote ourselves need no validation (and a tuple
    is the cheapest thing to build from a row)."""

    subject: str
    type: str
    time: Any
    data: dict[str, Any]


def _lead_records(leads: dict[str, dict[str, Any]]) -> Iterator[list[Any]]:
    for lead in leads.values():
        row = lead_row(lead)
        for i in _JSON_INDEXES:  # COPY takes JSONB as text
            row[i] = orjson.dumps(row[i]).decode()
        yield row


_JSON_INDEXES = tuple(LEAD_COLUMNS.index(name) for name in ("sla", "profile"))


async def _write(raw: Any, leads: dict[str, dict[str, Any]], timers: dict[str, dict[str, dict[str, Any]]]) -> None:
    """COPY, in this transaction: several times faster than INSERTs for a whole table. The
    records are made as the COPY goes (generators), so Postgres stores the first ones while the
    next are made."""
    await raw.copy_records_to_table(lead_state.name, schema_name=lead_state.schema, columns=LEAD_COLUMNS,
                                    records=_lead_records(leads))
    await raw.copy_records_to_table(sla_timers.name, schema_name=sla_timers.schema, columns=TIMER_COLUMNS,
                                    records=(timer_row(t) for own in timers.values() for t in own.values()))


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
