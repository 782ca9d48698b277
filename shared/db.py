"""Postgres access: one async engine per process, a schema per service, and the two tables every
service schema has: `outbox` (events waiting to be published) and `processed_events` (the ids a
consumer has already handled, written in the same transaction as the handler's effects)."""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .settings import database_url_for_asyncpg

SERVICE_SCHEMAS = ("intake", "router", "sla_clock", "notifier", "reporting")
PLATFORM_SCHEMA = "leadsla"

metadata = MetaData()


def outbox_table(schema: str) -> Table:
    return Table(
        "outbox",
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("topic", String, nullable=False),
        Column("key", String, nullable=False),
        Column("event_id", String, nullable=False),
        Column("event_type", String, nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("sent_at", DateTime(timezone=True)),
        Index(f"ix_{schema}_outbox_pending", "id", postgresql_where=text("sent_at IS NULL")),
        schema=schema,
    )


def processed_events_table(schema: str) -> Table:
    return Table(
        "processed_events",
        metadata,
        Column("consumer", String, primary_key=True),
        Column("event_id", String, primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        schema=schema,
    )


OUTBOX = {schema: outbox_table(schema) for schema in SERVICE_SCHEMAS}
PROCESSED = {schema: processed_events_table(schema) for schema in SERVICE_SCHEMAS}

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("role", String, nullable=False),
    Column("secret_sha256", String, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    schema=PLATFORM_SCHEMA,
)

config_versions = Table(
    "config_versions",
    metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=True),
    Column("digest", String, nullable=False),
    Column("body", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    schema=PLATFORM_SCHEMA,
)


async def xact_lock(conn: AsyncConnection, name: str) -> None:
    """Serialise transactions that touch the same `name` until this transaction ends."""
    await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))


def make_engine(database_url: str, *, pool_size: int = 5) -> AsyncEngine:
    # No pool_pre_ping: it costs a round trip per transaction, and a dead pooled connection
    # already surfaces as a transient error that the consumer and relay loops retry.
    return create_async_engine(database_url_for_asyncpg(database_url), pool_size=pool_size, max_overflow=5)
