"""Retention for the bookkeeping tables every service schema has.

The event store is the system of record: nothing in it is deleted unless an operator sets a
retention, and then only events already published. Processed event ids must outlive the
broker's retention (a redelivered record whose id was pruned would be handled again).
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .aio import run_loop
from .clock import Clock
from .db import PROCESSED
from .eventstore import EVENTS, RELAY

log = structlog.get_logger()


async def prune(
    engine: AsyncEngine, schema: str, now: datetime, keep_events: timedelta | None, keep_processed: timedelta
) -> tuple[int, int]:
    """Delete processed ids, and published events if a retention is set, older than their
    retention; returns the counts."""
    events, processed, relay = EVENTS[schema], PROCESSED[schema], RELAY[schema]
    async with engine.begin() as conn:
        pruned = 0
        if keep_events is not None:
            published = select(func.coalesce(func.max(relay.c.published_position), 0)).scalar_subquery()
            pruned = (await conn.execute(delete(events).where(
                events.c.recorded_at < now - keep_events, events.c.position <= published))).rowcount
        ids = await conn.execute(delete(processed).where(processed.c.processed_at < now - keep_processed))
    return pruned, ids.rowcount


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
