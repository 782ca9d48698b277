"""The router's projection applies a run of decisions (lead.assigned + router.lead_routed pairs) in
one statement: it must leave the tables exactly as applying the same events one at a time does,
however the run mixes owners, days, rules with cursors or credits, and a lead assigned twice."""
from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.router.domain import LeadRouted
from services.router.projection import apply
from services.router.tables import assignments, cursors, daily_assignments
from shared.events import CloudEvent, LeadAssigned, new_event

T0 = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def decision(lead_id: str, owner: str, no: int, *, day: date | None, rule: str | None = None,
             cursor: int | None = None, weights: dict[str, int] | None = None, at: int = 0) -> list[CloudEvent]:
    when = T0 + timedelta(seconds=at)
    assigned = LeadAssigned(lead_id=lead_id, owner_id=owner, team_id="sdr", rule_id=rule, method="round_robin",
                            reason="rule", assignment_no=no, candidates=[], assigned_at=when, tier="A")
    routed = LeadRouted(lead_id=lead_id, facts={"country": "US", "n": at}, company_domain=f"{lead_id[:6]}.example",
                        assignment_no=no, owner_id=owner, day=day, rule_id=rule, cursor=cursor, weights=weights)
    return [new_event(LeadAssigned.TYPE, service="router", lead_id=lead_id, time=when, data=assigned),
            new_event(LeadRouted.TYPE, service="router", lead_id=lead_id, time=when, data=routed)]


async def state(conn, owners: list[str], rules: list[str], leads: list[str]) -> tuple:
    rows = await conn.execute(select(assignments).where(assignments.c.lead_id.in_(leads)).order_by(assignments.c.lead_id))
    days = await conn.execute(select(daily_assignments).where(daily_assignments.c.owner_id.in_(owners))
                              .order_by(daily_assignments.c.owner_id, daily_assignments.c.day))
    ruled = await conn.execute(select(cursors).where(cursors.c.rule_id.in_(rules)).order_by(cursors.c.rule_id))
    return [tuple(r) for r in rows], [tuple(r) for r in days], [tuple(r) for r in ruled]


async def test_a_run_applied_at_once_leaves_the_state_of_its_events_applied_one_by_one(engine: AsyncEngine) -> None:
    tag = uuid.uuid4().hex[:6]
    ann, ben = f"ann-{tag}", f"ben-{tag}"
    rr, weighted, mixed = f"rr-{tag}", f"wrr-{tag}", f"mixed-{tag}"
    leads = [f"{tag}-{i}" for i in range(7)]
    monday, tuesday = date(2026, 11, 16), date(2026, 11, 17)
    events = [
        *decision(leads[0], ann, 1, day=monday, rule=rr, cursor=0, at=0),
        *decision(leads[1], ben, 1, day=monday, rule=rr, cursor=1, at=1),
        *decision(leads[2], ann, 1, day=tuesday, rule=weighted, weights={ann: 2, ben: -1}, at=2),
        *decision(leads[3], ann, 1, day=monday, rule=rr, cursor=2, at=3),  # rr's cursor ends at 2
        *decision(leads[4], ben, 1, day=monday, rule=weighted, weights={ann: 0, ben: 1}, at=4),  # the last credits
        *decision(leads[5], ben, 1, day=tuesday, rule=mixed, cursor=4, at=5),
        *decision(leads[5], ann, 2, day=tuesday, rule=mixed, weights={ann: 1}, at=6),  # the same lead again
        *decision(leads[6], ann, 1, day=tuesday, rule=mixed, at=7),  # a rule decision with neither: keeps both
        *decision(leads[0], ben, 2, day=None, at=8),  # no day (unfusable): applied on its own, in order
    ]
    async with engine.connect() as conn:
        # A counter row from before the run: the run adds to it.
        await conn.execute(daily_assignments.insert().values(owner_id=ann, day=monday, assigned=5))
        await conn.execute(cursors.insert().values(rule_id=mixed, last_index=9, counts={ann: 7, ben: 7}))
        before = await conn.begin_nested()
        for event in events:
            await apply(conn, [event])
        one_by_one = await state(conn, [ann, ben], [rr, weighted, mixed], leads)
        await before.rollback()
        await apply(conn, events)
        at_once = await state(conn, [ann, ben], [rr, weighted, mixed], leads)
        await conn.rollback()
    assert at_once == one_by_one
    rows, days, ruled = at_once
    assert (ann, monday, 7) in days and (ben, tuesday, 1) in days  # 5 before, 2 in the run; one each
    # Each cursor with who had the turn (ben at 4, ann at 2), kept when a later decision has none.
    assert ruled == [(mixed, 4, ben, {ann: 1}), (rr, 2, ann, None), (weighted, -1, None, {ann: 0, ben: 1})]
    by_lead = {row[0]: row for row in rows}
    assert [(by_lead[x][1], by_lead[x][5]) for x in (leads[0], leads[5])] == [(ben, 2), (ann, 2)]  # owner, number
