"""Composition root of the SLA clock: wiring only."""
from __future__ import annotations

from shared.runtime import ServiceContext, ServiceSpec

from .entrypoints import build_api, clock_rules, make_watermark, subscription, timer_loop
from .projection import PROJECTION


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    rules, watermark = clock_rules(ctx), make_watermark(ctx)
    return ServiceSpec(
        subscriptions=[subscription(ctx, rules, watermark)],
        loops=[timer_loop(ctx, watermark, rules), watermark.run],
        routers=[build_api(ctx, watermark)],
        projection=PROJECTION,
    )
