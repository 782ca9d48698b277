"""Router's service layer: route a received lead; close an assignment on a disposition."""
from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from leadsla.shared import metrics
from leadsla.shared.clock import Clock
from leadsla.shared.config import Config
from leadsla.shared.db import xact_lock
from leadsla.shared.events import (
    TOPIC_ROUTING,
    ActivityRecorded,
    CloudEvent,
    LeadAssigned,
    LeadQueued,
    LeadReceived,
    new_event,
)
from leadsla.shared.uow import UnitOfWork

from .domain import LeadFacts, decide
from .tables import assignments, cursors, queue

SERVICE = "router"


def facts_of(lead: LeadReceived) -> LeadFacts:
    return LeadFacts(
        lead_id=lead.lead_id,
        tier=lead.tier,
        source=lead.source,
        country=lead.contact.country or lead.company.country,
        intent=lead.intent.type,
        product=lead.intent.product,
        language=lead.contact.language,
    )


async def route_lead(uow: UnitOfWork, config: Config, clock: Clock, event: CloudEvent) -> None:
    lead = event.data_as(LeadReceived)
    if await uow.conn.scalar(select(assignments.c.lead_id).where(assignments.c.lead_id == lead.lead_id)):
        return  # already routed (e.g. the same lead arrived twice under different event ids)
    facts = facts_of(lead)
    now = clock.now()
    # One routing decision at a time: round-robin cursors and loads must not race.
    await xact_lock(uow.conn, "router.decide")
    cursor_rows = await uow.conn.execute(select(cursors.c.rule_id, cursors.c.last_index))
    load_rows = await uow.conn.execute(
        select(assignments.c.owner_id, func.count())
        .where(assignments.c.closed_at.is_(None))
        .group_by(assignments.c.owner_id)
    )
    decision = decide(config, facts, dict(cursor_rows.all()), dict(load_rows.all()), now)

    if decision.owner_id is None:
        await uow.conn.execute(pg_insert(queue).values(
            lead_id=lead.lead_id, tier=lead.tier, reason=decision.reason, facts=asdict(facts),
        ).on_conflict_do_nothing())
        uow.emit(TOPIC_ROUTING, new_event(
            "lead.queued", service=SERVICE, lead_id=lead.lead_id, time=now, cause=event,
            data=LeadQueued(lead_id=lead.lead_id, tier=lead.tier, queue=f"tier-{lead.tier}", reason=decision.reason),
        ))
        metrics.queue_depth.labels(lead.tier).inc()
        return

    if decision.next_cursor is not None and decision.rule_id is not None:
        await uow.conn.execute(
            pg_insert(cursors).values(rule_id=decision.rule_id, last_index=decision.next_cursor)
            .on_conflict_do_update(index_elements=[cursors.c.rule_id], set_={"last_index": decision.next_cursor})
        )
    await uow.conn.execute(assignments.insert().values(
        lead_id=lead.lead_id, owner_id=decision.owner_id, team_id=decision.team_id, rule_id=decision.rule_id,
        tier=lead.tier, assignment_no=1, assigned_at=now,
    ))
    uow.emit(TOPIC_ROUTING, new_event(
        "lead.assigned", service=SERVICE, lead_id=lead.lead_id, time=now, cause=event,
        data=LeadAssigned(
            lead_id=lead.lead_id, owner_id=decision.owner_id, team_id=decision.team_id,
            rule_id=decision.rule_id, method=decision.method, reason=decision.reason, assignment_no=1,
            candidates=list(decision.candidates), assigned_at=now, tier=lead.tier,
        ),
    ))
    metrics.assignments.labels(decision.team_id or "none", decision.method, decision.reason).inc()
    metrics.routing_latency.observe(max((now - lead.received_at).total_seconds(), 0))


async def close_on_disposition(uow: UnitOfWork, event: CloudEvent) -> None:
    """A dispositioned lead no longer counts against its owner's capacity."""
    activity = event.data_as(ActivityRecorded)
    if activity.disposition is None:
        return
    await uow.conn.execute(
        update(assignments)
        .where(assignments.c.lead_id == activity.lead_id, assignments.c.closed_at.is_(None))
        .values(closed_at=activity.occurred_at)
    )
