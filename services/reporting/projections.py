"""The consumer's entry into reporting: every event of the projected topics goes through
`handlers.project` on the Postgres store, inside the consumer's transaction (the event id is
recorded in `processed_events` and the timeline in that same transaction, so a redelivered
event changes nothing)."""
from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from shared.config import Config
from shared.events import CloudEvent

from . import handlers
from .adapters import PostgresReadModels


async def project(conn: AsyncConnection, event: CloudEvent, config: Config | None) -> None:
    await handlers.project(PostgresReadModels(conn), event, handlers.calendars(config))
