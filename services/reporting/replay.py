"""Rebuilds reporting's read models (lead facts, SLA timers) from its timeline, the record of
every event it has consumed, in arrival order. The fold is the live one (`domain.fold_events`,
which `handlers.project` runs on a batch's leads), run a page of leads at a time over the
timeline and written in bulk (COPY, each page's while the next is folded), inside one
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
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
from orjson import loads
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.config import TOUCH_SKEW, Config

from .adapters import LEAD_COLUMNS, READ_MODELS_LOCK, TIMER_COLUMNS, lead_row, timer_row
from .domain import fold_events
from .handlers import PolicyRules, calendars
from .tables import lead_state, sla_timers, timeline

LEADS_PER_PAGE = 400
LEADS_PER_SLICE = 50
# Compared by --verify: every derived table, row for row (by its key, to name what differs).
DERIVED = {"reporting.leads": "lead_id", "reporting.sla_timers": "sla_id"}
EXAMPLES = 5  # differing rows named per table

Progress = Callable[[int], None]


@dataclass
class ReplayResult:
    events: int
    seconds: float
    differences: dict[str, int] = field(default_factory=dict)  # table -> rows that differ
    examples: dict[str, list[str]] = field(default_factory=dict)  # table -> a few, column by column

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def count_events(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(timeline)) or 0


async def rebuild(engine: AsyncEngine, config: Config | None, *, verify: bool = False,
                  progress: Progress | None = None, touch_skew: timedelta = TOUCH_SKEW) -> ReplayResult:
    started = time.perf_counter()
    async with engine.connect() as conn, conn.begin() as tx:
        await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(READ_MODELS_LOCK))))
        # Its commit need not wait for the disk: lost in a crash, the rebuild is undone whole and the
        # read models are the live ones it replaced (any later commit flushes it along with its own).
        await conn.execute(text("SET LOCAL synchronous_commit = off"))
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
                events = await _rebuild_tables(conn, source, calendars(config), touch_skew, progress)
            finally:
                if collecting:
                    gc.enable()
        differences, examples = await _differences(conn) if verify else ({}, {})
        if verify:
            await tx.rollback()
        else:
            await tx.commit()
    return ReplayResult(events, time.perf_counter() - started, differences, examples)


async def _rebuild_tables(conn: AsyncConnection, source: AsyncConnection, rules: PolicyRules,
                          touch_skew: timedelta, progress: Progress | None) -> int:
    """Folds the timeline a page of leads at a time, each lead's events in arrival order (the
    order the live projection folded them in; leads do not depend on each other). A page's rows
    are final once it is folded: Postgres stores them while the next page is folded, and only
    a few pages are in memory."""
    # The drivers' own connections: SQLAlchemy's row objects cost more than the fold reads of them.
    raw = (await conn.get_raw_connection()).driver_connection
    events = 0
    storing: asyncio.Future[None] | None = None
    try:
        async for leads, timers, folded in _folded_pages(source, rules, touch_skew):
            if storing is not None:
                await storing
            storing = asyncio.ensure_future(_store(raw, leads, timers))
            events += folded
            if progress is not None:
                progress(folded)
        if storing is not None:
            await storing
    except BaseException:
        if storing is not None:  # leave the connection idle, so it can go back to the pool
            await asyncio.gather(storing, return_exceptions=True)
        raise
    return events


async def _store(raw: Any, leads: list[list[Any]], timers: list[tuple[Any, ...]]) -> None:
    await raw.copy_records_to_table(lead_state.name, schema_name=lead_state.schema, columns=LEAD_COLUMNS,
                                    records=leads)
    await raw.copy_records_to_table(sla_timers.name, schema_name=sla_timers.schema, columns=TIMER_COLUMNS,
                                    records=timers)


async def _folded_pages(source: AsyncConnection, rules: PolicyRules, touch_skew: timedelta
                        ) -> AsyncIterator[tuple[list[list[Any]], list[tuple[Any, ...]], int]]:
    """Per page of leads: their COPY records, their timers', and how many events they had."""
    await source.execute(text("SET TRANSACTION READ ONLY"))
    # Leads come in order from the timeline's (lead_id, time) index, each lead's few events sorted
    # by position as they pass; a sort or a hash of the whole timeline would spill to disk.
    await source.execute(text("SET LOCAL enable_sort = off"))
    await source.execute(text("SET LOCAL TimeZone = 'UTC'"))  # the instants in the JSON below
    raw = (await source.get_raw_connection()).driver_connection
    t = timeline.c
    # A lead's events as one JSON array of [type, time, data], decoded here at once: a row and a
    # decode per event cost this process a quarter more (0.10 against 0.08 CPU-s for 25,466 events).
    cursor = await raw.cursor(
        f"SELECT {t.lead_id.name}, json_agg(json_build_array({t.type.name}, {t.time.name}, {t.data.name}) "
        f"ORDER BY {t.position.name})::text FROM {timeline.schema}.{timeline.name} "
        f"GROUP BY {t.lead_id.name} ORDER BY {t.lead_id.name}")
    page = await cursor.fetch(LEADS_PER_PAGE)
    while page:
        # Ask for the next page before folding this one: Postgres produces it meanwhile.
        upcoming = asyncio.ensure_future(cursor.fetch(LEADS_PER_PAGE))
        leads: dict[str, dict[str, Any]] = {}
        timers: dict[str, dict[str, dict[str, Any]]] = {}  # lead id -> sla id -> row
        count = 0
        try:
            for start in range(0, len(page), LEADS_PER_SLICE):
                events = [_Recorded(lead_id, kind, datetime.fromisoformat(at), data)
                          for lead_id, recorded in page[start:start + LEADS_PER_SLICE]
                          for kind, at, data in loads(recorded)]
                fold_events(events, rules, leads, timers, touch_skew)
                count += len(events)
                # The previous page's COPY and the next page's fetch move on between slices: a
                # page folded in one go left them waiting for it, and then this process for them.
                await asyncio.sleep(0)
        except BaseException:
            # Leave the connection idle, so it can go back to the pool.
            await asyncio.gather(upcoming, return_exceptions=True)
            raise
        folded = ([_lead_record(lead) for lead in leads.values()],
                  [timer_row(timer) for own in timers.values() for timer in own.values()], count)
        page = await upcoming
        yield folded  # with no fetch in flight: the caller may stop here


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


