"""The store contract against Postgres: each test in a transaction of its own, rolled back."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.reporting.adapters import PostgresReadModels
from tests.contracts.reporting_store import ReadModelStoreContract


class TestPostgresReadModels(ReadModelStoreContract):
    @pytest.fixture
    async def store(self, engine: AsyncEngine) -> AsyncIterator[PostgresReadModels]:
        async with engine.connect() as conn:
            await conn.begin()
            yield PostgresReadModels(conn)
            await conn.rollback()
