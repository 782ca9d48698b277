"""Composition root of the router."""
from __future__ import annotations

import asyncio

from shared.consumer import Subscription, bind
from shared.events import TOPIC_INTAKE, TOPIC_NOTIFICATIONS
from shared.runtime import ServiceContext, ServiceSpec

from .entrypoints import build_api, queue_loop
from .handlers import ESCALATION_HANDLERS, INTAKE_BATCHED, INTAKE_HANDLERS, RouterDeps
from .projection import PROJECTION


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    wake_queue = asyncio.Event()
    ctx.config.reloaded.append(wake_queue)  # owners added, hours or the check interval changed

    def deps() -> RouterDeps:
        return RouterDeps(ctx.config.config, ctx.clock, wake_queue)

    return ServiceSpec(
        # Routing latency is a goal (issue 8): Tansu answers a held fetch only when its wait runs
        # out, even when records arrived meanwhile, so the wait is a floor under every lead's
        # latency: 5 ms for new leads (empty fetches cost a little more CPU while idle);
        # escalations keep the default.
        subscriptions=[Subscription("router", (TOPIC_INTAKE,), bind(INTAKE_HANDLERS, deps),
                                    batched=bind(INTAKE_BATCHED, deps), fetch_max_wait_ms=5),
                       Subscription("router-escalations", (TOPIC_NOTIFICATIONS,), bind(ESCALATION_HANDLERS, deps))],
        routers=[build_api(ctx, wake_queue)],
        loops=[queue_loop(ctx, wake_queue)],
        projection=PROJECTION,
    )
