"""Router's service layer: route a received lead, drain the queue, change an owner at runtime,
reassign a lead, release capacity when a lead is closed. Each function runs inside the caller's
unit of work: the state it changes and the events it emits commit together."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, exists, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import metrics
from shared.clock import Clock
from shared.config import Config, Owner
from shared.db import xact_lock
from shared.events import (
    TOPIC_ROUTING,
    ActivityRecorded,
    Candidate,
    CloudEvent,
    EscalationTriggered,
    LeadAssigned,
    LeadDequeued,
    LeadQueued,
    LeadReassigned,
    LeadReceived,
    Received,
    WireModel,
    new_event,
)
from shared.uow import UnitOfWork

from .domain import (
    Decision,
    LeadFacts,
    RoutingState,
    anyone_available,
    decide,
    decision_scope,
    effective_owner,
    eligibility,
    facts_of,
    fallback_owners,
    owner_day,
    record,
    release,
)
from .tables import assignments, owner_state, queue

SERVICE = "router"
log = structlog.get_logger()
TOUCHES = frozenset({"call", "email", "sms", "chat", "meeting"})
DRAIN_PAGE = 200
MAX_SCOPE_WIDENINGS = 4


@dataclass(frozen=True)
class RouterDeps:
    """What the router's event handlers are given besides the event: the configuration of the
    moment, the clock, and the queue loop's wake-up (set when a lead queues behind older ones)."""

    config: Config
    clock: Clock
    wake_queue: asyncio.Event | None = None


class UnknownLead(LookupError):
    pass


class UnknownOwner(LookupError):
    pass


class SameOwner(ValueError):
    pass


class NobodyEligible(LookupError):
    pass


class OwnerUpdated(WireModel):
    """An owner's runtime change, as stored on the owner's stream (not published on the bus)."""

    owner_id: str
    changes: dict[str, Any]
    actor: str | None = None


# Locking. A routing decision reads and advances its rule's cursor and its owners' loads. New
# leads lock just those (the rule and the owners it may give the lead to, sorted, in one
# statement), so decisions for different teams run in parallel, in one router or several.
# Changes that touch many owners at once (draining the queue, reassignment, owner changes,
# closing a lead) take the whole routing state exclusively; new leads hold it shared.
ROUTING = "router.routing"


async def lock_routing(conn: AsyncConnection) -> None:
    """Exclusive: no new-lead decision runs until this transaction ends."""
    await xact_lock(conn, ROUTING)


async def _share_routing(conn: AsyncConnection) -> None:
    await conn.execute(select(func.pg_advisory_xact_lock_shared(func.hashtext(ROUTING))))


async def _lock_all(conn: AsyncConnection, keys: set[str]) -> None:
    # In hash order: every transaction takes its locks in the same order, so none waits in a circle.
    await conn.execute(text(
        "SELECT pg_advisory_xact_lock(h) FROM "
        "(SELECT DISTINCT hashtext(k) AS h FROM unnest(CAST(:keys AS text[])) AS k ORDER BY 1) AS ordered"
    ), {"keys": sorted(keys)})


# ---- state ----------------------------------------------------------------------------------


async def effective_owners(conn: AsyncConnection, config: Config) -> dict[str, Owner]:
    rows = await conn.execute(select(owner_state.c.owner_id, owner_state.c.changes))
    changes = dict(rows.tuples().all())
    return {o.id: effective_owner(o, changes.get(o.id)) for o in config.owners}


async def account_owners(conn: AsyncConnection, domains: set[str]) -> dict[str, str]:
    """Company domain -> owner of its most recently assigned open lead."""
    if not domains:
        return {}
    rows = await conn.execute(
        select(assignments.c.company_domain, assignments.c.owner_id)
        .where(assignments.c.closed_at.is_(None), assignments.c.company_domain.in_(domains))
        .order_by(assignments.c.company_domain, assignments.c.assigned_at.desc())
        .distinct(assignments.c.company_domain)
    )
    return dict(rows.tuples().all())


