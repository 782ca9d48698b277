"""The consumer's entry into reporting: every event of the projected topics goes through
`handlers.project` on the Postgres store, inside the consumer's transaction (the event id is
recorded in `processed_events` and the timeline in that same transaction, so a redelivered
event changes nothing)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from shared.config import Config
from shared.events import PAYLOADS, CloudEvent, Received
from shared.uow import UnitOfWork

from . import handlers
from .adapters import PostgresReadModels


@dataclass(frozen=True)
class ReportingDeps:
    config: Config | None


async def on_event(uow: UnitOfWork, received: Received[Any], deps: ReportingDeps) -> None:
    """Every contract type is projected the same way: into the timeline, then folded (the fold
    picks its projector by payload class, see `domain.PROJECTORS`)."""
    await project(uow.conn, received.envelope, deps.config)


# Reporting keeps every event its topics carry; types outside the contract go to the timeline
# through the subscription's fallback (see bootstrap).
HANDLERS = {cls: on_event for cls in PAYLOADS.values()}


async def project(conn: AsyncConnection, event: CloudEvent, config: Config | None) -> None:
    await handlers.project(PostgresReadModels(conn), event, handlers.calendars(config))
