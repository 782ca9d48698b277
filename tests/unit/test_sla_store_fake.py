"""The store contract, against the in-memory fake the handler unit tests use."""
from __future__ import annotations

import pytest

from services.sla_clock.adapters import InMemoryClockStore
from tests.sla_store_contract import ClockStoreContract


class TestInMemoryClockStore(ClockStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryClockStore:
        return InMemoryClockStore()