def _state_sql(owners_filtered: bool, rules_filtered: bool) -> str:
    # One round trip for everything a decision reads; with filters, only the owners and the
    # rule in play (a decision on a 500-owner config reads ten owners' counts, not 500).
    owner_filter = " AND owner_id = ANY(CAST(:owners AS text[]))" if owners_filtered else ""
    rule_filter = " WHERE rule_id = ANY(CAST(:rules AS text[]))" if rules_filtered else ""
    return (
        "SELECT 'owner' AS kind, owner_id AS k, NULL::int AS n, NULL::date AS day, changes AS j "
        "FROM router.owner_state "
        "UNION ALL SELECT 'open', owner_id, count(*)::int, NULL, NULL FROM router.assignments "
        f"WHERE closed_at IS NULL{owner_filter} GROUP BY owner_id "
        "UNION ALL SELECT 'day', owner_id, assigned, day, NULL FROM router.daily_assignments "
        f"WHERE day >= CAST(:since AS date){owner_filter} "
        f"UNION ALL SELECT 'cursor', rule_id, last_index, NULL, counts FROM router.rr_cursors{rule_filter}"
    )


async def load_state(conn: AsyncConnection, config: Config, now: datetime, *, owners: set[str] | None = None,
                     rules: set[str] | None = None) -> RoutingState:
    """The routing state; `owners`/`rules` limit the counts and cursors read to those."""
    params: dict[str, Any] = {"since": (now - timedelta(days=2)).date()}
    if owners is not None:
        params["owners"] = sorted(owners)
    if rules is not None:
        params["rules"] = sorted(rules)
    rows = (await conn.execute(text(_state_sql(owners is not None, rules is not None)), params)).all()
    changes = {r.k: r.j for r in rows if r.kind == "owner"}
    effective = {o.id: effective_owner(o, changes.get(o.id)) for o in config.owners}
    today = {r.k: r.n for r in rows if r.kind == "day" and r.k in effective
             and r.day == owner_day(effective[r.k], config, now)}  # each owner's own day
    return RoutingState(
        owners=effective,
        open_leads={r.k: r.n for r in rows if r.kind == "open"},
        today=today,
        cursors={r.k: r.n for r in rows if r.kind == "cursor"},
        weighted={r.k: r.j or {} for r in rows if r.kind == "cursor"},
    )


def _with_account(state: RoutingState, facts: LeadFacts, by_domain: Mapping[str, str]) -> RoutingState:
    owner = by_domain.get(facts.company_domain) if facts.company_domain else None
    return replace(state, account_owner=owner)


# ---- writing decisions ----------------------------------------------------------------------


async def _store_assignment(conn: AsyncConnection, config: Config, state: RoutingState, facts: LeadFacts,
                            decision: Decision, assignment_no: int, now: datetime) -> None:
    """The assignment, the owner's count for the day and the rule's cursor: one statement."""
    assert decision.owner_id is not None
    owner = state.owners.get(decision.owner_id)
    params: dict[str, Any] = {
        "lead": facts.lead_id, "owner": decision.owner_id, "team": decision.team_id, "rule": decision.rule_id,
        "tier": facts.tier, "no": assignment_no, "at": now, "facts": json.dumps(facts.to_json()),
        "domain": facts.company_domain, "day": owner_day(owner, config, now) if owner else now.date(),
    }
    sql = (
        "WITH a AS (INSERT INTO router.assignments (lead_id, owner_id, team_id, rule_id, tier, assignment_no, "
        "assigned_at, facts, company_domain) VALUES (:lead, :owner, :team, :rule, :tier, :no, :at, "
        "CAST(:facts AS jsonb), :domain) ON CONFLICT (lead_id) DO UPDATE SET owner_id = EXCLUDED.owner_id, "
        "team_id = EXCLUDED.team_id, rule_id = EXCLUDED.rule_id, tier = EXCLUDED.tier, "
        "assignment_no = EXCLUDED.assignment_no, assigned_at = EXCLUDED.assigned_at, facts = EXCLUDED.facts, "
        "company_domain = EXCLUDED.company_domain RETURNING 1), "
        "d AS (INSERT INTO router.daily_assignments (owner_id, day, assigned) VALUES (:owner, :day, 1) "
        "ON CONFLICT (owner_id, day) DO UPDATE SET assigned = router.daily_assignments.assigned + 1 RETURNING 1)"
    )
    if decision.rule_id is not None and (decision.next_cursor is not None or decision.weights is not None):
        params["cursor"] = decision.next_cursor
        params["weights"] = json.dumps(dict(decision.weights)) if decision.weights is not None else None
        sql += (
            ", c AS (INSERT INTO router.rr_cursors (rule_id, last_index, counts) VALUES (:rule, "
            "coalesce(CAST(:cursor AS int), -1), CAST(:weights AS jsonb)) ON CONFLICT (rule_id) DO UPDATE SET "
            "last_index = coalesce(CAST(:cursor AS int), router.rr_cursors.last_index), "
            "counts = coalesce(CAST(:weights AS jsonb), router.rr_cursors.counts) RETURNING 1)"
        )
    await conn.execute(text(sql + " SELECT 1"), params)


