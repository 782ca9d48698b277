"""Composition root of the notifier: wiring only."""
from __future__ import annotations

from shared.runtime import ServiceContext, ServiceSpec

from .entrypoints import build_router, consumers_and_loops
from .projection import PROJECTION


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    subscription, loops = consumers_and_loops(ctx)
    return ServiceSpec(subscriptions=[subscription], loops=loops, routers=[build_router(ctx)], projection=PROJECTION)
