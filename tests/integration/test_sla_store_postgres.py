"""The store contract, against Postgres: one unit of work per test, rolled back at the end."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.sla_clock.adapters import PostgresClockStore
from services.sla_clock.projection import PROJECTION
from shared.uow import UnitOfWork
from tests.contracts.sla_store import ClockStoreContract


class TestPostgresClockStore(ClockStoreContract):
    @pytest.fixture
    async def store(self, engine) -> AsyncIterator[PostgresClockStore]:
        async with UnitOfWork(engine, "sla_clock", projection=PROJECTION) as uow:
            yield PostgresClockStore(uow)  # never committed: nothing is left behind

    async def write_apart(self, store, events) -> None:
        async with store.uow.conn.begin_nested():
            await store.record(events)
