"""Alembic, driven programmatically so `leadsla migrate`, `leadsla dev` and tests share one path."""
from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_SCHEMA = "leadsla"


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


@cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def is_known_revision(revision: str) -> bool:
    """False for a revision this release has no migration for: a newer release migrated the database."""
    try:
        return ScriptDirectory.from_config(_alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


async def current_revision(conn: AsyncConnection) -> str | None:
    # Read the version table directly: alembic's MigrationContext logs two INFO lines per call,
    # and /readyz calls this every few seconds.
    exists = await conn.scalar(text("SELECT to_regclass(:t)"), {"t": f"{VERSION_SCHEMA}.alembic_version"})
    if exists is None:
        return None
    return await conn.scalar(text(f"SELECT version_num FROM {VERSION_SCHEMA}.alembic_version LIMIT 1"))


async def upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        # Serialise concurrent `migrate` runs (several services starting at once).
        await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7305128)")
        await conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {VERSION_SCHEMA}")
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "head"))
