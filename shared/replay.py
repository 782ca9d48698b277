"""Rebuild a service's state tables from its event store (`leadsla replay <service>`).

A service declares its `Projection`: the state tables that are a projection of its events and
the function that applies a page of stored events to them. The live code path uses the same
function in the same transaction as the append (`UnitOfWork.record`), so replaying the store
reproduces the tables.

The rebuild runs aside, in a scratch schema `replay_<service>` holding empty copies of the
tables; the projector's statements are pointed there with SQLAlchemy's schema translation.
`verify` then compares the copies with the live tables (rows in one and not the other, both
ways) and drops them; otherwise the live tables are replaced by the copies in one transaction
(run it with the service stopped).
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Table, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import is_deadlock
from .events import CloudEvent
from .eventstore import append_lock_key, count, read_all

# A swap that loses a deadlock to a live commit runs again; more than a few in a row is not bad luck.
SWAP_ATTEMPTS = 5

# Applies events, in order, to the state tables on the given connection (its transaction).
Apply = Callable[[AsyncConnection, Sequence[CloudEvent]], Awaitable[None]]


@dataclass(frozen=True)
class Projection:
    service: str
    tables: Sequence[Table]
    apply: Apply
    # Columns left out of the comparison, by table name: bookkeeping that is not state (a
    # lease's holder, the time a row was last touched by a loop).
    ignore: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplayResult:
    events: int
    seconds: float
    differences: dict[str, int]
    examples: dict[str, list[str]]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def aside_schema(service: str) -> str:
    return f"replay_{service}"


async def rebuild(engine: AsyncEngine, projection: Projection, *, verify: bool,
                  progress: Callable[[int], None] = lambda n: None, page: int = 2000) -> ReplayResult:
    service, aside = projection.service, aside_schema(projection.service)
    started = time.perf_counter()
    replayed = 0
    async with engine.connect() as source, engine.connect() as target:
        await target.execute(text(f'DROP SCHEMA IF EXISTS "{aside}" CASCADE'))
        await target.execute(text(f'CREATE SCHEMA "{aside}"'))
        for table in projection.tables:
            await target.execute(text(
                f'CREATE TABLE "{aside}"."{table.name}" (LIKE "{table.schema}"."{table.name}" INCLUDING ALL)'))
        await target.commit()
        translated = await target.execution_options(schema_translate_map={service: aside})

        async def apply_from(after: int) -> int:
            """Apply the store's events after position `after` to the aside tables, a page at a
            time; returns the last position applied."""
            nonlocal replayed
            while True:
                events = await read_all(source, service, after=after, limit=page)
                await source.rollback()  # no long snapshot on the live store
                if not events:
                    return after
                await projection.apply(translated, [e.event for e in events])
                replayed += len(events)
                after = events[-1].position
                progress(len(events))

        async def swap(after: int) -> None:
            # The service may be running: the swap holds the store's append lock, which every
            # commit of the service takes, and first applies what was committed since the last
            # page. A write that commits during the swap waits for it; one that committed after
            # the last page is in the rebuilt tables (it would otherwise be deleted with the rest).
            await target.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": append_lock_key(service)})
            await apply_from(after)  # read after the lock: every commit before it is seen
            for table in projection.tables:
                live, rebuilt = f'"{table.schema}"."{table.name}"', f'"{aside}"."{table.name}"'
                await target.execute(text(f"DELETE FROM {live}"))
                await target.execute(text(f"INSERT INTO {live} SELECT * FROM {rebuilt}"))

        after = await apply_from(0)
        await target.commit()
        seconds = time.perf_counter() - started
        differences: dict[str, int] = {}
        examples: dict[str, list[str]] = {}
        if verify:
            for table in projection.tables:
                ignored = projection.ignore.get(table.name, frozenset())
                columns = ", ".join(f'"{c.name}"' for c in table.columns if c.name not in ignored)
                live, rebuilt = f'"{table.schema}"."{table.name}"', f'"{aside}"."{table.name}"'
                rows = (await target.execute(text(
                    f"(SELECT 'live only' AS side, {columns} FROM {live} EXCEPT SELECT 'live only', {columns} FROM {rebuilt}) "
                    f"UNION ALL (SELECT 'replay only', {columns} FROM {rebuilt} "
                    f"EXCEPT SELECT 'replay only', {columns} FROM {live})"))).all()
                if rows:
                    differences[table.name] = len(rows)
                    examples[table.name] = [str(tuple(r)) for r in rows[:5]]
        else:
            counted = replayed
            for attempt in range(1, SWAP_ATTEMPTS + 1):
                try:
                    await swap(after)
                    break
                except DBAPIError as exc:
                    replayed = counted
                    # A commit that wrote live rows before asking for the append lock we hold, while
                    # we wait to delete those rows: Postgres ends one of the two. The writer retries
                    # by itself; so does the swap, whose catch-up starts again from the last page.
                    if attempt == SWAP_ATTEMPTS or not is_deadlock(exc):
                        raise
                    await target.rollback()
        await target.execute(text(f'DROP SCHEMA "{aside}" CASCADE'))
        await target.commit()
    return ReplayResult(replayed, seconds, differences, examples)


async def stored_events(engine: AsyncEngine, service: str) -> int:
    async with engine.connect() as conn:
        return await count(conn, service)
