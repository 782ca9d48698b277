"""A database of a test module's own, for router tests that read or rebuild whole tables (other
modules write the router's store and tables by hand)."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
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


@pytest.fixture(scope="module")
async def own_database(postgres_server_url: str) -> AsyncIterator[OwnDatabase]:
    name = f"leadsla_router_own_{uuid.uuid4().hex[:8]}"
    dsn = postgres_server_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    await upgrade(engine)
    yield OwnDatabase(url, engine)
    await engine.dispose()
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()
