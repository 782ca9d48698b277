"""Runs one service: engine, producer, outbox relay, consumers, background loops and the HTTP
API in one asyncio process, stopped cleanly on SIGINT/SIGTERM."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncEngine

from .auth import KeyCache
from .bus import TopicsRefused, ensure_topics, make_producer
from .clock import Clock, SystemClock
from .config_store import ConfigHolder, load_latest
from .consumer import EventConsumer, Subscription
from .db import make_engine
from .housekeeping import run_housekeeping
from .http import InvalidRequestHook, create_app
from .migrate import current_revision, head_revision, is_known_revision
from .outbox import OutboxRelay, RelayWakeup
from .replay import Projection
from .settings import SERVICE_PORTS, Settings
from .supervisor import Loop, WorkerState, supervise
from .uow import UnitOfWork

log = structlog.get_logger()


@dataclass
class ServiceContext:
    """Everything a service's handlers and routes may touch; built once per process."""

    name: str
    settings: Settings
    engine: AsyncEngine
    producer: AIOKafkaProducer
    clock: Clock
    config: ConfigHolder
    relay_wakeup: asyncio.Event = field(default_factory=RelayWakeup)
    consumers: list[EventConsumer] = field(default_factory=list)
    key_cache: KeyCache = field(default_factory=KeyCache)
    relay: OutboxRelay | None = None
    workers: dict[str, WorkerState] = field(default_factory=dict)
    projection: Projection | None = None  # the service's state as a projection of its events

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.engine, self.name, self.relay_wakeup, self.projection)


@dataclass
class ServiceSpec:
    """What one service brings: its subscriptions, background loops and HTTP routes."""

    subscriptions: list[Subscription] = field(default_factory=list)
    loops: list[Loop] = field(default_factory=list)
    routers: list[APIRouter] = field(default_factory=list)
    on_invalid_request: InvalidRequestHook | None = None
    projection: Projection | None = None
    # Limit each key's requests (LEADSLA_API_RATE_LIMIT_*); a service with limits of its own says no.
    key_limits: bool = True


Bootstrap = Callable[[ServiceContext], ServiceSpec]


def wire(ctx: ServiceContext, bootstrap: Bootstrap) -> ServiceSpec:
    """The service's spec, with its context recording through the service's projection (the
    units of work of its routes and loops too): the runtime's wiring, for benchmarks and tests
    that build a service without running it."""
    spec = bootstrap(ctx)
    ctx.projection = spec.projection
    return spec


