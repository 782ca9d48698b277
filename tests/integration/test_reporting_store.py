"""The store contract against Postgres: each test in a transaction of its own, rolled back."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.reporting.adapters import READ_MODELS_LOCK, PostgresReadModels
from shared.db import make_engine
from shared.events import new_event
from tests.contracts.reporting_store import ReadModelStoreContract
from tests.support import eventually


class TestPostgresReadModels(ReadModelStoreContract):
    @pytest.fixture
    async def store(self, engine: AsyncEngine) -> AsyncIterator[PostgresReadModels]:
        async with engine.connect() as conn:
            await conn.begin()
            yield PostgresReadModels(conn)
            await conn.rollback()


async def test_a_live_projection_waits_out_a_rebuild_longer_than_the_statement_timeout(database_url) -> None:
    """A rebuild holds the read models exclusively for as long as it runs; the live projection
    waits for it (that is no outage), not only for a running service's statement timeout."""
    engine = make_engine(database_url, statement_timeout=0.5)
    event = new_event("lead.received", service="intake", lead_id=str(uuid.uuid4()), time=datetime.now(UTC),
                      data={"lead_id": "x"})

    async def project() -> set[str]:
        async with engine.connect() as conn:
            await conn.begin()
            try:
                return await PostgresReadModels(conn).add_to_timeline([(event.subject, event)])
            finally:
                await conn.rollback()

    async def waited_past_the_timeout() -> bool:
        async with engine.connect() as conn:
            return bool(await conn.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND wait_event = 'advisory' AND now() - query_start > interval '1 second'")))

    try:
        async with engine.connect() as rebuild:
            await rebuild.begin()
            await rebuild.execute(select(func.pg_advisory_xact_lock(func.hashtext(READ_MODELS_LOCK))))
            projecting = asyncio.create_task(project())
            await eventually(waited_past_the_timeout, what="the projection waiting longer than the timeout")
            assert not projecting.done()
            await rebuild.rollback()
        assert await projecting == {event.id}
    finally:
        await engine.dispose()
