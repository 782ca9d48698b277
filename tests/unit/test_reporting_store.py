"""The store contract against the in-memory fake the handler unit tests use."""
from __future__ import annotations

import pytest

from services.reporting.adapters import InMemoryReadModels
from tests.contracts.reporting_store import ReadModelStoreContract


class TestInMemoryReadModels(ReadModelStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryReadModels:
        return InMemoryReadModels()