def freeze_startup_heap() -> None:
    """Everything built so far (modules, schemas, the app: some 150,000 objects) lives as long as
    the process: out of the collector's reach, a full collection no longer walks it. Each one
    stopped the event loop for 130 to 190 ms of CPU, the router's p99 at 200 leads/s. (Benchmarks
    that run a service's parts in their own process call it too, once set up, to measure them as
    the service runs them.)

    The young generation is then collected every YOUNG_COLLECTION allocations instead of 700:
    each collection walks every young object still alive, and with dozens of requests or a
    consumer's batch in flight most of them are, so at 700 the same live objects were walked
    again and again (12% of intake's CPU per request at 32 in flight, measured in alternating
    rounds in one process). Refcounting still frees at once everything that is not a cycle; only
    cyclic garbage waits a little longer."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION, older, oldest)


YOUNG_COLLECTION = 10_000


def service_engine(name: str, settings: Settings) -> AsyncEngine:
    """A running service's engine: its connections named after it, its statements bounded by
    the statement timeout."""
    return make_engine(settings.database_url, service=name,
                       statement_timeout=settings.database_statement_timeout_seconds)


# On SIGTERM a service gives its consumers, relay and HTTP requests this long to finish, then
# stops its producer and closes its connections (docker-compose's stop_grace_period allows for it).
SHUTDOWN_DRAIN_SECONDS = 15


class StartupError(RuntimeError):
    """The service cannot start; the message says what to do."""


class _Server(uvicorn.Server):
    # We own SIGINT/SIGTERM so consumers and the relay stop in order, not just the HTTP server.
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


async def run_service(name: str, bootstrap: Bootstrap, settings: Settings, clock: Clock | None = None) -> None:
    engine = service_engine(name, settings)
    async with engine.connect() as conn:
        revision = await current_revision(conn)
        if revision is not None and revision != head_revision() and not is_known_revision(revision):
            raise StartupError(f"database schema is at {revision}, which this release does not know (its newest is "
                               f"{head_revision()}): the database is from a newer release")
        if revision != head_revision():
            raise StartupError(f"database schema is at {revision}, needs {head_revision()}: run `leadsla migrate`")
        versioned = await load_latest(conn)
    if versioned is None:
        raise StartupError("no configuration applied yet: run `leadsla config apply FILE`")

    try:
        await ensure_topics(settings.kafka_bootstrap, settings.topic_partitions, settings.kafka_replication_factor,
                            wait=settings.kafka_startup_wait_seconds)
    except TopicsRefused as exc:
        raise StartupError(f"{exc} (LEADSLA_KAFKA_REPLICATION_FACTOR is {settings.kafka_replication_factor})") from None
    producer = make_producer(settings.kafka_bootstrap)
    await producer.start()
    ctx = ServiceContext(
        name=name,
        settings=settings,
        engine=engine,
        producer=producer,
        clock=clock or SystemClock(),
        config=ConfigHolder(engine, versioned),
    )
    spec = wire(ctx, bootstrap)
    ctx.consumers = [
        EventConsumer(sub, service=name, bootstrap=settings.kafka_bootstrap, engine=engine,
                      relay_wakeup=ctx.relay_wakeup, clock=ctx.clock, projection=ctx.projection,
                      session_timeout_ms=settings.kafka_session_timeout_ms,
                      busy_patience_seconds=settings.consumer_busy_patience_seconds)
        for sub in spec.subscriptions
    ]
    relay = ctx.relay = OutboxRelay(engine, name, producer, ctx.relay_wakeup,
                                    stuck_after_seconds=settings.outbox_stuck_seconds)
    port = settings.http_port or SERVICE_PORTS[name]
    app = create_app(ctx, spec.routers, spec.on_invalid_request, key_limits=spec.key_limits)
    # log_config=None: uvicorn's own lines go through the root handler, JSON like the rest (leadsla.logging).
    server = _Server(uvicorn.Config(app, host=settings.http_host, port=port, log_level="warning", lifespan="off",
                                    access_log=False, log_config=None))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def housekeeping(stop: asyncio.Event) -> None:
        await run_housekeeping(engine, name, ctx.clock, stop,
                               keep_events=(timedelta(days=settings.event_retention_days)
                                            if settings.event_retention_days else None),
                               keep_processed=timedelta(days=settings.processed_retention_days))

    loops: dict[str, Loop] = {
        "outbox-relay": relay.run,
        "config-watch": lambda stop: ctx.config.watch(stop, settings.config_poll_seconds),
        "housekeeping": housekeeping,
        **{f"consumer-{c.sub.group}": c.run for c in ctx.consumers},
        **{f"loop-{i}": body for i, body in enumerate(spec.loops)},
    }
    ctx.workers = {task: WorkerState(task) for task in loops}
    freeze_startup_heap()
    workers = [asyncio.create_task(supervise(task, body, stop, ctx.workers[task]), name=task)
               for task, body in loops.items()]
    http = asyncio.create_task(server.serve(), name="http")
    log.info("service.started", service=name, port=port, config_version=versioned.version)
    try:
        # Background tasks restart themselves (supervise); only the HTTP server ending ends the process.
        done, _ = await asyncio.wait([http, asyncio.create_task(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None and not isinstance(task.exception(), asyncio.CancelledError):
                log.error("service.worker_failed", task=task.get_name(), error=repr(task.exception()))
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        server.should_exit = True
        await asyncio.wait([*workers, http], timeout=SHUTDOWN_DRAIN_SECONDS)
        for task in [*workers, http]:
            task.cancel()
        await producer.stop()
        await engine.dispose()
        log.info("service.stopped", service=name)
