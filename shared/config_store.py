"""Configuration versions live in Postgres: `leadsla config apply FILE` validates and stores a
new version; running services pick it up within `config_poll_seconds`."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .aio import run_loop, sleep_unless_stopped
from .config import Config, ConfigError, config_digest, parse_config
from .db import config_versions

log = structlog.get_logger()


@dataclass(frozen=True)
class VersionedConfig:
    version: int
    config: Config


async def apply_config(conn: AsyncConnection, text: str) -> tuple[int, bool]:
    """Validate and store `text`; returns (version, changed). Raises ConfigError when invalid."""
    parse_config(text)
    digest = config_digest(text)
    latest = await _latest_row(conn)
    if latest is not None and latest.digest == digest:
        return latest.version, False
    version = await conn.scalar(
        insert(config_versions).values(digest=digest, body=text).returning(config_versions.c.version)
    )
    return int(version), True


@dataclass(frozen=True)
class ConfigPreview:
    """What applying a file would do: the active version (None: nothing applied yet), its text,
    and whether the file differs from it (as `apply_config` judges: by its digest)."""

    active_version: int | None
    active_text: str | None
    changed: bool


async def preview_config(conn: AsyncConnection, text: str) -> ConfigPreview:
    """`apply_config` without storing anything (`config apply --dry-run`). Raises ConfigError
    when invalid."""
    parse_config(text)
    latest = await _latest_row(conn)
    if latest is None:
        return ConfigPreview(None, None, True)
    return ConfigPreview(int(latest.version), latest.body, latest.digest != config_digest(text))


async def _latest_row(conn: AsyncConnection):
    return (
        await conn.execute(select(config_versions).order_by(config_versions.c.version.desc()).limit(1))
    ).first()


async def load_latest(conn: AsyncConnection) -> VersionedConfig | None:
    row = await _latest_row(conn)
    if row is None:
        return None
    try:
        return VersionedConfig(version=int(row.version), config=parse_config(row.body))
    except ConfigError as exc:  # applied before a check it fails was added
        raise ConfigError(f"the active configuration, version {row.version}, is no longer valid; "
                          f"apply a corrected file: {exc}") from None


class ConfigHolder:
    """The effective configuration of a running service, refreshed in the background."""

    def __init__(self, engine: AsyncEngine, current: VersionedConfig) -> None:
        self._engine = engine
        self.current = current
        # Set on every newly loaded version: a loop that sleeps by the configuration (the router's
        # queue check) wakes to act on the new one at once, not after the old wait.
        self.reloaded: list[asyncio.Event] = []

    @property
    def config(self) -> Config:
        return self.current.config

    @property
    def version(self) -> int:
        return self.current.version

    async def refresh(self) -> bool:
        async with self._engine.connect() as conn:
            # The version first: parsing and validating a large file every poll cost a router with
            # 500 owners a fifth of its CPU.
            newest = await conn.scalar(select(func.max(config_versions.c.version)))
            if newest is None or int(newest) == self.current.version:
                return False
            latest = await load_latest(conn)
        if latest is not None and latest.version != self.current.version:
            log.info("config.reloaded", old=self.current.version, new=latest.version)
            self.current = latest
            for event in self.reloaded:
                event.set()
            return True
        return False

    async def watch(self, stop: asyncio.Event, every: float) -> None:
        """Pick up a newly applied version within `every` seconds; on a failed read, keep
        serving the last good version."""
        async def refresh_round() -> float:
            await self.refresh()
            return every

        await sleep_unless_stopped(stop, every)  # the version read at start is current
        await run_loop("config", refresh_round, stop, idle=every, backoff_first=every, backoff_cap=every * 8)
