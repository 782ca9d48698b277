"""The SLA clock's entrypoints: the consumer that starts and stops timers, the loop that fires
them on time, and the HTTP reads."""
from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy import select

from shared import metrics
from shared.aio import run_loop
from shared.auth import Principal
from shared.config import Config
from shared.consumer import Subscription, bind
from shared.events import TOPIC_INTAKE, TOPIC_ROUTING, Received
from shared.http import ProblemError, not_found, require_key
from shared.runtime import ServiceContext
from shared.supervisor import Loop
from shared.uow import UnitOfWork

from .adapters import ClockStore, PostgresClockStore, RunClockStore
from .domain import ROOT_CAUSES, ClockRules, counted_series, judging_horizon
from .handlers import HANDLERS, Ready, SlaDeps, fire_due, next_due, open_timer_counts, prepare_due
from .tables import leads, timers
from .views import timer_view
from .watermark import InputWatermark, describe, lag_seconds

log = structlog.get_logger()
StoreHandler = Callable[[ClockStore, Received[Any], SlaDeps], Awaitable[None]]
UowHandler = Callable[[UnitOfWork, Received[Any], SlaDeps], Awaitable[None]]
# A batch is one transaction: one statement per table for all its timers. While a burst is due,
# FIRE_WORKERS batches run side by side.
FIRE_BATCH = 500
FIRE_WORKERS = 2
# Breaches due within PREPARE_AHEAD are drafted before their deadline (those due within PREPARE_LEAST
# are built when due); at most READY_CAPACITY at once.
PREPARE_AHEAD = timedelta(seconds=10)
PREPARE_LEAST = timedelta(seconds=1)
READY_CAPACITY = 20_000
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
        intake_gap=timedelta(seconds=settings.intake_outage_gap_seconds),
        outage_grace=timedelta(seconds=settings.sla_outage_grace_seconds),
    )


def clock_rules(ctx: ServiceContext) -> ClockRules:
    return ClockRules(tolerance=timedelta(seconds=ctx.settings.sla_delay_tolerance_seconds),
                      confirm_wait=timedelta(seconds=ctx.settings.sla_confirm_wait_seconds),
                      touch_skew=timedelta(seconds=ctx.settings.sla_touch_skew_seconds))


def consumer_deps(ctx: ServiceContext, rules: ClockRules, watermark: InputWatermark) -> Callable[[], SlaDeps]:
    """The handlers' view, per batch: the outages the watermark knows of go with it, for a touch,
    pause or reroute read after a deadline that fell in one breaches the timer there and then (its
    root cause is system_delay, as the timer loop's would be)."""
    def deps() -> SlaDeps:
        now = ctx.clock.now()
        return SlaDeps(ctx.config.config, ctx.config.version, now, replace(rules, input_outages=watermark.outages(now)))

    return deps


def subscription(ctx: ServiceContext, rules: ClockRules, watermark: InputWatermark) -> Subscription:
    deps = consumer_deps(ctx, rules, watermark)
    return Subscription(GROUP, INPUTS, bind(on_postgres(HANDLERS), deps),
                        batched=bind(dict.fromkeys(HANDLERS, on_run), deps))


async def on_run(uow: UnitOfWork, run: list[Received[Any]], deps: SlaDeps) -> None:
    """A run of consumed events (any of the classes the clock handles, in order) decided by the
    same handlers, in memory, and written at once: a few statements for the whole run instead of
    several per event. The consumer runs a failing batch again event by event (`on_postgres`)."""
    store = await RunClockStore.load(uow, [received.data.lead_id for received in run])
    for received in run:
        await HANDLERS[type(received.data)](store, received, deps)
    await store.flush()


async def fire(uow: Callable[[], UnitOfWork], config: Config, now: datetime, *, seen: datetime | None,
               rules: ClockRules, workers: int = 1, batch: int = FIRE_BATCH,
               ready: Ready | None = None) -> tuple[int, datetime | None]:
    """Fire `workers` batches of what is due side by side, each in its own transaction (the row
    locks keep them apart, as between replicas): one builds its events while another's statements
    run. How many fired, and the next deadline after them."""
    async def one() -> tuple[int, datetime | None]:
        async with uow() as unit:
            store = PostgresClockStore(unit)
            fired = await fire_due(store, config, now, seen=seen, rules=rules, limit=batch, ready=ready)
            upcoming = await next_due(store)
            await unit.commit()
        return fired, upcoming

    rounds = await asyncio.gather(*(one() for _ in range(workers)))
    upcoming = [u for _, u in rounds if u is not None]
    return sum(fired for fired, _ in rounds), min(upcoming, default=None)


