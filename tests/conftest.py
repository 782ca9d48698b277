"""Real infrastructure for integration and e2e tests: a PostgreSQL server and a Kafka-compatible
broker, from the backend LEADSLA_TEST_BACKEND names (tests/backends.py: embedded by default,
containers, external). Unit tests request none of these and start nothing."""
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
from shared.bus import ensure_topics, make_producer
from shared.db import make_engine
from shared.migrate import upgrade
from tests.backends import Backend, BackendError, choose_backend, containers, docker_problem

TEST_PARTITIONS = 3


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos-long", action="store_true", default=False,
                     help="tests/chaos: a long chaos run (600 s of load; LEADSLA_CHAOS_SECONDS sets another)")


def pytest_sessionstart(session: pytest.Session) -> None:
    # A backend that cannot run stops the run at once with one line, before any test is collected.
    try:
        backend = choose_backend(os.environ)
    except BackendError as exc:
        pytest.exit(str(exc), returncode=4)
    if backend.name == "containers" and (problem := docker_problem()):
        pytest.exit(f"LEADSLA_TEST_BACKEND=containers: {problem}", returncode=4)


@pytest.fixture(scope="session")
def backend() -> Backend:
    return choose_backend(os.environ)


@pytest.fixture(scope="session")
def container_addresses(backend: Backend) -> Iterator[tuple[str, str] | None]:
    if backend.name != "containers":
        yield None
        return
    with containers() as addresses:
        yield addresses


@pytest.fixture(scope="session")
def postgres_server_url(backend: Backend, container_addresses, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if container_addresses is not None:
        yield container_addresses[0]
        return
    if backend.database_url:
        yield backend.database_url
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
async def kafka_bootstrap(backend: Backend, container_addresses) -> AsyncIterator[str]:
    given = container_addresses[1] if container_addresses is not None else backend.kafka_bootstrap
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
