"""Group commit when the database does not answer: the group and the requests queued behind it
fail at once, each after one database timeout at most, not one per group or request before it."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from services.intake.groupcommit import GroupCommitter
from shared.config import parse_config
from tests.support import eventually


async def test_a_group_the_database_does_not_answer_fails_with_the_requests_queued_behind_it() -> None:
    attempts, answer = [], asyncio.Event()

    class Unanswered:
        async def __aenter__(self):
            attempts.append(len(attempts))
            await answer.wait()
            raise TimeoutError  # what a statement timeout raises

        async def __aexit__(self, *exc: object) -> None:
            return None

    config = parse_config("tiers: {default: C}")
    group = GroupCommitter(Unanswered, lambda: config, lambda: datetime(2026, 11, 17, 9, 0, tzinfo=UTC))

    def post() -> asyncio.Task:
        return asyncio.create_task(group.submit(object(), source="webform", idempotency_key=None))  # type: ignore[arg-type]

    first = post()
    await eventually(lambda: attempts, what="the first group to reach the database")
    queued = [post() for _ in range(3)]
    await eventually(lambda: len(group._queue) == 3, what="the others to queue")  # noqa: SLF001
    answer.set()
    for request in [first, *queued]:
        with pytest.raises(TimeoutError):
            await request
    assert attempts == [0]  # one attempt for all four
