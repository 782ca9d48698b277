"""Intake's store contract against Postgres: the events go through the projection (the code that
records them live), each test in a transaction that is rolled back."""
from __future__ import annotations

import pytest

from services.intake.adapters import PostgresIntakeStore
from services.intake.projection import PROJECTION
from tests.contracts.intake_store import Harness, IntakeStoreContract


class TestPostgresIntakeStore(IntakeStoreContract):
    @pytest.fixture
    async def harness(self, engine):
        async with engine.connect() as conn:
            await conn.begin()

            async def apply(events) -> None:
                await PROJECTION.apply(conn, events)

            yield Harness(PostgresIntakeStore(conn), apply)
            await conn.rollback()
