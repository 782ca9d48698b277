"""Small asyncio helpers for the service loops."""
from __future__ import annotations

import asyncio


def next_backoff(previous: float, *, first: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff, the one policy of every retrying loop: `first`, then doubling up to `cap`."""
    return first if previous <= 0 else min(previous * 2, cap)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, returning early when `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
