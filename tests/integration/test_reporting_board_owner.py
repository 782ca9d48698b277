"""The SLA board names whoever holds a timer now: a reassignment hands the lead's running timers
to the new owner (the SLA clock's rule), so the board must not keep showing the owner the timer
started with (seen following the README: alice, out of office, still named after the hand-over)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

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
