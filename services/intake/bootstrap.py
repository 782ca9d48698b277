"""Composition root of intake: wiring only."""
from __future__ import annotations

from shared.runtime import ServiceContext, ServiceSpec

from .api import build_router
from .entrypoints import consumers_and_loops, count_rejection
from .projection import PROJECTION


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    subscriptions, loops = consumers_and_loops(ctx)
    return ServiceSpec(subscriptions=subscriptions, loops=loops, routers=[build_router(ctx)],
                       on_invalid_request=count_rejection, projection=PROJECTION,
                       key_limits=False)  # per source, by its configuration (intake.rate_limit), in its routes
