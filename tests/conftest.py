"""Real infrastructure for integration and e2e tests: a PostgreSQL server and a Kafka-compatible
broker, taken from LEADSLA_TEST_DATABASE_URL / LEADSLA_TEST_KAFKA_BOOTSTRAP when set, otherwise
started embedded for the session. Unit tests request none of these and start nothing."""
from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from leadsla.devstack import EmbeddedBroker, EmbeddedPostgres
from leadsla.shared.bus import ensure_topics, make_producer
from leadsla.shared.db import make_engine
from leadsla.shared.migrate import upgrade

TEST_PARTITIONS = 3


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("LEADSLA_TEST_DATABASE_URL")
    if given:
        yield given
        return
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")))
    yield server.start()
    server.stop()


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh database for this session, migrated to head."""
    name = f"leadsla_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_server_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    await upgrade(engine)
    await engine.dispose()
    yield url
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_server_url))
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def kafka_bootstrap() -> AsyncIterator[str]:
    given = os.environ.get("LEADSLA_TEST_KAFKA_BOOTSTRAP")
    broker = None
    if given:
        bootstrap = given
    else:
        broker = EmbeddedBroker()
        bootstrap = broker.start()
    await ensure_topics(bootstrap, TEST_PARTITIONS)
    yield bootstrap
    if broker is not None:
        broker.stop()


@pytest.fixture(scope="session")
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(kafka_bootstrap)
    await producer.start()
    yield producer
    await producer.stop()