def _emit_assigned(uow: UnitOfWork, facts: LeadFacts, decision: Decision, assignment_no: int, now: datetime,
                   cause: CloudEvent | None) -> None:
    assert decision.owner_id is not None
    uow.emit(TOPIC_ROUTING, new_event(
        "lead.assigned", service=SERVICE, lead_id=facts.lead_id, time=now, cause=cause,
        correlation_id=None if cause else facts.correlation_id,
        data=LeadAssigned(
            lead_id=facts.lead_id, owner_id=decision.owner_id, team_id=decision.team_id,
            rule_id=decision.rule_id, method=decision.method, reason=decision.reason,
            assignment_no=assignment_no, candidates=list(decision.candidates), assigned_at=now,
            tier=facts.tier, source=facts.source, contactable=facts.contactable, received_at=facts.received_at,
            missing_fields=list(decision.missing_fields),
        ),
    ))
    metrics.assignments.labels(decision.team_id or "none", decision.method, decision.reason).inc()


async def _enqueue(uow: UnitOfWork, facts: LeadFacts, decision: Decision, assignment_no: int, now: datetime,
                   cause: CloudEvent | None) -> None:
    await uow.conn.execute(pg_insert(queue).values(
        lead_id=facts.lead_id, tier=facts.tier, reason=decision.reason, queued_at=now, facts=facts.to_json(),
        assignment_no=assignment_no,
    ).on_conflict_do_nothing())
    uow.emit(TOPIC_ROUTING, new_event(
        "lead.queued", service=SERVICE, lead_id=facts.lead_id, time=now, cause=cause,
        correlation_id=None if cause else facts.correlation_id,
        data=LeadQueued(lead_id=facts.lead_id, tier=facts.tier, queue=f"tier-{facts.tier}", reason=decision.reason,
                        missing_fields=list(decision.missing_fields), queued_at=now),
    ))


def _emit_dequeued(uow: UnitOfWork, facts: LeadFacts, reason: str, queued_at: datetime, now: datetime) -> None:
    uow.emit(TOPIC_ROUTING, new_event(
        "lead.dequeued", service=SERVICE, lead_id=facts.lead_id, time=now, correlation_id=facts.correlation_id,
        data=LeadDequeued(lead_id=facts.lead_id, tier=facts.tier, queue=f"tier-{facts.tier}", reason=reason,
                          queued_at=queued_at),
    ))


# ---- received leads -------------------------------------------------------------------------


