"""The consumer's entry into reporting: every event of the projected topics goes through
`handlers.project` on the Postgres store, inside the consumer's transaction (the event id is
recorded in `processed_events` and the timeline in that same transaction, so a redelivered
event changes nothing)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from shared.config import TOUCH_SKEW, Config, per_config
from shared.events import PAYLOADS, CloudEvent, Received
from shared.uow import UnitOfWork

from . import handlers
from .adapters import PostgresReadModels


@dataclass(frozen=True)
class ReportingDeps:
    config: Config | None
    touch_skew: timedelta = TOUCH_SKEW  # as the SLA clock's (LEADSLA_SLA_TOUCH_SKEW_SECONDS)


async def on_events(uow: UnitOfWork, received: list[Received[Any]], deps: ReportingDeps) -> None:
    """Every contract type is projected the same way, a run at a time: into the timeline, then
    folded (the fold picks its projector by payload class, see `domain.PROJECTORS`)."""
    await project(uow.conn, [r.envelope for r in received], deps.config, deps.touch_skew)


# Reporting keeps every event its topics carry, a fetched batch's run of them at once; types
# outside the contract go to the timeline through the subscription's fallback (see bootstrap).
BATCHED = {cls: on_events for cls in PAYLOADS.values()}


async def project(conn: AsyncConnection, events: list[CloudEvent], config: Config | None,
                  touch_skew: timedelta = TOUCH_SKEW) -> None:
    # The calendars kept from batch to batch while the configuration stays the same (a calendar
    # remembers its span edges: built anew per batch, every batch started cold).
    await handlers.project(PostgresReadModels(conn), events, _calendars(config), touch_skew)


_calendars = per_config(handlers.calendars)
