"""The store contract (tests/contract/notifier_store.py) against Postgres: events recorded
through the projection in a unit of work, questions asked of `PostgresStore`."""
from __future__ import annotations

import asyncio

import pytest

from services.notifier.adapters import PostgresStore
from services.notifier.projection import PROJECTION
from shared.uow import UnitOfWork
from tests.contracts.notifier_store import NotifierStoreContract, event_of


class PostgresWorld:
    def __init__(self, engine) -> None:
        self.engine = engine

    async def record(self, *payloads) -> None:
        async with UnitOfWork(self.engine, "notifier", asyncio.Event(), PROJECTION) as uow:
            for payload in payloads:
                event = event_of(payload, stream="contract")
                await uow.record(None, event, stream=event.subject or "contract")
            await uow.commit()

    async def read(self, question):
        async with self.engine.connect() as conn:
            return await question(PostgresStore(conn))


class TestPostgresNotifierStore(NotifierStoreContract):
    @pytest.fixture
    def world(self, engine) -> PostgresWorld:
        return PostgresWorld(engine)
