"""docker-compose's one-shot `setup` (deploy/setup.sh) run for real against an empty PostgreSQL
database, twice, as a `docker compose up` and a restart would: it migrates, applies the compose
configuration and creates one admin key, kept in the keys directory and printed; the second run
keeps the same key."""
from __future__ import annotations

import asyncio
import os
import stat
import sys
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from shared.auth import verify_key
from shared.config_store import load_latest
from shared.db import make_engine
from shared.migrate import current_revision, head_revision

ROOT = Path(__file__).parents[2]


async def run_setup(env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec("sh", str(ROOT / "deploy" / "setup.sh"), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_setup_on_an_empty_database_then_again(postgres_server_url: str, tmp_path: Path) -> None:
    name = f"leadsla_setup_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_server_url.replace("postgresql+asyncpg://", "postgresql://"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    # `leadsla` as the image has it, but from this checkout.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "leadsla"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "from leadsla.cli import app; app()" "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    keys = tmp_path / "keys"
    keys.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "LEADSLA_DATABASE_URL": url, "SETUP_CONFIG": str(ROOT / "deploy" / "compose-config.yaml"),
           "SETUP_KEYS_DIR": str(keys)}
    engine = make_engine(url)
    try:
        code, out, err = await run_setup(env)
        assert code == 0, out + err
        key = (keys / "admin-key").read_text().strip()
        assert f"LEADSLA_ADMIN_KEY={key}\n" in out
        async with engine.connect() as conn:
            assert await current_revision(conn) == head_revision()
            principal = await verify_key(conn, key)
            config = await load_latest(conn)
        assert principal is not None and principal.is_admin
        assert config is not None and config.config.channels["ops-webhook"].url.startswith("http://receiver:")

        code, again, err = await run_setup(env)  # a restart of the stack
        assert code == 0, again + err
        assert f"LEADSLA_ADMIN_KEY={key}\n" in again and "unchanged" in again + err
        async with engine.connect() as conn:
            assert (await load_latest(conn)).version == config.version
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(postgres_server_url.replace("postgresql+asyncpg://", "postgresql://"))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
