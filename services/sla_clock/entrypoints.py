"""The SLA clock's entrypoints: the consumer that starts and stops timers, the loop that fires
them on time, and the HTTP reads."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import structlog
from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy import select

from shared import metrics
from shared.aio import run_loop
from shared.consumer import Subscription, bind
from shared.events import TOPIC_INTAKE, TOPIC_ROUTING, Received
from shared.http import ProblemError, require_key
from shared.runtime import ServiceContext
from shared.supervisor import Loop
from shared.uow import UnitOfWork

from .adapters import ClockStore, PostgresClockStore
from .domain import ClockRules
from .handlers import HANDLERS, SlaDeps, fire_due, next_due, open_timer_counts
from .tables import timers
from .views import timer_view
from .watermark import InputWatermark, describe, lag_seconds

log = structlog.get_logger()
StoreHandler = Callable[[ClockStore, Received[Any], SlaDeps], Awaitable[None]]
UowHandler = Callable[[UnitOfWork, Received[Any], SlaDeps], Awaitable[None]]
FIRE_BATCH = 200
GAUGE_REFRESH_SECONDS = 5.0
GROUP = "sla_clock"
INPUTS = (TOPIC_INTAKE, TOPIC_ROUTING)
# The services that publish our inputs from their outboxes.
PRODUCERS = ("intake", "router")


def make_watermark(ctx: ServiceContext) -> InputWatermark:
    settings = ctx.settings
    return InputWatermark(
        bootstrap=settings.kafka_bootstrap, engine=ctx.engine, clock=ctx.clock, group=GROUP, topics=INPUTS,
        producers=PRODUCERS, commit_allowance=timedelta(seconds=settings.sla_commit_allowance_seconds),
        interval=settings.sla_watermark_interval_seconds,
    )


def clock_rules(ctx: ServiceContext) -> ClockRules:
    return ClockRules(tolerance=timedelta(seconds=ctx.settings.sla_delay_tolerance_seconds),
                      confirm_wait=timedelta(seconds=ctx.settings.sla_confirm_wait_seconds),
                      touch_skew=timedelta(seconds=ctx.settings.sla_touch_skew_seconds))


def subscription(ctx: ServiceContext, rules: ClockRules) -> Subscription:
    def deps() -> SlaDeps:
        return SlaDeps(ctx.config.config, ctx.config.version, ctx.clock.now(), rules)

    return Subscription(GROUP, INPUTS, bind(on_postgres(HANDLERS), deps))


def timer_loop(ctx: ServiceContext, watermark: InputWatermark, rules: ClockRules) -> Loop:
    settings = ctx.settings

    async def run(stop: asyncio.Event) -> None:
        poll = settings.timer_poll_seconds
        last_gauge = 0.0
        loop = asyncio.get_running_loop()
        began = ctx.clock.now()

        async def fire_round() -> float:
            nonlocal last_gauge
            seen = watermark.seen  # read after the loop cleared `advanced`: a later advance wakes us
            # Here, not in the watermark's rounds: a round hanging on a frozen broker must show.
            metrics.sla_clock_watermark_lag.set(lag_seconds(watermark, ctx.clock.now(), began))
            async with ctx.uow() as uow:
                store = PostgresClockStore(uow)
                fired = await fire_due(store, ctx.config.config, ctx.clock.now(), seen=seen, rules=rules,
                                       limit=FIRE_BATCH)
                upcoming = await next_due(store)
                if loop.time() - last_gauge > GAUGE_REFRESH_SECONDS:
                    metrics.sla_open_timers.clear()
                    for metric, tier, count in await open_timer_counts(store):
                        metrics.sla_open_timers.labels(metric, tier).set(count)
                    last_gauge = loop.time()
                await uow.commit()
            if fired >= FIRE_BATCH:
                return 0  # more are due: at once
            if upcoming is None:
                return poll
            now = ctx.clock.now()
            if upcoming <= now:
                # Due but not yet confirmed: wait for the watermark, or for the wait to end.
                return min(poll, max((upcoming + rules.confirm_wait - now).total_seconds(), 0.0))
            # Sleep until the next deadline, so breaches leave on time, not on the next poll.
            return min(poll, (upcoming - now).total_seconds())

        # Timers are durable: a failed round (database away) is tried again after the backoff.
        await run_loop("timers", fire_round, stop, idle=poll, wakeup=watermark.advanced)

    return run


def build_api(ctx: ServiceContext, watermark: InputWatermark) -> APIRouter:
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

    return api


def on_postgres(handlers: Mapping[type[BaseModel], StoreHandler]) -> dict[type[BaseModel], UowHandler]:
    """The handlers, each given the consumer's unit of work as a Postgres store."""
    def bound(handler: StoreHandler) -> UowHandler:
        async def handle(uow: UnitOfWork, received: Received[Any], deps: SlaDeps) -> None:
            await handler(PostgresClockStore(uow), received, deps)
        return handle
    return {cls: bound(handler) for cls, handler in handlers.items()}
