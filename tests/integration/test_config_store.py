from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import httpx
import pytest

from shared.auth import create_key
from shared.config import ConfigError
from shared.config_store import ConfigHolder, apply_config, load_latest
from shared.settings import Settings
from tests.support import service_apps


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


async def test_every_service_shows_a_new_version_on_get_v1_config_without_a_restart(
        engine, producer, database_url, kafka_bootstrap) -> None:
    def config(default_tier: str) -> str:
        # A new digest each run: the session's database keeps earlier tests' versions.
        return (f"# {uuid.uuid4()}\ntiers: {{default: {default_tier}}}\n"
                "channels: {hook: {url: 'https://hooks.example.com/x', secret: s3cret-signing}}\n")

    first = config("C")
    async with engine.begin() as conn:
        admin = await create_key(conn, "config-watcher", "admin")
        source = await create_key(conn, "config-source", "source")
        await apply_config(conn, first)
        current = await load_latest(conn)
    apps = service_apps(engine, producer, Settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap), first)
    for app, _ in apps.values():
        app.state.ctx.config.current = current  # as `leadsla serve` starts: the active version
    stop = asyncio.Event()
    watchers = [asyncio.create_task(app.state.ctx.config.watch(stop, 0.05)) for app, _ in apps.values()]

    async def shown(key: str) -> dict[str, httpx.Response]:
        found = {}
        for name, (app, _) in apps.items():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                         headers={"Authorization": f"Bearer {key}"}) as client:
                found[name] = await client.get("/v1/config")
        return found

    try:
        assert {r.status_code for r in (await shown(source)).values()} == {403}  # admin only
        before = await shown(admin)
        assert {r.json()["version"] for r in before.values()} == {current.version}
        assert not any("s3cret-signing" in r.text for r in before.values())  # secrets masked
        async with engine.begin() as conn:
            newer, changed = await apply_config(conn, config("B"))
        assert changed and newer > current.version
        deadline = time.monotonic() + 10
        while {(r.json()["version"], r.json()["config"]["tiers"]["default"])
               for r in (await shown(admin)).values()} != {(newer, "B")}:
            assert time.monotonic() < deadline, "a service kept the old version"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        for task in watchers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
