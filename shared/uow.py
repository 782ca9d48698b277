"""The unit of work: one Postgres transaction holding a handler's state changes and the events
it emits, appended to the service's event store at commit. It rolls back unless `commit()` is
called."""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .events import CloudEvent
from .eventstore import Pending, append, stream_versions
from .outbox import RelayWakeup

if TYPE_CHECKING:
    from .replay import Projection


class UnitOfWork:
    def __init__(self, engine: AsyncEngine, schema: str, relay_wakeup: asyncio.Event | None = None,
                 projection: Projection | None = None):
        self._engine = engine
        self._projection = projection
        self._schema = schema
        self._relay_wakeup = relay_wakeup
        self._pending: list[Pending] = []
        self._expected: dict[str, int] = {}
        self._after_commit: list[Callable[[], None]] = []
        self._conn: AsyncConnection | None = None
        self.committed = False

    @property
    def conn(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("unit of work used outside `async with`")
        return self._conn

    async def __aenter__(self) -> UnitOfWork:
        self._conn = await self._engine.connect()
        await self._conn.begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._conn is not None
        try:
            if not self.committed:
                await self._conn.rollback()
        finally:
            await self._conn.close()

    @property
    def schema(self) -> str:
        return self._schema

    def emit(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None:
        """Queue an event for the store (and, with a topic, for Kafka); it is appended with the
        rest of this transaction. Its stream is the lead (the event's subject) unless given."""
        self._pending.append(Pending(topic, event, stream or event.subject or event.id))

    async def record(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None:
        """Apply an event to the service's state tables (its projection) and queue it for the
        store: state and store change in this one transaction, by the same code replay runs."""
        await self.record_all([(topic, event, stream)])

    async def record_all(self, records: Sequence[tuple[str | None, CloudEvent] | tuple[str | None, CloudEvent, str | None]]) -> None:
        """`record` for many events, (topic, event) or (topic, event, stream), in one call to the
        projection, so it can write them in a few statements (a group commit of many requests)."""
        if not records:
            return
        if self._projection is None:
            raise RuntimeError(f"{self._schema} has no projection to record events through")
        await self._projection.apply(self.conn, [r[1] for r in records])
        for record in records:
            self.emit(record[0], record[1], stream=record[2] if len(record) > 2 else None)

    async def load_version(self, stream_id: str) -> int:
        """Read a stream's version and expect it at commit: if another writer appends to the
        stream meanwhile, `commit()` raises `ConcurrencyConflict` and the command is retried."""
        return (await self.load_versions([stream_id]))[stream_id]

    async def load_versions(self, stream_ids: Sequence[str]) -> dict[str, int]:
        """`load_version` for many streams in one statement (a consumer's run of events). Expected
        once: the first version read of a stream is kept."""
        wanted = [s for s in dict.fromkeys(stream_ids) if s not in self._expected]
        if wanted:
            self._expected.update(await stream_versions(self.conn, self._schema, wanted))
        return {s: self._expected[s] for s in stream_ids}

    def expect(self, stream_id: str, version: int) -> None:
        """Expect a stream at a version read some other way (a projection row's version)."""
        self._expected.setdefault(stream_id, version)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this unit of work has committed (metrics: counted only for what
        happened); never if it rolls back."""
        self._after_commit.append(callback)

    def mark(self) -> tuple[int, dict[str, int], int]:
        """A point to drop emitted events, expectations and after-commit callbacks back to (with
        a savepoint rolled back to the same point)."""
        return len(self._pending), dict(self._expected), len(self._after_commit)

    def drop_since(self, mark: tuple[int, dict[str, int], int]) -> None:
        del self._pending[mark[0]:]
        self._expected = dict(mark[1])
        del self._after_commit[mark[2]:]

    @property
    def emitted(self) -> list[CloudEvent]:
        return [p.event for p in self._pending]

    async def commit(self) -> None:
        appended = await append(self.conn, self._schema, self._pending, self._expected)
        await self.conn.commit()
        self.committed = True
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()
        if self._pending and self._relay_wakeup is not None:
            if appended is not None and isinstance(self._relay_wakeup, RelayWakeup):
                self._relay_wakeup.committed(appended)  # the relay sends them without reading them back
            else:
                self._relay_wakeup.set()
