"""Postgres access: one async engine per process, a schema per service, and the tables every
service schema has: `events` (the service's event store, see eventstore.py) and
`processed_events` (the ids a consumer has already handled, written in the same transaction as
the handler's effects)."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import asyncpg
import orjson
import structlog
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    cast,
    column,
    event,
    func,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql.dml import Insert
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services import SERVICES

from .settings import database_url_for_asyncpg

log = structlog.get_logger()

SERVICE_SCHEMAS = tuple(s.schema for s in SERVICES.values())
PLATFORM_SCHEMA = "leadsla"

metadata = MetaData()


def processed_events_table(schema: str) -> Table:
    return Table(
        "processed_events",
        metadata,
        Column("consumer", String, primary_key=True),
        Column("event_id", String, primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        schema=schema,
    )


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

# Dead letters keep the original record whole here; the topic carries a reference and a prefix,
# because the original wrapped in an envelope can exceed the broker's record limit.
deadletters = Table(
    "deadletters",
    metadata,
    Column("id", String, primary_key=True),
    Column("service", String, nullable=False),
    Column("topic", String, nullable=False),
    Column("partition", BigInteger, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("key", Text),
    Column("original", LargeBinary, nullable=False),
    Column("error", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
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


def insert_rows(table: Table, names: Sequence[str]) -> Insert:
    """INSERT INTO table (names) SELECT ... FROM json_to_recordset(:rows): any number of rows in one
    statement that compiles once and is planned once (an executemany runs a statement per row, and
    arrays cost the driver a check per element); execute it with {"rows": json_rows(rows)}. Rows
    go in in their order; a missing key is NULL; binary columns travel as UTF-8 text."""
    source = func.json_to_recordset(cast(bindparam("rows", type_=Text), JSON)).table_valued(
        *(column(name, Text if isinstance(table.c[name].type, LargeBinary) else table.c[name].type) for name in names)
    ).render_derived(with_types=True)
    return pg_insert(table).from_select(list(names), select(*(
        func.convert_to(source.c[name], "UTF8") if isinstance(table.c[name].type, LargeBinary) else source.c[name]
        for name in names)))


def json_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """The `rows` parameter of `insert_rows`: times as RFC 3339, bytes decoded as UTF-8."""
    return orjson.dumps(rows, default=_bytes_as_text).decode()


def _bytes_as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def any_text(values: Iterable[str]) -> Any:
    """`column == any_text(values)`: `= ANY(:values)` with one text[] parameter, a statement that
    compiles once, not an IN list rendered anew for every length."""
    return func.any(bindparam("values", list(values), type_=ARRAY(String)))


async def keep_dead_letter(conn: AsyncConnection, *, letter_id: str, service: str, topic: str, partition: int,
                           offset: int, key: str | None, original: bytes, error: str) -> None:
    """Keep a dead-lettered record whole (`deadletters`), once: written again, nothing changes."""
    await conn.execute(pg_insert(deadletters).values(
        id=letter_id, service=service, topic=topic, partition=partition, offset=offset, key=key, original=original,
        error=error).on_conflict_do_nothing())


async def xact_lock(conn: AsyncConnection, name: str) -> None:
    """Serialise transactions that touch the same `name` until this transaction ends."""
    await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))


_XACT_LOCKS = text(
    "SELECT pg_advisory_xact_lock(h) FROM "
    "(SELECT DISTINCT hashtext(n) AS h FROM unnest(CAST(:names AS text[])) AS n ORDER BY 1) AS ordered"
)


async def xact_locks(conn: AsyncConnection, names: Iterable[str]) -> None:
    """`xact_lock` for many names in one round trip, taken in hash order: every transaction
    takes its locks in the same order, so none waits in a circle. One statement whatever the
    number of names (a single prepared statement, nothing to compile per call)."""
    wanted = list(set(names))
    if wanted:
        await conn.execute(_XACT_LOCKS, {"names": wanted})


async def xact_lock_shared_waiting(conn: AsyncConnection, name: str, *, up_to: float) -> None:
    """`pg_advisory_xact_lock_shared` on `name`, waiting up to `up_to` seconds whatever the
    engine's statement timeout: for a lock that a long operation holds on purpose (a rebuild),
    where waiting is no outage. Through asyncpg, whose calls take a timeout of their own."""
    raw = (await conn.get_raw_connection()).driver_connection
    if not raw.is_in_transaction():  # SQLAlchemy begins with the first statement; the lock must be inside
        await conn.execute(select(1))
    await raw.execute("SELECT pg_advisory_xact_lock_shared(hashtext($1))", name, timeout=up_to)


def application_name(service: str) -> str:
    """How a service's connections name themselves in pg_stat_activity (the SLA clock's watermark
    looks for the producers' open transactions by it)."""
    return f"leadsla-{service}"


