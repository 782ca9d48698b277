from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from shared.db import OUTBOX, PROCESSED
from shared.housekeeping import prune

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


async def test_prunes_old_bookkeeping_but_never_pending_events(engine) -> None:
    outbox, processed = OUTBOX["reporting"], PROCESSED["reporting"]
    key = f"hk-{uuid.uuid4()}"
    consumer = f"hk-{uuid.uuid4()}"
    rows = {"old sent": NOW - timedelta(days=2), "recent sent": NOW - timedelta(hours=1), "pending": None}
    async with engine.begin() as conn:
        await conn.execute(insert(outbox), [
            {"topic": "t", "key": key, "event_id": label, "event_type": "x", "payload": b"{}",
             "created_at": NOW - timedelta(days=30), "sent_at": sent_at}
            for label, sent_at in rows.items()])
        await conn.execute(insert(processed), [
            {"consumer": consumer, "event_id": "old", "processed_at": NOW - timedelta(days=15)},
            {"consumer": consumer, "event_id": "recent", "processed_at": NOW - timedelta(days=13)}])

    await prune(engine, "reporting", NOW, keep_sent=timedelta(days=1), keep_processed=timedelta(days=14))

    async with engine.connect() as conn:
        kept = set((await conn.execute(select(outbox.c.event_id).where(outbox.c.key == key))).scalars())
        ids = set((await conn.execute(
            select(processed.c.event_id).where(processed.c.consumer == consumer))).scalars())
    assert kept == {"recent sent", "pending"}
    assert ids == {"recent"}
