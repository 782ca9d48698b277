"""The one loop scaffold of every background task (relay, timers, deliveries, housekeeping, the
config watch...) and the one backoff policy they share."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger()

# What a round returns: how long to wait before the next one (0: at once), or None for the
# loop's idle wait (cut short by its wakeup event).
Round = Callable[[], Awaitable[float | None]]


def next_backoff(previous: float, *, first: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff, the one policy of every retrying loop: `first`, then doubling up to `cap`."""
    return first if previous <= 0 else min(previous * 2, cap)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, returning early when `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def wait_any(stop: asyncio.Event, wakeup: asyncio.Event | None, seconds: float) -> None:
    """Wait up to `seconds`, returning early when `stop` or `wakeup` is set."""
    if wakeup is None:
        await sleep_unless_stopped(stop, seconds)
        return
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def run_loop(name: str, round_: Round, stop: asyncio.Event, *, idle: float,
                   wakeup: asyncio.Event | None = None, backoff_first: float = 0.2, backoff_cap: float = 5.0,
                   after_failure: Callable[[], Awaitable[None]] | None = None, **log_context: object) -> None:
    """Run `round_` until `stop`. A round that raises (database or broker away) is logged and
    tried again after the backoff; its work waits, nothing is lost."""
    delay = 0.0
    while not stop.is_set():
        if wakeup is not None:
            wakeup.clear()  # before the round, so a wakeup during it starts the next one at once
        try:
            wait = await round_()
            delay = 0.0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = next_backoff(delay, first=backoff_first, cap=backoff_cap)
            log.warning(f"{name}.round_failed", error=type(exc).__name__, retry_in=delay, **log_context)
            if after_failure is not None:
                await after_failure()
            await sleep_unless_stopped(stop, delay)
            continue
        wait = idle if wait is None else wait
        if wait > 0 and not stop.is_set():
            await wait_any(stop, wakeup, wait)