async def route_lead(uow: UnitOfWork, received: Received[LeadReceived], deps: RouterDeps) -> None:
    event, lead, config = received.envelope, received.data, deps.config
    facts = facts_of(lead, event.correlationid)
    now = deps.clock.now()
    conn = uow.conn
    # The same lead under another event id (a replay) may be in flight in another router: the
    # lead's lock makes the second one see the first one's decision instead of deciding again.
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:lead)), "
                            "pg_advisory_xact_lock_shared(hashtext(:routing))"),
                       {"lead": f"router.lead:{lead.lead_id}", "routing": ROUTING})
    known = (await conn.execute(text(
        "SELECT EXISTS (SELECT 1 FROM router.assignments WHERE lead_id = :lead) "
        "OR EXISTS (SELECT 1 FROM router.queue WHERE lead_id = :lead) AS known, "
        "(SELECT owner_id FROM router.assignments WHERE company_domain = :domain AND closed_at IS NULL "
        "ORDER BY assigned_at DESC LIMIT 1) AS account_owner, "
        "EXISTS (SELECT 1 FROM router.queue WHERE tier <= :tier) AS queue_ahead"
    ), {"lead": lead.lead_id, "domain": facts.company_domain, "tier": facts.tier})).one()
    if known.known:
        return  # already routed or waiting
    rule_id, owners = decision_scope(config, facts, known.account_owner)
    for _ in range(MAX_SCOPE_WIDENINGS):
        attempt = await conn.begin_nested()
        await _lock_all(conn, {f"router.rule:{rule_id}"} | {f"router.owner:{o}" for o in owners})
        state = await load_state(conn, config, now, owners=owners | fallback_owners(config), rules={rule_id or ""})
        decision = decide(config, facts, replace(state, account_owner=known.account_owner), now)
        if decision.owner_id is None or decision.owner_id in owners:
            await attempt.commit()  # releases the savepoint; its locks stay with the transaction
            break
        # It went to an owner outside the locked scope (a fallback): undo the locks, widen, retry.
        await attempt.rollback()
        owners = owners | {decision.owner_id}
    else:
        raise RuntimeError(f"routing scope kept widening for lead {facts.lead_id}")
    if decision.owner_id is not None and known.queue_ahead and await _wanted_by_queue(
            conn, config, facts, decision.owner_id, state, now):
        # Someone became free by time (working hours, an absence ending) before the queue check
        # saw it: older leads of the same or a higher tier get them first.
        decision = replace(decision, owner_id=None, method="queue", reason="queue_ahead")
    if decision.owner_id is None:
        await _enqueue(uow, facts, decision, 1, now, event)
        if decision.reason == "queue_ahead" and deps.wake_queue is not None:
            deps.wake_queue.set()  # someone is free: drain now (it waits for this commit's locks)
        return
    await _store_assignment(conn, config, state, facts, decision, 1, now)
    _emit_assigned(uow, facts, decision, 1, now, event)
    metrics.routing_latency.observe(max((now - lead.received_at).total_seconds(), 0))


async def _wanted_by_queue(conn: AsyncConnection, config: Config, lead: LeadFacts, owner_id: str,
                           state: RoutingState, now: datetime) -> bool:
    """Whether a queued lead that drains before `lead` could go to `owner_id` now."""
    rows = await conn.execute(
        select(queue.c.facts).where(queue.c.tier <= lead.tier)
        .order_by(queue.c.tier, queue.c.queued_at).limit(DRAIN_PAGE)
    )
    owner = state.owners.get(owner_id)
    for (raw,) in rows:
        queued = LeadFacts.from_json(raw)
        _, scope = decision_scope(config, queued, None)
        if ((owner_id in scope or owner_id in fallback_owners(config))
                and eligibility(owner, queued, state, config, now) is None):
            return True
    return False


# ---- the queue ------------------------------------------------------------------------------


QueueKey = tuple[str, datetime, str]


