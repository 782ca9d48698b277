"""Intake's heartbeat on Postgres, as the SLA clock reads it: runs of beats, and a silence (the
database frozen, intake down) shown as an outage even when the held-up beat went through."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from services.intake.adapters import forget_beats, record_beat
from services.sla_clock.domain import intake_outage

GAP = timedelta(seconds=2)


async def runs(engine, *ids: str) -> list[tuple]:
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT first_beat, last_beat FROM intake.availability "
                                        "WHERE interval_id = ANY(:ids) ORDER BY first_beat"), {"ids": list(ids)})
        return [tuple(r) for r in found]


async def db_now(engine):
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT clock_timestamp()"))


async def test_beats_in_a_row_extend_one_run(engine) -> None:
    async with engine.begin() as conn:
        first = await record_beat(conn, None, GAP)
    async with engine.begin() as conn:
        again = await record_beat(conn, first, GAP)
    assert again == first
    [(began, last)] = await runs(engine, first)
    assert last > began
    assert intake_outage(await runs(engine, first), await db_now(engine), GAP) is None


async def test_a_beat_after_a_silence_starts_a_new_run_and_the_silence_is_an_outage(engine) -> None:
    async with engine.begin() as conn:
        first = await record_beat(conn, None, GAP)
        # The beat before a silence: as if the database froze for 10 s and this beat was held up.
        await conn.execute(text("UPDATE intake.availability SET first_beat = first_beat - interval '20 s', "
                                "last_beat = last_beat - interval '10 s' WHERE interval_id = :id"), {"id": first})
    async with engine.begin() as conn:
        back = await record_beat(conn, first, GAP)
    assert back != first
    (_, silent_from), (back_at, _) = await runs(engine, first, back)
    outage = intake_outage(await runs(engine, first, back), await db_now(engine), GAP)
    assert outage is not None and (outage.began, outage.ended) == (silent_from, back_at)


async def test_old_runs_are_forgotten(engine) -> None:
    async with engine.begin() as conn:
        old = await record_beat(conn, None, GAP)
        await conn.execute(text("UPDATE intake.availability SET first_beat = first_beat - interval '3 days', "
                                "last_beat = last_beat - interval '2 days' WHERE interval_id = :id"), {"id": old})
        recent = await record_beat(conn, None, GAP)
        await forget_beats(conn, timedelta(days=1))
    assert await runs(engine, old) == []
    assert len(await runs(engine, recent)) == 1
