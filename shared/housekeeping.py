"""Retention for the bookkeeping tables every service schema has.

The event store is the system of record: nothing in it is deleted unless an operator sets a
retention, and then only events already published. Processed event ids must outlive the
broker's retention (a redelivered record whose id was pruned would be handled again).
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from .aio import run_loop
from .clock import Clock
from .db import PROCESSED
from .eventstore import EVENTS, RELAY

log = structlog.get_logger()


# Each statement deletes a bounded part, so none runs near a running service's statement
# timeout however much has piled up (LEADSLA_DATABASE_STATEMENT_TIMEOUT_SECONDS), and each
# commits on its own: a prune cut short is simply continued by the next one.
EVENTS_PER_STATEMENT = 5000
PAGES_PER_STATEMENT = 1024  # 8 MB of table pages: about 100,000 processed ids


async def prune(
    engine: AsyncEngine, schema: str, now: datetime, keep_events: timedelta | None, keep_processed: timedelta,
    *, events_per_statement: int = EVENTS_PER_STATEMENT, pages_per_statement: int = PAGES_PER_STATEMENT,
) -> tuple[int, int]:
    """Delete processed ids, and published events if a retention is set, older than their
    retention; returns the counts."""
    pruned = 0
    if keep_events is not None:
        pruned = await _prune_events(engine, schema, now - keep_events, events_per_statement)
    ids = await _prune_processed(engine, schema, now - keep_processed, pages_per_statement)
    return pruned, ids


async def _prune_events(engine: AsyncEngine, schema: str, before: datetime, per_statement: int) -> int:
    """Published events recorded before `before`, the oldest by position first (positions follow
    the time events are recorded), until a statement finds fewer old ones than it may delete."""
    events, relay = EVENTS[schema], RELAY[schema]
    published = select(func.coalesce(func.max(relay.c.published_position), 0)).scalar_subquery()
    oldest = (select(events.c.position).where(events.c.position <= published)
              .order_by(events.c.position).limit(per_statement))
    statement = delete(events).where(events.c.position.in_(oldest.scalar_subquery()), events.c.recorded_at < before)
    pruned = 0
    while True:
        async with engine.begin() as conn:
            deleted = (await conn.execute(statement)).rowcount
        pruned += deleted
        if deleted < per_statement:
            return pruned


async def _prune_processed(engine: AsyncEngine, schema: str, before: datetime, per_statement: int) -> int:
    """Processed ids recorded before `before`, a range of the table's pages at a time (a TID range
    scan; an index on processed_at would cost every consumer's insert): together the statements
    read the table once, as a single delete would. Rows added meanwhile are recent: not due."""
    processed = PROCESSED[schema]
    async with engine.connect() as conn:
        pages = await conn.scalar(text("SELECT pg_relation_size(CAST(:t AS regclass)) / current_setting('block_size')::int"),
                                  {"t": f"{schema}.{processed.name}"}) or 0
    in_range = text("ctid >= CAST(:first AS tid) AND ctid < CAST(:end AS tid)")
    statement = delete(processed).where(in_range, processed.c.processed_at < before)
    pruned = 0
    for first in range(0, pages, per_statement):
        async with engine.begin() as conn:
            # asyncpg takes a tid as (page, item)
            pruned += (await conn.execute(statement, {"first": (first, 0), "end": (first + per_statement, 0)})).rowcount
    return pruned


async def run_housekeeping(
    engine: AsyncEngine, schema: str, clock: Clock, stop: asyncio.Event, *,
    keep_events: timedelta | None, keep_processed: timedelta, every: float = 3600,
) -> None:
    async def prune_round() -> float:
        events, ids = await prune(engine, schema, clock.now(), keep_events, keep_processed)
        if events or ids:
            log.info("housekeeping.pruned", schema=schema, events=events, processed_ids=ids)
        return every

    await run_loop("housekeeping", prune_round, stop, idle=every, backoff_first=60, backoff_cap=every,
                   schema=schema)
