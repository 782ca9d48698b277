"""Intake's store contract against the in-memory store that handler unit tests use."""
from __future__ import annotations

import pytest

from services.intake.adapters import InMemoryIntakeStore
from tests.contracts.intake_store import Harness, IntakeStoreContract


class TestInMemoryIntakeStore(IntakeStoreContract):
    @pytest.fixture
    def harness(self) -> Harness:
        store = InMemoryIntakeStore()

        async def apply(events) -> None:
            store.apply(events)

        return Harness(store, apply)
