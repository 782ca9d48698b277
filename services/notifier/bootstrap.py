"""Composition root of the notifier: consume lead, routing, SLA and its own events; fire
escalation steps and deliver in a background loop; serve the subscription API."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import structlog

from shared.aio import next_backoff, sleep_unless_stopped
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
        backoff = DELIVERY_POLL_SECONDS
        async with httpx.AsyncClient(follow_redirects=False) as client:
            deliverer = Deliverer(ctx.uow, lambda: ctx.config.config,
                                  Senders(client, ctx.engine, lambda: ctx.config.config), ctx.clock)
            while not stop.is_set():
                try:
                    done = await deliverer.start_round()
                    backoff = DELIVERY_POLL_SECONDS
                except Exception as exc:  # database down: nothing is lost, leases expire and retry
                    log.warning("notifier.delivery_round_failed", error=type(exc).__name__)
                    done = 0
                    backoff = next_backoff(backoff, cap=5.0)
                if done == 0:
                    await sleep_unless_stopped(stop, backoff)
            await deliverer.drain(timeout=10)

    async def retention_loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with ctx.uow() as uow:
                    keep = timedelta(seconds=ctx.config.config.notifier.keep_delivered)
                    now = ctx.clock.now()
                    pruned = await prune_delivered(uow, now - keep, now)
                    await uow.commit()
                if pruned:
                    log.info("notifier.pruned_deliveries", rows=pruned)
            except Exception as exc:  # retention can wait for the next round
                log.warning("notifier.prune_failed", error=type(exc).__name__)
            await sleep_unless_stopped(stop, RETENTION_EVERY_SECONDS)

    return ServiceSpec(
        subscriptions=[Subscription("notifier", TOPICS, bind(HANDLERS, deps), otherwise=unknown_type)],
        loops=[delivery_loop, retention_loop],
        routers=[build_router(ctx)],
        projection=PROJECTION,
    )
