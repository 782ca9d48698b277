"""Retention for the bookkeeping tables every service schema has.

Sent outbox rows are only kept for debugging. Processed event ids must outlive the broker's
retention (a redelivered record whose id was pruned would be handled again), so they are kept
much longer. Pending outbox rows are never touched.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from .aio import sleep_unless_stopped
from .clock import Clock
from .db import OUTBOX, PROCESSED

log = structlog.get_logger()


async def prune(
    engine: AsyncEngine, schema: str, now: datetime, keep_sent: timedelta, keep_processed: timedelta
) -> tuple[int, int]:
    """Delete sent outbox rows and processed ids older than their retention; returns the counts."""
    outbox, processed = OUTBOX[schema], PROCESSED[schema]
    async with engine.begin() as conn:
        sent = await conn.execute(delete(outbox).where(outbox.c.sent_at < now - keep_sent))
        ids = await conn.execute(delete(processed).where(processed.c.processed_at < now - keep_processed))
    return sent.rowcount, ids.rowcount


async def run_housekeeping(
    engine: AsyncEngine, schema: str, clock: Clock, stop: asyncio.Event, *,
    keep_sent: timedelta, keep_processed: timedelta, every: float = 3600,
) -> None:
    while not stop.is_set():
        try:
            sent, ids = await prune(engine, schema, clock.now(), keep_sent, keep_processed)
            if sent or ids:
                log.info("housekeeping.pruned", schema=schema, outbox_rows=sent, processed_ids=ids)
        except Exception as exc:  # retention can wait for the next round
            log.warning("housekeeping.failed", schema=schema, error=str(exc))
        await sleep_unless_stopped(stop, every)
