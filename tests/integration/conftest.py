from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.clock import ManualClock
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig
from shared.runtime import ServiceContext
from shared.settings import Settings


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 17, 9, 0, tzinfo=UTC))


def _projection(service: str):
    """The service's projection, as its bootstrap gives it to the runtime (None: it has none yet)."""
    module = f"services.{service}.projection"
    if importlib.util.find_spec(module) is None:
        return None
    return importlib.import_module(module).PROJECTION


@pytest.fixture
def make_ctx(
    engine: AsyncEngine, producer: AIOKafkaProducer, clock: ManualClock, database_url: str, kafka_bootstrap: str
) -> Callable[[str, str], ServiceContext]:
    """A service's context wired to the real database and broker, with a manual clock."""

    def build(service: str, config_yaml: str, version: int = 1) -> ServiceContext:
        settings = Settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap)
        holder = ConfigHolder(engine, VersionedConfig(version, parse_config(config_yaml)))
        return ServiceContext(name=service, settings=settings, engine=engine, producer=producer, clock=clock,
                              config=holder, relay_wakeup=asyncio.Event(), projection=_projection(service))

    return build
