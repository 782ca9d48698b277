"""Rebuilds reporting's read models (lead facts, SLA timers) from its timeline, the record of
every event it has consumed, in arrival order. The fold is the live one (`domain.fold_events`,
which `handlers.project` runs on a batch's leads), run over the whole timeline in memory (half of
the leads in a forked helper process, on the other core) and written in bulk (one COPY per
table), inside one transaction that holds the read models exclusively: live projections wait,
and nothing is half rebuilt if it fails.

Why not `shared.replay.Projection`: that framework replays a service's own event store, and
reporting emits no events; its source is the timeline, the events of the other services'
topics as they arrived, which is itself part of what the live projection writes.

`verify=True` rebuilds the same way, compares with the live rows, and rolls back."""
from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import orjson
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.config import Config

from .adapters import READ_MODELS_LOCK, lead_values
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
    count = 0
    # The driver's own cursor, in this transaction: SQLAlchemy's row objects cost more than the
    # fold reads of them. `data` comes as text: whoever folds the row decodes it.
    raw = (await conn.get_raw_connection()).driver_connection
    t = timeline.c
    cursor = await raw.cursor(f"SELECT {t.lead_id.name}, {t.type.name}, {t.time.name}, {t.data.name}::text "
                              f"FROM {timeline.schema}.{timeline.name} ORDER BY {t.position.name}")
    # The fold keeps every lead's facts and timers alive until the write, hundreds of thousands
    # of dicts without a cycle among them; the cyclic collector would rescan them all at every
    # full pass (a third of the rebuild's time), so it stays off until they are written.
    collecting = gc.isenabled()
    gc.disable()
    # The fold is Python CPU, and leads fold independently: half of them (by id) fold in a
    # forked helper process on the other core, which sends back its COPY records at the end.
    helper = _Helper.start(config)
    mine = _Fold(config)
    try:
        batch = await cursor.fetch(BATCH)
        while batch:
            # Ask for the next page before folding this one: Postgres produces it meanwhile.
            upcoming = asyncio.ensure_future(cursor.fetch(BATCH))
            await asyncio.sleep(0)  # let the request go out
            try:
                rows = [tuple(row) for row in batch]
                if helper is not None:
                    theirs = [row for row in rows if hash(row[0]) & 1]
                    rows = [row for row in rows if not hash(row[0]) & 1]
                    helper.send(theirs)
                mine.fold(rows)
                count += len(batch)
                if progress is not None:
                    progress(len(batch))
            except BaseException:
                # Leave the connection idle, so the rollback can use it.
                await asyncio.gather(upcoming, return_exceptions=True)
                raise
            batch = await upcoming
        lead_records, timer_records = mine.records()
        if helper is not None:
            their_leads, their_timers = await helper.records()
            lead_records += their_leads
            timer_records += their_timers
        await _write(raw, lead_records, timer_records)
    finally:
        if helper is not None:
            helper.stop()
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


class _Fold:
    """Timeline rows (lead id, type, time, data as JSON text) folded into leads and timers, and
    turned into COPY records at the end."""

    def __init__(self, config: Config | None) -> None:
        self._calendar_of = calendars(config)
        self._leads: dict[str, dict[str, Any]] = {}
        self._timers: dict[str, dict[str, dict[str, Any]]] = {}  # lead id -> sla id -> row

    def fold(self, rows: list[tuple[str, str, Any, str]]) -> None:
        fold_events([_Recorded(lead, kind, at, orjson.loads(data)) for lead, kind, at, data in rows],
                    self._calendar_of, self._leads, self._timers)

    def records(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        return ([_lead_record(lead_id, lead) for lead_id, lead in self._leads.items()],
                [tuple(map(t.get, _TIMER_COLUMNS)) for own in self._timers.values() for t in own.values()])


class _Helper:
    """A forked process folding the rows it is sent; `records()` ends it and returns its COPY
    records. None where fork is unavailable: then the parent folds everything."""

    def __init__(self, process: Any, pipe: Connection) -> None:
        self._process, self._pipe = process, pipe

    @classmethod
    def start(cls, config: Config | None) -> _Helper | None:
        if "fork" not in multiprocessing.get_all_start_methods():
            return None
        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe()
        process = context.Process(target=_helper_main, args=(theirs, config), daemon=True)
        process.start()
        theirs.close()
        return cls(process, ours)

    def send(self, rows: list[tuple[str, str, Any, str]]) -> None:
        self._pipe.send(rows)

    async def records(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        self._pipe.send(None)
        outcome = await asyncio.get_running_loop().run_in_executor(None, self._pipe.recv)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def stop(self) -> None:
        self._pipe.close()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()


def _helper_main(pipe: Connection, config: Config | None) -> None:
    gc.disable()
    try:
        fold = _Fold(config)
        while (rows := pipe.recv()) is not None:
            fold.fold(rows)
        pipe.send(fold.records())
    except EOFError:
        pass  # the parent gave up
    except BaseException as exc:  # the parent raises it
        pipe.send(RuntimeError(f"replay helper failed: {type(exc).__name__}: {exc}"))
    finally:
        pipe.close()
        os._exit(0)  # a forked child: no atexit handlers, no inherited cleanup


# Column order of the COPYs, and how each column's value comes out of the fold's dicts.
_LEAD_COLUMNS = tuple(c.name for c in lead_state.columns)
_TIMER_COLUMNS = tuple(c.name for c in sla_timers.columns)


def _lead_record(lead_id: str, lead: dict[str, Any]) -> tuple[Any, ...]:
    values = lead_values(lead)
    # COPY takes JSONB as text.
    values.update(lead_id=lead_id, sla=orjson.dumps(values["sla"]).decode(),
                  profile=orjson.dumps(values["profile"]).decode())
    return tuple(values[name] for name in _LEAD_COLUMNS)


async def _write(raw: Any, lead_records: list[tuple[Any, ...]], timer_records: list[tuple[Any, ...]]) -> None:
    """COPY, in this transaction: several times faster than INSERTs for a whole table."""
    await raw.copy_records_to_table(lead_state.name, schema_name=lead_state.schema, columns=_LEAD_COLUMNS,
                                    records=lead_records)
    await raw.copy_records_to_table(sla_timers.name, schema_name=sla_timers.schema, columns=_TIMER_COLUMNS,
                                    records=timer_records)


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
