"""Composition root of the router."""
from __future__ import annotations

import asyncio

from shared.consumer import Subscription
from shared.events import TOPIC_INTAKE, TOPIC_NOTIFICATIONS, CloudEvent
from shared.runtime import ServiceContext, ServiceSpec
from shared.uow import UnitOfWork

from .entrypoints import build_api, queue_loop
from .handlers import on_activity, on_escalation, route_lead
from .projection import PROJECTION


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    wake_queue = asyncio.Event()

    async def on_intake(event: CloudEvent, uow: UnitOfWork) -> None:
        if event.type == "lead.received":
            await route_lead(uow, ctx.config.config, ctx.clock, event)
            if any(e.type == "lead.queued" and e.data["reason"] == "queue_ahead" for e in uow.emitted):
                wake_queue.set()  # someone is free: drain now (it waits for this commit's locks)
        elif event.type == "activity.recorded":
            await on_activity(uow, ctx.config.config, ctx.clock, event)

    async def on_notification(event: CloudEvent, uow: UnitOfWork) -> None:
        if event.type == "escalation.triggered":
            await on_escalation(uow, ctx.config.config, ctx.clock, event)

    return ServiceSpec(
        subscriptions=[Subscription("router", (TOPIC_INTAKE,), on_intake),
                       Subscription("router-escalations", (TOPIC_NOTIFICATIONS,), on_notification)],
        routers=[build_api(ctx, wake_queue)],
        loops=[queue_loop(ctx, wake_queue)],
        projection=PROJECTION,
    )