async def drain_queue(uow: UnitOfWork, config: Config, now: datetime, *, after: QueueKey | None = None,
                      limit: int = DRAIN_PAGE) -> tuple[int, QueueKey | None]:
    """Assign the queued leads someone can take now, in drain order (tier, then age), one page
    from `after`. Returns (leads assigned, the key to continue from, or None at the end)."""
    if not await uow.conn.scalar(select(exists().select_from(queue))):
        return 0, None
    await lock_routing(uow.conn)
    state = await load_state(uow.conn, config, now)
    if not anyone_available(config, state, now):
        return 0, None
    order = (queue.c.tier, queue.c.queued_at, queue.c.lead_id)
    stmt = select(queue).order_by(*order).limit(limit)
    if after is not None:
        stmt = stmt.where(tuple_(*order) > tuple_(*after))
    rows = (await uow.conn.execute(stmt)).all()
    page = [(row, LeadFacts.from_json(row.facts)) for row in rows]
    by_domain = await account_owners(uow.conn, {f.company_domain for _, f in page if f.company_domain})
    assigned = 0
    for row, facts in page:
        decision = decide(config, facts, _with_account(state, facts, by_domain), now)
        if decision.owner_id is None:
            continue
        await uow.conn.execute(delete(queue).where(queue.c.lead_id == row.lead_id))
        _emit_dequeued(uow, facts, "owner_available", row.queued_at, now)
        await _store_assignment(uow.conn, config, state, facts, decision, row.assignment_no, now)
        _emit_assigned(uow, facts, decision, row.assignment_no, now, None)
        state = record(state, decision, config, now)
        assigned += 1
        if not anyone_available(config, state, now):
            return assigned, None
    last = (rows[-1].tier, rows[-1].queued_at, rows[-1].lead_id) if len(rows) == limit else None
    return assigned, last