async def _differences(conn: AsyncConnection) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Per table, how many rows differ between the live read model and the rebuild, and the first
    few of them by key, naming each column that would change (an analyst checking what a replay
    after a calendar change would rewrite wants the leads and the figures, not a count)."""
    found: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for table, key in DERIVED.items():
        live = f"live_{table.split('.')[1]}"
        live_only = f"SELECT * FROM {live} EXCEPT ALL SELECT * FROM {table}"
        rebuilt_only = f"SELECT * FROM {table} EXCEPT ALL SELECT * FROM {live}"
        n = await conn.scalar(text(f"SELECT (SELECT count(*) FROM ({live_only}) a) + (SELECT count(*) FROM ({rebuilt_only}) b)"))
        if not n:
            continue
        found[table] = n
        first = f"ORDER BY {key} LIMIT {EXAMPLES}"
        before = {r[key]: r for r in (await conn.execute(text(f"SELECT * FROM ({live_only}) a {first}"))).mappings()}
        after = {r[key]: r for r in (await conn.execute(text(
            f"(SELECT * FROM ({rebuilt_only}) b WHERE {key} = ANY(:keys)) UNION (SELECT * FROM ({rebuilt_only}) c {first})"),
            {"keys": list(before)})).mappings()}
        examples[table] = [describe_difference(key, k, before.get(k), after.get(k))
                           for k in sorted(set(before) | set(after))[:EXAMPLES]]
    return found, examples


def describe_difference(key: str, value: Any, live: Any, rebuilt: Any) -> str:
    """One differing row: `lead_id=…: column live -> rebuilt, …`, or that only one side has it."""
    if live is None:
        return f"{key}={value}: only in the rebuild"
    if rebuilt is None:
        return f"{key}={value}: only in the live read model"
    changed = [f"{column} {_short(live[column])} -> {_short(rebuilt[column])}"
               for column in live.keys() if live[column] != rebuilt[column]]
    return f"{key}={value}: " + ", ".join(changed)


def _short(value: Any, limit: int = 120) -> str:
    shown = value.isoformat() if isinstance(value, datetime) else repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "…"