def make_engine(database_url: str, *, pool_size: int = 5, service: str | None = None,
                statement_timeout: float | None = None) -> AsyncEngine:
    """An engine with the project's settings. `statement_timeout` (a running service's, see
    `Settings.database_statement_timeout_seconds`): a statement not answered within it fails with
    TimeoutError, which `is_database_unavailable` counts as an outage. Without it (migrations,
    replay, the CLI's other commands) a statement may take as long as it needs."""
    # No pool_pre_ping: it costs a round trip per transaction, and a dead pooled connection
    # already surfaces as a transient error that the consumer and relay loops retry.
    # hide_parameters: SQL errors end up in logs, and their parameters hold personal data.
    # Short connect and pool timeouts: during an outage a request answers 503 in seconds
    # instead of hanging for asyncpg's default minute.
    connect_args: dict = {"timeout": 5}
    if service is not None:
        # force_custom_plan: statements are prepared once per connection, and after five runs
        # Postgres would keep a generic plan made while the service's tables were nearly empty
        # (a sequential scan for `lead_id = ANY($1)`) until an autoanalyze happens to invalidate it;
        # on a fresh or fast-growing table that is a scan of every row per batch. Planning each
        # run for its actual arguments costs far less: the statements are mostly one per batch.
        connect_args["server_settings"] = {"application_name": application_name(service),
                                           "plan_cache_mode": "force_custom_plan"}
    if statement_timeout is not None:
        connect_args["command_timeout"] = statement_timeout
    engine = create_async_engine(database_url_for_asyncpg(database_url), pool_size=pool_size, max_overflow=5,
                                 hide_parameters=True, pool_timeout=5, connect_args=connect_args,
                                 json_serializer=_json_text, json_deserializer=orjson.loads)
    if statement_timeout is not None:
        event.listen(engine.sync_engine, "handle_error", _discard_connection_on_timeout)
    return engine


def _discard_connection_on_timeout(context: ExceptionContext) -> None:
    """A statement that timed out leaves its connection waiting for the server to confirm the
    cancel that asyncpg sends, and SQLAlchemy would roll it back, then close it gracefully: each
    waits for a server that, frozen, never answers. So the connection is closed at once and
    thrown away (not returned to the pool): the caller fails after one timeout, and the server,
    when it answers again, finds the connection gone and rolls its transaction back."""
    if isinstance(context.original_exception, TimeoutError):
        context.is_disconnect = True
        if context.connection is not None and not context.connection.invalidated:
            context.connection.connection.driver_connection.terminate()


def _json_text(value: object) -> str:
    """JSON and JSONB columns: orjson is several times faster than the json module both ways
    (decoding was most of a replay's CPU); non-string keys become strings, as json.dumps does."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# SQLSTATE classes and codes that mean "the database cannot serve right now", not "this is wrong":
# connection exceptions, insufficient resources (too many connections), operator intervention
# (admin/crash shutdown, starting up), serialization failures and deadlocks.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57P")
_RETRYABLE_SQLSTATES = ("40001", "40P01")


def wrapped_errors(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps (a driver error under SQLAlchemy's, a cause, a context), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__


def is_database_unavailable(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) says the database is down or overloaded: retry later."""
    for current in wrapped_errors(exc):
        # TimeoutError: no answer within the statement or connect timeout; sqlalchemy's: no pooled
        # connection came free in time (a burst right after an outage, or every connection waiting
        # on a server that does not answer).
        if isinstance(current, (ConnectionError, TimeoutError, sa_exc.TimeoutError,
                                asyncpg.exceptions.ConnectionDoesNotExistError)):
            return True
        # asyncpg raises InterfaceError for a closed connection, but DataError (a subclass) for a
        # value it cannot encode: only the first is an outage.
        if type(current) is asyncpg.InterfaceError and "connection" in str(current).lower():
            return True
        if isinstance(current, OSError):  # refused, reset, or a unix socket that is gone
            return True
        sqlstate = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(sqlstate, str) and (sqlstate.startswith(_UNAVAILABLE_SQLSTATE_CLASSES)
                                          or sqlstate in _RETRYABLE_SQLSTATES):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
    return False


def is_deadlock(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) is Postgres ending this transaction to break a deadlock."""
    return any(getattr(current, "sqlstate", None) == "40P01" for current in wrapped_errors(exc))


def is_timeout(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) is a statement that got no answer in time."""
    return any(isinstance(current, TimeoutError) for current in wrapped_errors(exc))


class OutageLog:
    """Logs one line when the database becomes unreachable and one when it is back, instead of
    a traceback per failed request or retry."""

    def __init__(self) -> None:
        self.down_since: float | None = None

    def down(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("database.unavailable", error=type(exc).__name__,
                        sqlstate=getattr(getattr(exc, "orig", exc), "sqlstate", None))

    def up(self) -> None:
        if self.down_since is not None:
            log.info("database.available_again", outage_seconds=round(time.monotonic() - self.down_since, 1))
            self.down_since = None


database_outage = OutageLog()