async def queue_depths(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(select(queue.c.tier, func.count()).group_by(queue.c.tier))
    return dict(rows.tuples().all())


# ---- owners at runtime ----------------------------------------------------------------------


async def update_owner(uow: UnitOfWork, config: Config, now: datetime, owner_id: str, changes: dict[str, Any],
                       actor: str | None) -> Owner:
    """Apply a partial change to an owner, as an event on the owner's stream, at once.
    Raises UnknownOwner, or pydantic's ValidationError when the result is not a valid owner."""
    configured = config.owner(owner_id)
    if configured is None:
        raise UnknownOwner(owner_id)
    await lock_routing(uow.conn)
    row = (await uow.conn.execute(
        select(owner_state.c.changes, owner_state.c.version).where(owner_state.c.owner_id == owner_id)
    )).first()
    # The projection's version is the owner stream's: a concurrent change of the same owner
    # makes this commit conflict, and the command is retried from fresh state.
    uow.expect(owner_id, row.version if row else 0)
    version = (row.version if row else 0) + 1
    merged = {**(row.changes if row else {}), **changes}
    before = effective_owner(configured, row.changes if row else None)
    after = effective_owner(configured, merged)
    event = new_event("owner.updated", service=SERVICE, lead_id=owner_id, time=now,
                      data=OwnerUpdated(owner_id=owner_id, changes=changes, actor=actor))
    uow.emit(None, event, stream=owner_id)  # kept in the router's store; not a contract topic event
    values = {"changes": merged, "version": version, "updated_at": now}
    await uow.conn.execute(
        pg_insert(owner_state).values(owner_id=owner_id, **values)
        .on_conflict_do_update(index_elements=[owner_state.c.owner_id], set_=values)
    )
    if (after.status == "out_of_office" and before.status != "out_of_office"
            and config.routing.on_out_of_office == "reroute_untouched"):
        await _hand_back_untouched(uow, config, now, owner_id)
    await drain_queue(uow, config, now)  # at once, in this transaction; the queue loop does the rest
    return after


async def _hand_back_untouched(uow: UnitOfWork, config: Config, now: datetime, owner_id: str) -> None:
    rows = (await uow.conn.execute(
        select(assignments).where(assignments.c.owner_id == owner_id, assignments.c.closed_at.is_(None),
                                  assignments.c.touched_at.is_(None))
        .order_by(assignments.c.tier, assignments.c.assigned_at)
    )).all()
    for row in rows:
        await _reroute(uow, config, now, row, "owner_out_of_office")


# ---- reassignment ---------------------------------------------------------------------------


def _facts_of_row(row: Any) -> LeadFacts:
    # Rows written before facts were kept carry only the tier.
    return LeadFacts.from_json(row.facts) if row.facts else LeadFacts(lead_id=row.lead_id, tier=row.tier,
                                                                       source="unknown")


async def reassign(uow: UnitOfWork, config: Config, now: datetime, lead_id: str, to_owner: str | None,
                   reason: str) -> dict[str, Any]:
    """Give the lead to `to_owner`, or route it again (None) to someone other than its owner.
    Raises UnknownLead, UnknownOwner (the named owner), SameOwner, NobodyEligible (a closed lead
    that nobody else can take now)."""
    if to_owner is not None and config.owner(to_owner) is None:
        raise UnknownOwner(to_owner)
    await lock_routing(uow.conn)
    row = (await uow.conn.execute(
        select(assignments).where(assignments.c.lead_id == lead_id).with_for_update()
    )).first()
    if row is None:
        return await _assign_queued(uow, config, now, lead_id, to_owner, reason)
    if to_owner == row.owner_id:
        raise SameOwner(to_owner)
    if to_owner is None:
        return await _reroute(uow, config, now, row, reason)
    state = await load_state(uow.conn, config, now)
    facts = _facts_of_row(row)
    why_not = eligibility(state.owners.get(to_owner), facts, state, config, now)
    # An admin's choice stands even when the owner is not eligible; the candidate says so.
    decision = Decision(to_owner, None, None, "manual", reason, (Candidate(
        owner_id=to_owner, eligible=why_not is None, why=why_not or "named by the request"),))
    return await _move(uow, config, state, now, row, facts, decision, reason)


async def _move(uow: UnitOfWork, config: Config, state: RoutingState, now: datetime, row: Any, facts: LeadFacts,
                decision: Decision, reason: str) -> dict[str, Any]:
    assignment_no = row.assignment_no + 1
    await _store_assignment(uow.conn, config, state, facts, decision, assignment_no, now)
    assert decision.owner_id is not None
    uow.emit(TOPIC_ROUTING, new_event(
        "lead.reassigned", service=SERVICE, lead_id=facts.lead_id, time=now, correlation_id=facts.correlation_id,
        data=LeadReassigned(
            lead_id=facts.lead_id, from_owner_id=row.owner_id, to_owner_id=decision.owner_id, reason=reason,
            assignment_no=assignment_no, method=decision.method, team_id=decision.team_id,
            rule_id=decision.rule_id, candidates=list(decision.candidates), assigned_at=now, tier=facts.tier,
            source=facts.source, contactable=facts.contactable, received_at=facts.received_at,
        ),
    ))
    metrics.assignments.labels(decision.team_id or "none", decision.method, "reassigned").inc()
    if row.closed_at is None:
        await drain_queue(uow, config, now)  # the previous owner has room again
    return {"lead_id": facts.lead_id, "status": "reassigned", "owner_id": decision.owner_id,
            "assignment_no": assignment_no}


async def _reroute(uow: UnitOfWork, config: Config, now: datetime, row: Any, reason: str) -> dict[str, Any]:
    facts = _facts_of_row(row)
    state = await load_state(uow.conn, config, now)
    if facts.company_domain:
        by_domain = await account_owners(uow.conn, {facts.company_domain})
        if by_domain.get(facts.company_domain) != row.owner_id:
            state = _with_account(state, facts, by_domain)
    state = release(state, row.owner_id) if row.closed_at is None else state
    decision = decide(config, facts, state, now, exclude=frozenset({row.owner_id}))
    if decision.owner_id is not None:
        return await _move(uow, config, state, now, row, facts, decision, reason)
    if row.closed_at is not None:
        raise NobodyEligible(facts.lead_id)  # a closed lead is not worth a place in the queue
    # Nobody else can take it now: it waits in the queue (and drains like any queued lead)
    # rather than staying with an owner it was taken from.
    await uow.conn.execute(delete(assignments).where(assignments.c.lead_id == row.lead_id))
    await _enqueue(uow, facts, decision, row.assignment_no + 1, now, None)
    return {"lead_id": facts.lead_id, "status": "queued", "owner_id": None}


async def _assign_queued(uow: UnitOfWork, config: Config, now: datetime, lead_id: str, to_owner: str | None,
                         reason: str) -> dict[str, Any]:
    row = (await uow.conn.execute(select(queue).where(queue.c.lead_id == lead_id).with_for_update())).first()
    if row is None:
        raise UnknownLead(lead_id)
    facts = LeadFacts.from_json(row.facts)
    state = await load_state(uow.conn, config, now)
    if to_owner is None:
        decision = decide(config, facts, state, now)
        if decision.owner_id is None:
            return {"lead_id": lead_id, "status": "queued", "owner_id": None}
    else:
        why_not = eligibility(state.owners.get(to_owner), facts, state, config, now)
        decision = Decision(to_owner, None, None, "manual", reason, (Candidate(
            owner_id=to_owner, eligible=why_not is None, why=why_not or "named by the request"),))
    await uow.conn.execute(delete(queue).where(queue.c.lead_id == lead_id))
    _emit_dequeued(uow, facts, "reassigned" if to_owner else "owner_available", row.queued_at, now)
    await _store_assignment(uow.conn, config, state, facts, decision, row.assignment_no, now)
    _emit_assigned(uow, facts, decision, row.assignment_no, now, None)
    return {"lead_id": lead_id, "status": "assigned", "owner_id": decision.owner_id,
            "assignment_no": row.assignment_no}


# ---- escalations ----------------------------------------------------------------------------


async def on_escalation(uow: UnitOfWork, received: Received[EscalationTriggered], deps: RouterDeps) -> None:
    """An escalation step configured with `reassign: true` fired: route the lead again, away
    from the owner who let it breach."""
    data, config, clock = received.data, deps.config, deps.clock
    policy = next((p for p in config.escalation_policies if p.id == data.policy_id), None)
    step = next((s for s in policy.steps if s.step == data.step), None) if policy else None
    if step is None or not step.reassign:
        return
    try:
        await reassign(uow, config, clock.now(), data.lead_id, None, f"escalation:{data.policy_id}:{data.step}")
    except (UnknownLead, NobodyEligible):
        log.info("router.escalation_reassign_skipped", lead_id=data.lead_id, policy_id=data.policy_id,
                 step=data.step)


# ---- activities -----------------------------------------------------------------------------


async def on_activity(uow: UnitOfWork, received: Received[ActivityRecorded], deps: RouterDeps) -> None:
    """A disposition or an opt-out ends the lead's claim on its owner's capacity; any touch
    marks the lead as worked (an owner going out of office keeps worked leads)."""
    activity, config, clock = received.data, deps.config, deps.clock
    if activity.disposition is not None or activity.type == "opt_out":
        await lock_routing(uow.conn)  # before the row lock, as reassignment does
        closed = await uow.conn.execute(
            update(assignments)
            .where(assignments.c.lead_id == activity.lead_id, assignments.c.closed_at.is_(None))
            .values(closed_at=activity.occurred_at)
            .returning(assignments.c.lead_id)
        )
        if closed.first() is not None:
            await drain_queue(uow, config, clock.now())
    elif activity.type in TOUCHES:
        await uow.conn.execute(
            update(assignments)
            .where(assignments.c.lead_id == activity.lead_id, assignments.c.touched_at.is_(None))
            .values(touched_at=activity.occurred_at)
        )


# What each subscription does with each payload class (bound to RouterDeps in bootstrap).
INTAKE_HANDLERS = {LeadReceived: route_lead, ActivityRecorded: on_activity}
ESCALATION_HANDLERS = {EscalationTriggered: on_escalation}
