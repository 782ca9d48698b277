"""The store contract (tests/contract/notifier_store.py) against the in-memory fake."""
from __future__ import annotations

import pytest

from services.notifier.adapters import InMemoryStore
from tests.contracts.notifier_store import NotifierStoreContract, event_of


class MemoryWorld:
    def __init__(self) -> None:
        self.store = InMemoryStore()

    async def record(self, *payloads) -> None:
        for payload in payloads:
            self.store.apply(event_of(payload, stream="contract"))

    async def read(self, question):
        return await question(self.store)


class TestInMemoryNotifierStore(NotifierStoreContract):
    @pytest.fixture
    def world(self) -> MemoryWorld:
        return MemoryWorld()
