"""What every benchmark stands on: a PostgreSQL server and a broker (embedded, or the ones
LEADSLA_TEST_DATABASE_URL / LEADSLA_TEST_KAFKA_BOOTSTRAP name) and a fresh database of its own."""
from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from leadsla.devstack import EmbeddedBroker, EmbeddedPostgres


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def infrastructure() -> AsyncIterator[tuple[str, str]]:
    """Yields (database_url, kafka_bootstrap); stops what it started."""
    pg = broker = None
    server_url = os.environ.get("LEADSLA_TEST_DATABASE_URL")
    if not server_url:
        statements = {"shared_preload_libraries": "pg_stat_statements"}  # statement statistics, on request
        pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="leadsla-bench-")) / "pg",
                              statements if os.environ.get("LEADSLA_BENCH_PG_STATEMENTS") else None)
        server_url = pg.start()
    bootstrap = os.environ.get("LEADSLA_TEST_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = EmbeddedBroker()
        bootstrap = broker.start()
    try:
        name = f"leadsla_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False), bootstrap
    finally:
        if broker:
            broker.stop()
        if pg:
            pg.stop()
