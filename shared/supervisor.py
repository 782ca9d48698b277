"""One scaffold for every background task of a service (relay, consumers, timers, deliveries,
housekeeping, config watch): run it until stopped; if it dies, log one line, count it, and
start it again after a backoff that grows while it keeps dying. HTTP keeps serving meanwhile,
and `/readyz` names the task that is down."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from . import metrics
from .aio import next_backoff, sleep_unless_stopped

log = structlog.get_logger()

Loop = Callable[[asyncio.Event], Awaitable[None]]


@dataclass
class WorkerState:
    name: str
    running: bool = False
    restarts: int = 0
    last_error: str | None = None
    started_at: float = 0.0


async def supervise(name: str, body: Loop, stop: asyncio.Event, state: WorkerState, *,
                    healthy_after: float = 60.0) -> None:
    backoff = 0.0
    while not stop.is_set():
        state.running, state.started_at = True, time.monotonic()
        try:
            await body(stop)
            return  # a loop returns only when stopped
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.running = False
            state.restarts += 1
            state.last_error = type(exc).__name__
            metrics.worker_restarts.labels(name).inc()
            # A task that ran a good while before dying starts over from the first backoff.
            if time.monotonic() - state.started_at > healthy_after:
                backoff = 0.0
            backoff = next_backoff(backoff)
            log.error("worker.crashed", task=name, error=type(exc).__name__, detail=str(exc)[:300],
                      restart_in=backoff)
            await sleep_unless_stopped(stop, backoff)
    state.running = False
