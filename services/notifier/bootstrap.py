"""Composition root of the notifier: escalate on SLA events, deliver in a background loop."""
from __future__ import annotations

import asyncio
from typing import Any

import httpx
import structlog
from fastapi import APIRouter, Depends
from sqlalchemy import select

from leadsla.shared.aio import sleep_unless_stopped
from leadsla.shared.consumer import Subscription
from leadsla.shared.events import TOPIC_SLA, CloudEvent
from leadsla.shared.http import require_key
from leadsla.shared.runtime import ServiceContext, ServiceSpec
from leadsla.shared.uow import UnitOfWork

from .handlers import deliver_due, describe, escalate
from .tables import deliveries

log = structlog.get_logger()
DELIVERY_POLL_SECONDS = 0.25


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    async def on_sla(event: CloudEvent, uow: UnitOfWork) -> None:
        if event.type in ("sla.breached", "sla.warning"):
            await escalate(uow, ctx.config.config, event, ctx.clock.now())

    async def delivery_loop(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(follow_redirects=False) as client:
            while not stop.is_set():
                sent = 0
                try:
                    async with ctx.uow() as uow:
                        sent = await deliver_due(uow, ctx.config.config, client, ctx.clock.now())
                        await uow.commit()
                except Exception as exc:
                    log.warning("notifier.delivery_failed", error=str(exc))
                if sent == 0:
                    await sleep_unless_stopped(stop, DELIVERY_POLL_SECONDS)

    api = APIRouter()

    @api.get("/v1/leads/{lead_id}/notifications", dependencies=[Depends(require_key("admin"))])
    async def lead_notifications(lead_id: str) -> dict[str, Any]:
        async with ctx.engine.connect() as conn:
            rows = (await conn.execute(select(deliveries).where(deliveries.c.lead_id == lead_id)
                                       .order_by(deliveries.c.next_attempt_at))).all()
        return {"lead_id": lead_id, "notifications": [describe(r) for r in rows]}

    return ServiceSpec(
        subscriptions=[Subscription("notifier", (TOPIC_SLA,), on_sla)],
        loops=[delivery_loop],
        routers=[api],
    )
