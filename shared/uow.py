"""The unit of work: one Postgres transaction holding a handler's state changes and the events
it emits (as outbox rows). It rolls back unless `commit()` is called."""
from __future__ import annotations

import asyncio
from types import TracebackType

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import OUTBOX
from .events import CloudEvent


class UnitOfWork:
    def __init__(self, engine: AsyncEngine, schema: str, relay_wakeup: asyncio.Event | None = None):
        self._engine = engine
        self._schema = schema
        self._relay_wakeup = relay_wakeup
        self._pending: list[tuple[str, CloudEvent]] = []
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

    def emit(self, topic: str, event: CloudEvent) -> None:
        """Queue an event; it is written to the outbox with the rest of this transaction."""
        self._pending.append((topic, event))

    def mark(self) -> int:
        """A point to drop emitted events back to (with a savepoint rolled back to the same point)."""
        return len(self._pending)

    def drop_since(self, mark: int) -> None:
        del self._pending[mark:]

    @property
    def emitted(self) -> list[CloudEvent]:
        return [event for _, event in self._pending]

    async def commit(self) -> None:
        if self._pending:
            await self.conn.execute(
                insert(OUTBOX[self._schema]),
                [
                    {
                        "topic": topic,
                        "key": event.subject or "",
                        "event_id": event.id,
                        "event_type": event.type,
                        "payload": event.to_bytes(),
                    }
                    for topic, event in self._pending
                ],
            )
        await self.conn.commit()
        self.committed = True
        if self._pending and self._relay_wakeup is not None:
            self._relay_wakeup.set()