class Firing:
    """The timer loop's rounds (bench/sla_clock.py runs them too): fire what is due, FIRE_WORKERS
    batches side by side while a burst is due, else one; then, nothing more being due, draft a
    batch of the breaches due within PREPARE_AHEAD (see handlers.Ready), so that a burst falling
    due at once has only its writes left to do at its deadline."""

    def __init__(self, uow: Callable[[], UnitOfWork], rules: ClockRules, clock: Callable[[], datetime]) -> None:
        self.uow, self.rules, self.clock = uow, rules, clock
        self.ready = Ready(READY_CAPACITY)
        self.workers = 1

    async def round(self, config: Config, seen: datetime | None, poll: float) -> float:
        """One round (`seen`: how far the inputs are consumed); how long to wait before the next."""
        now = self.clock()
        try:
            fired, upcoming = await fire(self.uow, config, now, seen=seen, rules=self.rules,
                                         workers=self.workers, ready=self.ready)
        except BaseException:
            gc.enable()  # a failing burst is no burst (the loop backs off)
            raise
        self.workers = FIRE_WORKERS if fired >= FIRE_BATCH * self.workers else 1
        if self.workers > 1:
            # A burst: the collector's older generations (a pass over every draft held, a tenth of a
            # second or more) wait until it has passed; the young one is still collected each round.
            gc.disable()
            gc.collect(0)
            return 0  # more are due: at once
        gc.enable()
        # What was due and not taken will not be: its timer changed, or another replica fired it.
        self.ready.forget(judging_horizon(now, seen, self.rules.confirm_wait))
        async with self.uow() as unit:
            now = self.clock()
            read = await prepare_due(PostgresClockStore(unit), config, self.ready, now + PREPARE_LEAST,
                                     now + PREPARE_AHEAD, FIRE_BATCH)
        if read == FIRE_BATCH:
            return 0  # more to read ahead
        if upcoming is None:
            return poll
        now = self.clock()
        if fired and upcoming <= judging_horizon(now, seen, self.rules.confirm_wait):
            return 0  # fell due (and is confirmed) while this round ran: at once
        if upcoming <= now:
            # Due but not yet confirmed: wait for the watermark, or for the wait to end.
            return min(poll, max((upcoming + self.rules.confirm_wait - now).total_seconds(), 0.0))
        # Sleep until the next deadline, so breaches leave on time, not on the next poll.
        return min(poll, (upcoming - now).total_seconds())


def zero_counts(config: Config) -> None:
    """Every met and breach series the configuration can produce, at 0 until it counts (a new
    policy or tier too, after a reload): see `counted_series`."""
    for metric, tier in counted_series(config):
        metrics.sla_met.labels(metric, tier)
        for cause in ROOT_CAUSES:
            metrics.sla_breaches.labels(metric, tier, cause)


def timer_loop(ctx: ServiceContext, watermark: InputWatermark, rules: ClockRules) -> Loop:
    settings = ctx.settings

    async def run(stop: asyncio.Event) -> None:
        poll = settings.timer_poll_seconds
        last_gauge = 0.0
        loop = asyncio.get_running_loop()
        began = ctx.clock.now()
        firing = Firing(ctx.uow, rules, ctx.clock.now)

        async def fire_round() -> float:
            nonlocal last_gauge
            seen = watermark.judged_until  # read after the loop cleared `advanced`: a later advance wakes us
            now = ctx.clock.now()
            firing.rules = replace(rules, input_outages=watermark.outages(now))
            # Here, not in the watermark's rounds: a round hanging on a frozen broker must show.
            metrics.sla_clock_watermark_lag.set(lag_seconds(watermark, now, began))
            if loop.time() - last_gauge > GAUGE_REFRESH_SECONDS:
                async with ctx.uow() as uow:
                    counts = await open_timer_counts(PostgresClockStore(uow))
                metrics.sla_open_timers.clear()
                for metric, tier, count in counts:
                    metrics.sla_open_timers.labels(metric, tier).set(count)
                zero_counts(ctx.config.config)
                last_gauge = loop.time()
            return await firing.round(ctx.config.config, seen, poll)

        # Timers are durable: a failed round (database away) is tried again after the backoff.
        await run_loop("timers", fire_round, stop, idle=poll, wakeup=watermark.advanced)

    return run


def build_api(ctx: ServiceContext, watermark: InputWatermark) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/leads/{lead_id}/sla")
    async def lead_sla(lead_id: str, principal: Principal = Depends(require_key("source"))) -> dict[str, Any]:
        async with ctx.engine.connect() as conn:
            rows = (await conn.execute(
                select(timers).where(timers.c.lead_id == lead_id).order_by(timers.c.started_at, timers.c.metric)
            )).all()
            source = await conn.scalar(select(leads.c.source).where(leads.c.lead_id == lead_id))
        if not rows:
            raise not_found("lead_id", "No SLA timers", f"No timers for lead {lead_id!r}.")
        if not principal.is_admin and source != principal.name:
            # Owners and deadlines of another source's leads (whose ids a repeat submission tells).
            raise ProblemError(403, "Forbidden", "A source key may read only the leads its source submitted; "
                               "use an admin key.", [{"field": "Authorization",
                                                     "message": "is the key of another source"}])
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
