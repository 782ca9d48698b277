"""Group commit for single-lead requests: concurrent POST /v1/leads share one transaction.

A lead's cost is mostly round trips and the commit, not validation. Requests that arrive while a
group is being written wait for the next group, so under load each commit carries many leads and
at low load a request is written at once (no fixed delay). A request is answered only after its
group has committed, so a 201 still means "durably accepted". If anything in a group fails, the
group is rolled back and each of its requests runs again in a transaction of its own, so one bad
request never fails the others; but when the database is unavailable (down, or not answering
within the statement timeout), every request of the group fails at once, and so do those that
queued while it waited: one at a time, or group after group, the last would wait a database
timeout for each request or group before it. Each lead is recorded through intake's
projection (the new leads of a group together, see `submit_leads`); a group that loses a race on
a lead's stream runs again from fresh state (`retry_on_conflict`).
"""
from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared import tracing
from shared.config import Config
from shared.db import is_database_unavailable
from shared.eventstore import retry_on_conflict
from shared.uow import UnitOfWork

from .adapters import PostgresIntakeStore
from .handlers import Accepted, LeadRequest, submit_leads
from .normalize import Submission

MAX_GROUP = 200
GATHER_TURNS = 3


@dataclass
class _Request:
    sub: Submission
    source: str
    key: str | None
    done: asyncio.Future[Accepted]
    trace: tracing.TraceContext | None = None


class GroupCommitter:
    def __init__(self, uow: Callable[[], UnitOfWork], config: Callable[[], Config],
                 now: Callable[[], datetime]) -> None:
        self._uow, self._config, self._now = uow, config, now
        self._queue: list[_Request] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, sub: Submission, *, source: str, idempotency_key: str | None) -> Accepted:
        request = _Request(sub, source, idempotency_key, asyncio.get_running_loop().create_future(),
                           tracing.current())
        self._queue.append(request)
        if self._writer is None or self._writer.done():
            # A context of its own: the writer serves many requests, not the first one's trace and logs.
            self._writer = asyncio.create_task(self._write(), context=contextvars.Context())
        return await request.done

    async def _write(self) -> None:
        while self._queue:
            await self._gather()
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            try:
                results = await self._run(group)
            except Exception as exc:
                if is_database_unavailable(exc):
                    waited, self._queue = group + self._queue, []
                    for request in waited:
                        _fail(request, exc)
                    continue
                for request in group:  # one at a time, so only the failing request fails
                    await self._settle(request)
                continue
            for request, result in zip(group, results, strict=True):
                if not request.done.done():
                    request.done.set_result(result)

    async def _gather(self) -> None:
        """Let requests already being read in this process join the next group: yield to the
        event loop while the queue still grows (GATHER_TURNS turns without a newcomer end it). No
        fixed delay: a lone request waits a few turns of an idle loop (microseconds); under load
        each commit carries every request in flight (at 8 concurrent, groups of 8 instead of 3 to 5)."""
        quiet = 0
        while quiet < GATHER_TURNS and len(self._queue) < MAX_GROUP:
            seen = len(self._queue)
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._queue) == seen else 0

    async def _run(self, group: list[_Request]) -> list[Accepted]:
        config, now = self._config(), self._now()
        requests = [LeadRequest(r.sub, r.source, r.key, r.trace) for r in group]

        async def attempt() -> list[Accepted]:
            async with self._uow() as uow:
                results = await submit_leads(uow, PostgresIntakeStore(uow.conn), config, requests, now=now)
                await uow.commit()
            return results

        return await retry_on_conflict(attempt)

    async def _settle(self, request: _Request) -> None:
        try:
            [result] = await self._run([request])
        except Exception as exc:
            _fail(request, exc)
            return
        if not request.done.done():
            request.done.set_result(result)


def _fail(request: _Request, exc: Exception) -> None:
    if not request.done.done():
        request.done.set_exception(exc)
