"""The router store's contract (tests/router_store_contract.py) against Postgres: the projection
tables written by services/router/projection.py, read by PostgresRouterStore."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text

from services.router.adapters import PostgresRouterStore
from services.router.projection import PROJECTION
from shared.uow import UnitOfWork
from tests.contracts.router_store import RouterStoreContract
from tests.integration.own_database import OwnDatabase, own_database  # noqa: F401 - a fixture


class TestPostgresRouterStore(RouterStoreContract):
    @pytest.fixture(autouse=True)
    async def _database(self, own_database: OwnDatabase) -> None:  # noqa: F811
        self.engine = own_database.engine
        async with self.engine.begin() as conn:  # each test starts from an empty router
            tables = ", ".join(f"{t.schema}.{t.name}" for t in PROJECTION.tables)
            await conn.execute(text(f"TRUNCATE {tables}, router.events"))

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[PostgresRouterStore]:
        async with UnitOfWork(self.engine, "router", projection=PROJECTION) as uow:
            yield PostgresRouterStore(uow)
