from __future__ import annotations

import pytest

from shared.config import ConfigError
from shared.config_store import ConfigHolder, apply_config, load_latest


async def test_apply_versions_changes_and_services_pick_them_up(engine) -> None:
    async with engine.begin() as conn:
        v1, changed1 = await apply_config(conn, "tiers: {default: C}\n")
        same, changed_again = await apply_config(conn, "tiers: {default: C}\n")
    assert changed1 and not changed_again and same == v1

    async with engine.connect() as conn:
        holder = ConfigHolder(engine, await load_latest(conn))
    async with engine.begin() as conn:
        v2, _ = await apply_config(conn, "tiers: {default: B}\n")
    assert await holder.refresh()
    assert holder.version == v2 > v1 and holder.config.tiers.default == "B"


async def test_an_invalid_file_is_refused_and_the_active_version_stays(engine) -> None:
    async with engine.connect() as conn:
        before = await load_latest(conn)
    with pytest.raises(ConfigError, match="tiers.rules.0.tier"):
        async with engine.begin() as conn:
            await apply_config(conn, "tiers: {rules: [{when: {}}]}\n")
    async with engine.connect() as conn:
        after = await load_latest(conn)
    assert (before and before.version) == (after and after.version)
