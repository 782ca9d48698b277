"""The key cache on Postgres: a burst of requests on a busy endpoint costs one connection."""
from __future__ import annotations

import asyncio

from sqlalchemy import event

from shared.auth import KeyCache, create_key


async def test_a_burst_with_a_stale_revocation_version_reads_it_once_on_one_connection(engine) -> None:
    async with engine.begin() as conn:
        key = await create_key(conn, "burst", "source")
    now = [0.0]
    cache = KeyCache(clock=lambda: now[0], check_every=0.5)
    assert (await cache.verify(engine.connect, key)).name == "burst"  # now cached
    now[0] = 1.0  # the revocation version must be confirmed again before the entry is trusted

    checkouts = 0

    def checked_out(*_: object) -> None:
        nonlocal checkouts
        checkouts += 1

    event.listen(engine.sync_engine.pool, "checkout", checked_out)
    try:
        found = await asyncio.gather(*(cache.verify(engine.connect, key) for _ in range(50)))
    finally:
        event.remove(engine.sync_engine.pool, "checkout", checked_out)
    assert {p.name for p in found} == {"burst"}
    # One version read; the other 49 waited for it without a pooled connection each.
    assert checkouts == 1
