"""Composition root of the router."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select

from leadsla.shared.consumer import Subscription
from leadsla.shared.events import TOPIC_INTAKE, CloudEvent
from leadsla.shared.http import require_key
from leadsla.shared.runtime import ServiceContext, ServiceSpec
from leadsla.shared.uow import UnitOfWork

from .handlers import close_on_disposition, route_lead
from .tables import queue


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    async def on_intake(event: CloudEvent, uow: UnitOfWork) -> None:
        if event.type == "lead.received":
            await route_lead(uow, ctx.config.config, ctx.clock, event)
        elif event.type == "activity.recorded":
            await close_on_disposition(uow, event)

    api = APIRouter()

    @api.get("/v1/queue", dependencies=[Depends(require_key("source"))])
    async def get_queue() -> dict[str, list[dict[str, str]]]:
        async with ctx.engine.connect() as conn:
            rows = await conn.execute(
                select(queue.c.lead_id, queue.c.tier, queue.c.reason, queue.c.queued_at)
                .order_by(queue.c.tier, queue.c.queued_at)
            )
            return {"leads": [
                {"lead_id": r.lead_id, "tier": r.tier, "reason": r.reason, "queued_at": r.queued_at.isoformat()}
                for r in rows
            ]}

    return ServiceSpec(subscriptions=[Subscription("router", (TOPIC_INTAKE,), on_intake)], routers=[api])
