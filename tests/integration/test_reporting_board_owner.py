"""The SLA board names whoever holds a timer now: a reassignment hands the lead's running timers
to the new owner (the SLA clock's rule), so the board must not keep showing the owner the timer
started with (seen following the README: alice, out of office, still named after the hand-over)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.reporting.board import render_board
from services.reporting.projections import project
from services.reporting.views import board_data
from shared.events import new_event

# Long ago, so this lead's timer is the board's nearest to breach whatever else the database holds.
T0 = datetime(2001, 1, 1, 9, 0, tzinfo=UTC)


async def test_the_board_shows_a_reassigned_leads_open_timer_under_its_new_owner(
    engine: AsyncEngine,
) -> None:
    lead = str(uuid.uuid4())

    def event(type_: str, seconds: int, service: str, **data) -> object:
        return new_event(
            type_,
            service=service,
            lead_id=lead,
            time=T0 + timedelta(seconds=seconds),
            data={"lead_id": lead, **data},
        )

    timer = {"metric": "first_response", "policy_id": "demo-fast", "policy_version": 1, "tier": "A"}
    events = [
        event(
            "lead.received",
            0,
            "intake",
            source="website",
            tier="A",
            received_at=T0.isoformat(),
            contact={"email": "ada@example.com"},
        ),
        event(
            "lead.assigned",
            1,
            "router",
            owner_id="alice",
            team_id="sdr",
            assignment_no=1,
            assigned_at=(T0 + timedelta(seconds=1)).isoformat(),
        ),
        event(
            "sla.started",
            1,
            "sla_clock",
            sla_id=f"{lead}-fr",
            owner_id="alice",
            **timer,
            started_at=(T0 + timedelta(seconds=1)).isoformat(),
            due_at=(T0 + timedelta(minutes=5)).isoformat(),
        ),
        event(
            "lead.reassigned",
            60,
            "router",
            from_owner_id="alice",
            to_owner_id="bob",
            reason="speaks German",
            assignment_no=2,
        ),
    ]
    async with engine.connect() as conn:
        await conn.begin()
        try:
            await project(conn, events, None)
            board = await board_data(conn, T0 + timedelta(minutes=2))
        finally:
            await conn.rollback()
    [row] = [r for r in board["open"] if r["lead_id"] == lead]
    assert row["owner_id"] == "bob"


async def test_the_board_counts_every_breach_of_the_day_and_every_open_timer_beyond_the_rows_it_lists(
    engine: AsyncEngine,
) -> None:
    """The board lists the latest 50 breaches of the day and the 25 timers nearest to breach; its
    heading said "Breaches today (50)" on a day of 60, and nothing said how many timers were open."""
    day = datetime(1991, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(0, 3000))
    events = []
    for i in range(5):
        lead = f"board-{uuid.uuid4().hex[:8]}"
        started_at, due = day + timedelta(hours=1, minutes=i), day + timedelta(hours=1, minutes=5 + i)
        timer = {"lead_id": lead, "sla_id": f"{lead}-fr", "metric": "first_response", "policy_id": "fast",
                 "policy_version": 1, "tier": "A", "owner_id": "alice", "started_at": started_at.isoformat(),
                 "due_at": due.isoformat()}
        events.append(new_event("sla.started", service="sla_clock", lead_id=lead, time=started_at, data=timer))
        if i < 3:
            events.append(new_event("sla.breached", service="sla_clock", lead_id=lead, time=due,
                                    data={**timer, "breached_at": due.isoformat(), "root_cause": "owner_missed"}))
    now = day + timedelta(hours=2)
    async with engine.connect() as conn:
        await conn.begin()
        try:
            await project(conn, events, None)
            open_before = await conn.scalar(text(
                "SELECT count(*) FROM reporting.sla_timers WHERE state = 'open' AND due_at IS NOT NULL"))
            board = await board_data(conn, now, open_limit=1, breach_limit=2)
        finally:
            await conn.rollback()
    assert (len(board["breaches"]), board["breaches_today"]) == (2, 3)
    assert (len(board["open"]), board["open_total"]) == (1, open_before)
    page = render_board(board, now)
    assert "Breaches today (3)" in page and "the latest 2 of 3" in page
    assert f"first 1 of {open_before}" in page
