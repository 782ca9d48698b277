"""Composition root of the SLA clock: consumers that start and stop timers, and the loop that
fires them on time."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import structlog
from fastapi import APIRouter, Depends
from sqlalchemy import select

from shared import metrics
from shared.consumer import Subscription, bind
from shared.events import TOPIC_INTAKE, TOPIC_ROUTING
from shared.http import ProblemError, require_key
from shared.runtime import ServiceContext, ServiceSpec

from .domain import ClockRules
from .handlers import HANDLERS, SlaDeps, fire_due, next_due, open_timer_counts
from .tables import timers
from .views import timer_view
from .watermark import InputWatermark, describe, lag_seconds

log = structlog.get_logger()
FIRE_BATCH = 200
GAUGE_REFRESH_SECONDS = 5.0
GROUP = "sla_clock"
INPUTS = (TOPIC_INTAKE, TOPIC_ROUTING)
# The services that publish our inputs from their outboxes.
PRODUCERS = ("intake", "router")


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    settings = ctx.settings
    rules = ClockRules(tolerance=timedelta(seconds=settings.sla_delay_tolerance_seconds),
                       touch_skew=timedelta(seconds=settings.sla_touch_skew_seconds))
    watermark = InputWatermark(
        bootstrap=settings.kafka_bootstrap, engine=ctx.engine, clock=ctx.clock, group=GROUP, topics=INPUTS,
        producers=PRODUCERS, commit_allowance=timedelta(seconds=settings.sla_commit_allowance_seconds),
        interval=settings.sla_watermark_interval_seconds,
    )

    def deps() -> SlaDeps:
        return SlaDeps(ctx.config.config, ctx.config.version, ctx.clock.now(), rules)

    async def timer_loop(stop: asyncio.Event) -> None:
        poll = settings.timer_poll_seconds
        last_gauge = 0.0
        loop = asyncio.get_running_loop()
        began = ctx.clock.now()
        while not stop.is_set():
            fired, wait = 0, poll
            # Cleared before reading, so an advance landing mid-round still wakes the next one.
            watermark.advanced.clear()
            seen = watermark.seen
            # Here, not in the watermark's rounds: a round hanging on a frozen broker must show.
            metrics.sla_clock_watermark_lag.set(lag_seconds(watermark, ctx.clock.now(), began))
            try:
                async with ctx.uow() as uow:
                    fired = await fire_due(uow, ctx.config.config, ctx.clock.now(), seen=seen, rules=rules,
                                           limit=FIRE_BATCH)
                    upcoming = await next_due(uow)
                    if loop.time() - last_gauge > GAUGE_REFRESH_SECONDS:
                        metrics.sla_open_timers.clear()
                        for metric, tier, count in await open_timer_counts(uow):
                            metrics.sla_open_timers.labels(metric, tier).set(count)
                        last_gauge = loop.time()
                    await uow.commit()
                if upcoming is not None:
                    now = ctx.clock.now()
                    if upcoming <= now:
                        # Due but not yet confirmed: wait for the watermark, or for the tolerance to end.
                        wait = min(poll, max((upcoming + rules.tolerance - now).total_seconds(), 0.0))
                    else:
                        # Sleep until the next deadline, so breaches leave on time, not on the next poll.
                        wait = min(poll, (upcoming - now).total_seconds())
            except Exception as exc:  # database away: timers are durable, try again shortly
                log.warning("timers.fire_failed", error=str(exc))
            if fired < FIRE_BATCH:
                await _wait_any(stop, watermark.advanced, wait)

    api = APIRouter()

    @api.get("/v1/leads/{lead_id}/sla", dependencies=[Depends(require_key("source"))])
    async def lead_sla(lead_id: str) -> dict[str, Any]:
        async with ctx.engine.connect() as conn:
            rows = (await conn.execute(
                select(timers).where(timers.c.lead_id == lead_id).order_by(timers.c.started_at, timers.c.metric)
            )).all()
        if not rows:
            raise ProblemError(404, "No SLA timers", f"No timers for lead {lead_id!r}.")
        return {"lead_id": lead_id, "timers": [timer_view(row, ctx.config.config, ctx.clock.now()) for row in rows]}

    @api.get("/v1/watermark", dependencies=[Depends(require_key("source"))])
    async def input_watermark() -> dict[str, Any]:
        return describe(watermark, ctx.clock.now())

    return ServiceSpec(
        subscriptions=[Subscription(GROUP, INPUTS, bind(HANDLERS, deps))],
        loops=[timer_loop, watermark.run],
        routers=[api],
    )


async def _wait_any(stop: asyncio.Event, wakeup: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
