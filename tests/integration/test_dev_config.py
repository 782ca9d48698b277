"""The configuration `leadsla dev` starts with, on a real Postgres: the example on a first start,
then whatever the admin applied. Restarting `leadsla dev` applied the example again, so a sales-ops
admin's teams, owners and policies (`config apply my-config.yaml`) silently vanished and their
open leads belonged to owners the configuration no longer had."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from leadsla.cli import EXAMPLE_CONFIG, _dev_config
from shared.config_store import apply_config
from shared.db import config_versions
from tests.integration.own_database import fresh_database


async def active_body(database) -> str:
    async with database.engine.connect() as conn:
        return await conn.scalar(
            select(config_versions.c.body).order_by(config_versions.c.version.desc()).limit(1)
        )


async def test_dev_keeps_what_the_admin_applied_and_applies_a_file_only_when_given(
    postgres_server_url: str, tmp_path: Path
) -> None:
    example = EXAMPLE_CONFIG.read_text()
    mine = example.replace("first_response: {target: 1h}", "first_response: {target: 30m}")
    async with fresh_database(postgres_server_url, "leadsla_devcfg") as database:
        version, origin = await _dev_config(database.url, None)  # a first start: the example
        assert version == 1 and "example" in origin and await active_body(database) == example

        async with (
            database.engine.begin() as conn
        ):  # the admin: leadsla config apply my-config.yaml
            assert await apply_config(conn, mine) == (2, True)
        version, origin = await _dev_config(database.url, None)  # leadsla dev, again
        assert (
            version == 2
            and "active configuration" in origin
            and await active_body(database) == mine
        )

        given = tmp_path / "other.yaml"  # leadsla dev --config FILE
        given.write_text(example)
        version, origin = await _dev_config(database.url, given)
        assert version == 3 and str(given) in origin and await active_body(database) == example
