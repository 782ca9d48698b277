from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.clock import ManualClock
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig
from shared.replay import Projection
from shared.runtime import ServiceContext
from shared.settings import Settings


def _projection(service: str) -> Projection | None:
    """The service's projection, as its bootstrap would give it (None for a service without)."""
    try:
        return importlib.import_module(f"services.{service}.projection").PROJECTION
    except ModuleNotFoundError:
        return None


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 17, 9, 0, tzinfo=UTC))


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
