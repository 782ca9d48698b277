"""The router store's contract (tests/router_store_contract.py) against the in-memory fake."""
from __future__ import annotations

import pytest

from services.router.adapters import InMemoryRouterData, InMemoryRouterStore
from tests.contracts.router_store import RouterStoreContract


class TestInMemoryRouterStore(RouterStoreContract):
    @pytest.fixture(autouse=True)
    def _data(self) -> None:
        self.data = InMemoryRouterData()

    def unit(self) -> InMemoryRouterStore:
        return InMemoryRouterStore(self.data)
