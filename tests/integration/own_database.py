"""A database of a test module's own, migrated to head, for tests that read or rebuild whole
tables (replay, store contracts): other modules write the same tables by hand."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_engine
from shared.migrate import upgrade


@dataclass(frozen=True)
class OwnDatabase:
    url: str
    engine: AsyncEngine


@asynccontextmanager
async def fresh_database(postgres_server_url: str, prefix: str = "leadsla_own") -> AsyncIterator[OwnDatabase]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    dsn = postgres_server_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        await upgrade(engine)
        yield OwnDatabase(url, engine)
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="module")
async def own_database(postgres_server_url: str) -> AsyncIterator[OwnDatabase]:
    async with fresh_database(postgres_server_url) as database:
        yield database
