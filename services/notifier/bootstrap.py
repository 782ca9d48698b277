"""Composition root of the notifier: consume lead, routing, SLA and its own events; fire
escalation steps and deliver in a background loop; serve the subscription API."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import structlog

from shared.aio import run_loop
from shared.consumer import Subscription, bind
from shared.events import TOPIC_INTAKE, TOPIC_NOTIFICATIONS, TOPIC_ROUTING, TOPIC_SLA, CloudEvent
from shared.runtime import ServiceContext, ServiceSpec
from shared.uow import UnitOfWork

from .api import build_router
from .channels import Senders
from .delivery import Deliverer, prune_delivered
from .handlers import HANDLERS, NotifierDeps, fan_out
from .projection import PROJECTION

log = structlog.get_logger()
DELIVERY_POLL_SECONDS = 0.25
RETENTION_EVERY_SECONDS = 3600
TOPICS = (TOPIC_INTAKE, TOPIC_ROUTING, TOPIC_SLA, TOPIC_NOTIFICATIONS)


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    def deps() -> NotifierDeps:
        return NotifierDeps(ctx.config.config, ctx.clock.now())

    async def unknown_type(uow: UnitOfWork, event: CloudEvent) -> None:
        await fan_out(uow, event, ctx.clock.now())  # a subscription's "lead.*" wants a type added later too

    async def delivery_loop(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(follow_redirects=False) as client:
            deliverer = Deliverer(ctx.uow, lambda: ctx.config.config,
                                  Senders(client, ctx.engine, lambda: ctx.config.config), ctx.clock)

            async def delivery_round() -> float:
                return 0 if await deliverer.start_round() else DELIVERY_POLL_SECONDS

            # Database down: nothing is lost, leases expire and the round is tried after the backoff.
            await run_loop("notifier.delivery", delivery_round, stop, idle=DELIVERY_POLL_SECONDS,
                           backoff_first=DELIVERY_POLL_SECONDS)
            await deliverer.drain(timeout=10)

    async def retention_round() -> float:
        async with ctx.uow() as uow:
            keep = timedelta(seconds=ctx.config.config.notifier.keep_delivered)
            now = ctx.clock.now()
            pruned = await prune_delivered(uow, now - keep, now)
            await uow.commit()
        if pruned:
            log.info("notifier.pruned_deliveries", rows=pruned)
        return RETENTION_EVERY_SECONDS

    async def retention_loop(stop: asyncio.Event) -> None:
        await run_loop("notifier.retention", retention_round, stop, idle=RETENTION_EVERY_SECONDS,
                       backoff_first=60, backoff_cap=RETENTION_EVERY_SECONDS)

    return ServiceSpec(
        subscriptions=[Subscription("notifier", TOPICS, bind(HANDLERS, deps), otherwise=unknown_type)],
        loops=[delivery_loop, retention_loop],
        routers=[build_router(ctx)],
        projection=PROJECTION,
    )
