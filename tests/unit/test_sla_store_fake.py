"""The store contract, against the in-memory fake the handler unit tests use."""
from __future__ import annotations

import pytest

from services.sla_clock.adapters import InMemoryClockStore
from tests.contracts.sla_store import ClockStoreContract


class TestInMemoryClockStore(ClockStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryClockStore:
        return InMemoryClockStore()
