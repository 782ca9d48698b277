"""Router's service layer: route a received lead, drain the queue, change an owner at runtime,
reassign a lead, release capacity when a lead is closed. Each function reads the router's state
through a `RouterStore` (adapters.py: Postgres in the unit of work's transaction, or in memory
for unit tests), decides with the pure functions of domain.py, and records the events the
decision makes (the store applies them to the state and appends them at commit)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

import structlog

from shared import metrics
from shared.clock import Clock
from shared.config import TOUCH_TYPES, Config, Owner
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
    LeadUpdated,
    Received,
    new_event,
)
from shared.uow import UnitOfWork

from .adapters import Assignment, PostgresRouterStore, QueuedLead, QueueKey, RouterStore
from .domain import (
    Decision,
    LeadClosed,
    LeadFacts,
    LeadFactsUpdated,
    LeadRouted,
    LeadTouched,
    OwnerUpdated,
    RoutingState,
    anyone_available,
    current_status,
    decide,
    decision_scope,
    effective_owner,
    eligibility,
    facts_of,
    fallback_of,
    fallback_owners,
    first_match,
    home_team,
    owner_day,
    record,
    release,
    updated_facts,
    works_the_lead,
)

SERVICE = "router"
log = structlog.get_logger()
DRAIN_PAGE = 200
MAX_SCOPE_WIDENINGS = 4


@dataclass(frozen=True)
class RouterDeps:
    """What the router's event handlers are given besides the event: the configuration of the
    moment, the clock, and the queue loop's wake-up (set when a lead queues behind older ones)."""

    config: Config
    clock: Clock
    wake_queue: asyncio.Event | None = None
    # The store a handler reads and records through, for its unit of work (unit tests: a fake).
    store: Callable[[Any], RouterStore] = field(default=PostgresRouterStore)


def store_of(target: RouterStore | UnitOfWork) -> RouterStore:
    """Commands accept a store, or a unit of work to read the Postgres store in."""
    return PostgresRouterStore(target) if isinstance(target, UnitOfWork) else target


class UnknownLead(LookupError):
    pass


class UnknownOwner(LookupError):
    pass


class SameOwner(ValueError):
    pass


class NobodyEligible(LookupError):
    pass


class ClosedLead(ValueError):
    """The lead is out of the funnel (dispositioned, opted out): nobody is to work it, so it is
    handed to nobody (a rep who got an opted-out buyer's lead would contact them)."""


def _with_account(state: RoutingState, facts: LeadFacts, by_domain: Mapping[str, str]) -> RoutingState:
    owner = by_domain.get(facts.company_domain) if facts.company_domain else None
    return replace(state, account_owner=owner)


# ---- writing decisions ----------------------------------------------------------------------


def _routed(facts: LeadFacts, decision: Decision, assignment_no: int, day: date | None, now: datetime,
            cause: CloudEvent | None) -> CloudEvent:
    """The router's own part of a decision (kept in its store only): see domain.LeadRouted."""
    return new_event(LeadRouted.TYPE, service=SERVICE, lead_id=facts.lead_id, time=now, cause=cause,
                     correlation_id=None if cause else facts.correlation_id,
                     data=LeadRouted.wire(lead_id=facts.lead_id, facts=facts.to_json(),
                                          company_domain=facts.company_domain, assignment_no=assignment_no,
                                          owner_id=decision.owner_id, day=day.isoformat() if day else None,
                                          rule_id=decision.rule_id, cursor=decision.next_cursor,
                                          weights=dict(decision.weights) if decision.weights is not None else None))


def _owner_day(config: Config, state: RoutingState, owner_id: str, now: datetime) -> date:
    owner = state.owners.get(owner_id)
    return owner_day(owner, config, now) if owner else now.date()


Recorded = list[tuple[str | None, CloudEvent]]


async def _record_assigned(store: RouterStore, config: Config, state: RoutingState, facts: LeadFacts,
                           decision: Decision, assignment_no: int, now: datetime, cause: CloudEvent | None) -> None:
    await store.record_all(_assigned(config, state, facts, decision, assignment_no, now, cause))  # one statement
    _count_assigned(store, decision)
    if assignment_no == 1:  # a queued lead's first owner: the wait is what the histogram is for
        _observe_latency(store, facts, now)


def _observe_latency(store: RouterStore, facts: LeadFacts, now: datetime) -> None:
    latency = max((now - facts.received_at).total_seconds(), 0) if facts.received_at else 0
    store.after_commit(lambda: metrics.routing_latency.observe(latency))


def _count_assigned(store: RouterStore, decision: Decision) -> None:
    # An admin's choice carries the request's free-text reason: never a label value (unbounded, and
    # it may name people); it counts as a reassignment, as moving an assigned lead does (_move).
    reason = "reassigned" if decision.method == "manual" else decision.reason
    store.after_commit(metrics.assignments.labels(decision.team_id or "none", decision.method, reason).inc)


def _assigned(config: Config, state: RoutingState, facts: LeadFacts, decision: Decision, assignment_no: int,
              now: datetime, cause: CloudEvent | None) -> Recorded:
    """lead.assigned, then the decision's private part (facts, the owner's day, the rule's cursor).
    Both built in wire form without validation (`WireModel.wire`): every field comes from the
    decision and the lead's facts, already typed; building them was a tenth of a decision's CPU."""
    assert decision.owner_id is not None
    assigned = new_event(
        "lead.assigned", service=SERVICE, lead_id=facts.lead_id, time=now, cause=cause,
        correlation_id=None if cause else facts.correlation_id,
        data=LeadAssigned.wire(
            lead_id=facts.lead_id, owner_id=decision.owner_id, team_id=decision.team_id,
            rule_id=decision.rule_id, method=decision.method, reason=decision.reason,
            assignment_no=assignment_no, assigned_at=now,
            candidates=[Candidate.wire(owner_id=c.owner_id, eligible=c.eligible, why=c.why)
                        for c in decision.candidates],
            tier=facts.tier, source=facts.source, contactable=facts.contactable, received_at=facts.received_at,
            missing_fields=list(decision.missing_fields), external_id=facts.external_id,
        ),
    )
    routed = _routed(facts, decision, assignment_no, _owner_day(config, state, decision.owner_id, now), now, cause)
    return [(TOPIC_ROUTING, assigned), (None, routed)]


async def _enqueue(store: RouterStore, facts: LeadFacts, decision: Decision, assignment_no: int, now: datetime,
                   cause: CloudEvent | None, from_owner_id: str | None = None) -> None:
    await store.record_all(_queued(facts, decision, assignment_no, now, cause, from_owner_id))


def _queued(facts: LeadFacts, decision: Decision, assignment_no: int, now: datetime,
            cause: CloudEvent | None, from_owner_id: str | None = None) -> Recorded:
    queued = new_event(
        "lead.queued", service=SERVICE, lead_id=facts.lead_id, time=now, cause=cause,
        correlation_id=None if cause else facts.correlation_id,
        data=LeadQueued(lead_id=facts.lead_id, tier=facts.tier, queue=f"tier-{facts.tier}", reason=decision.reason,
                        missing_fields=list(decision.missing_fields), queued_at=now,
                        assignment_no=assignment_no, from_owner_id=from_owner_id),
    )
    return [(TOPIC_ROUTING, queued), (None, _routed(facts, replace(decision, owner_id=None, next_cursor=None,
                                                                   weights=None), assignment_no, None, now, cause))]


async def _record_dequeued(store: RouterStore, facts: LeadFacts, reason: str, queued_at: datetime,
                           now: datetime, cause: CloudEvent | None = None, *, assignment_no: int) -> None:
    await store.record(TOPIC_ROUTING, new_event(
        "lead.dequeued", service=SERVICE, lead_id=facts.lead_id, time=now, cause=cause,
        correlation_id=None if cause else facts.correlation_id,
        data=LeadDequeued(lead_id=facts.lead_id, tier=facts.tier, queue=f"tier-{facts.tier}", reason=reason,
                          queued_at=queued_at, assignment_no=assignment_no),
    ))


# ---- received leads -------------------------------------------------------------------------


async def route_lead(uow: Any, received: Received[LeadReceived], deps: RouterDeps) -> None:
    await route_leads(uow, [received], deps)


async def route_leads(uow: Any, run: list[Received[LeadReceived]], deps: RouterDeps) -> None:
    """Route received leads, a run at a time (consecutive lead.received of a fetched batch): the
    run's locks are taken in one statement, the leads' context and the routing state read in
    one, each lead is decided in turn on the state the earlier ones left (as if they had come
    one by one), and the decisions are recorded in one call (the projection writes a run of
    assignments in one round trip)."""
    config, now = deps.config, deps.clock.now()
    store = deps.store(uow)
    leads: dict[str, tuple[CloudEvent, LeadFacts]] = {}
    for received in run:  # the same lead twice (a replay under another event id): decided once
        leads.setdefault(received.data.lead_id, (received.envelope, facts_of(received.data,
                                                                              received.envelope.correlationid)))
    facts = [f for _, f in leads.values()]
    # What the decisions lock is known before anything is read: each lead's rule and the owners
    # it picks from, and (account routing) the owner of its company's newest open lead, which the
    # lock statement looks up itself.
    scopes = [decision_scope(config, f, None) for f in facts]
    rules = {rule_id for rule_id, _ in scopes}
    owners: set[str] = set().union(*(scope for _, scope in scopes))
    domains = {f.company_domain for f in facts if f.company_domain} if config.routing.account_match else set()
    fallbacks = fallback_owners(config)
    for _ in range(MAX_SCOPE_WIDENINGS):
        # Under a savepoint only when a decision could leave the scope (a fallback owner outside it).
        attempt, accounts = await store.lock_run(
            list(leads), {f"router.rule:{r}" for r in rules} | {f"router.owner:{o}" for o in owners}, domains,
            undoable=not fallbacks <= owners)
        owners |= accounts
        contexts, state = await store.read_run([(f.lead_id, f.company_domain, f.tier) for f in facts], config, now,
                                               owners=owners | fallbacks, rules={r or "" for r in rules})
        todo: list[_New] = []
        for lead_id, (event, lead_facts) in leads.items():
            known = contexts[lead_id]
            if known.known:
                continue  # already routed or waiting
            # Another writer of this lead's stream (a reassignment, a second router) makes the
            # commit conflict, and the batch is retried from fresh state.
            store.expect(lead_id, known.version)
            todo.append(_New(event, lead_facts, known.account_owner, known.queue_ahead))
        if not todo:
            await attempt.keep()
            return
        decided = await _decide_run(store, config, todo, state, now)
        # Outside the locked scope: a fallback, or an account that changed hands since the lock.
        outside = {d.owner_id for _, d in decided if d.owner_id is not None and d.owner_id not in owners}
        if not outside:
            await attempt.keep()
            break
        # Undo the locks, widen, retry.
        await attempt.undo()
        owners |= outside
    else:
        raise RuntimeError(f"routing scope kept widening for leads {list(leads)}")
    recorded: Recorded = []
    for lead, decision in decided:
        if decision.owner_id is None:
            recorded += _queued(lead.facts, decision, 1, now, lead.event)
            continue
        recorded += _assigned(config, state, lead.facts, decision, 1, now, lead.event)  # state: for owners' days
        _count_assigned(store, decision)
        _observe_latency(store, lead.facts, now)
    await store.record_all(recorded)
    if deps.wake_queue is not None and any(d.reason == "queue_ahead" for _, d in decided):
        deps.wake_queue.set()  # someone is free: drain now (it waits for this commit's locks)


@dataclass(frozen=True)
class _New:
    """A lead to route: its lead.received, its facts, and what was stored before the run."""

    event: CloudEvent
    facts: LeadFacts
    account_owner: str | None
    queue_ahead: bool


async def _decide_run(store: RouterStore, config: Config, todo: list[_New], state: RoutingState,
                      now: datetime) -> list[tuple[_New, Decision]]:
    """Each lead of a run decided in turn, on the state the decisions before it left."""
    decided: list[tuple[_New, Decision]] = []
    by_domain: dict[str, str] = {}  # accounts this run assigned (newer than the stored ones)
    queued: list[LeadFacts] = []  # leads this run sends to the queue (they drain after the stored ones)
    ahead: dict[str, list[LeadFacts]] = {}  # stored queued leads ahead of a tier, read once per run
    tiers = config.tiers  # the queue's order: the tiers' rank in the configuration, not their names
    for lead in todo:
        facts = lead.facts
        account = by_domain.get(facts.company_domain, lead.account_owner) if facts.company_domain else None
        decision = decide(config, facts, replace(state, account_owner=account), now)
        mine = tiers.key(facts.tier)
        if decision.owner_id is not None and (lead.queue_ahead or any(tiers.key(q.tier) <= mine for q in queued)):
            if facts.tier not in ahead:
                ahead[facts.tier] = await store.queued_ahead(facts.tier, DRAIN_PAGE, tiers)
            waiting = ahead[facts.tier] + [q for q in queued if tiers.key(q.tier) <= mine]
            if _wanted_by_queue(config, waiting, decision.owner_id, state, now):
                # Someone became free by time (working hours, an absence ending) before the queue
                # check saw it: older leads of the same or a higher tier get them first.
                decision = replace(decision, owner_id=None, method="queue", reason="queue_ahead")
        decided.append((lead, decision))
        if decision.owner_id is None:
            queued.append(facts)
            continue
        state = record(state, decision, config, now)
        if facts.company_domain:
            by_domain[facts.company_domain] = decision.owner_id
    return decided


def _wanted_by_queue(config: Config, waiting: list[LeadFacts], owner_id: str, state: RoutingState,
                     now: datetime) -> bool:
    """Whether a queued lead that drains before the new one could go to `owner_id` now: one its
    rule picks from or its own fallback (not any rule's fallback: that held new leads back behind
    queued leads that could never take their owner)."""
    owner = state.owners.get(owner_id)
    for queued in waiting:
        _, scope = decision_scope(config, queued, None)
        if ((owner_id in scope or owner_id == fallback_of(config, queued))
                and eligibility(owner, queued, state, config, now) is None):
            return True
    return False


# ---- the queue ------------------------------------------------------------------------------


async def drain_queue(target: RouterStore | UnitOfWork, config: Config, now: datetime, *,
                      after: QueueKey | None = None, limit: int = DRAIN_PAGE) -> tuple[int, QueueKey | None]:
    """Assign the queued leads someone can take now, in drain order (tier by the configuration's
    rank, then age), one page from `after`. Returns (leads assigned, the key to continue from,
    or None at the end)."""
    store = store_of(target)
    if not await store.queue_nonempty():
        return 0, None
    await store.lock_routing()
    state = await store.load_state(config, now)
    if not anyone_available(config, state, now):
        return 0, None
    page = await store.queue_page(after, limit, config.tiers)
    by_domain = await store.account_owners({q.facts.company_domain for q in page if q.facts.company_domain})
    assigned = 0
    for queued in page:
        facts = queued.facts
        decision = decide(config, facts, _with_account(state, facts, by_domain), now)
        if decision.owner_id is None:
            continue
        store.expect(facts.lead_id, queued.version)
        await _record_dequeued(store, facts, "owner_available", queued.queued_at, now,
                               assignment_no=queued.assignment_no)
        await _record_assigned(store, config, state, facts, decision, queued.assignment_no, now, None)
        state = record(state, decision, config, now)
        if facts.company_domain:  # the company's next queued lead goes to the same owner, as new ones do
            by_domain[facts.company_domain] = decision.owner_id
        assigned += 1
        if not anyone_available(config, state, now):
            return assigned, None
    last = page[-1].key if len(page) == limit else None
    return assigned, last


# ---- owners at runtime ----------------------------------------------------------------------


async def update_owner(target: RouterStore | UnitOfWork, config: Config, now: datetime, owner_id: str,
                       changes: dict[str, Any], actor: str | None) -> Owner:
    """Apply a partial change to an owner, as an event on the owner's stream, at once.
    Raises UnknownOwner, or pydantic's ValidationError when the result is not a valid owner."""
    store = store_of(target)
    configured = config.owner(owner_id)
    if configured is None:
        raise UnknownOwner(owner_id)
    await store.lock_routing()
    current, version = await store.owner_changes(owner_id)
    # The projection's version is the owner stream's: a concurrent change of the same owner
    # makes this commit conflict, and the command is retried from fresh state.
    store.expect(owner_id, version)
    before = effective_owner(configured, current)
    after = effective_owner(configured, {**(current or {}), **changes})
    event = new_event(OwnerUpdated.TYPE, service=SERVICE, lead_id=owner_id, time=now,
                      data=OwnerUpdated(owner_id=owner_id, changes=changes, actor=actor))
    await store.record(None, event, stream=owner_id)  # kept in the router's store; not a contract topic event
    # As the owner is seen now: an absence whose `until` has passed is over, though still stored.
    if (current_status(after, now) == "out_of_office" and current_status(before, now) != "out_of_office"
            and config.routing.on_out_of_office == "reroute_untouched"):
        for row in await store.open_untouched(owner_id, config.tiers):
            store.expect(row.lead_id, row.version)
            await _reroute(store, config, now, row, "owner_out_of_office")
    await drain_queue(store, config, now)  # at once, in this transaction; the queue loop does the rest
    return after


# ---- reassignment ---------------------------------------------------------------------------


async def reassign(target: RouterStore | UnitOfWork, config: Config, clock: Clock, lead_id: str,
                   to_owner: str | None, reason: str, cause: CloudEvent | None = None) -> dict[str, Any]:
    """Give the lead to `to_owner`, or route it again (None) to someone other than its owner.
    `cause`: the event that asked for it (an escalation), the causation id of what is emitted.
    The time is read once the routing state is ours: read before, a reassignment that waited for
    a concurrent one was stamped earlier than it, and a subscriber behind (a lead's deliveries go
    in event-time order) got the two lead.reassigned swapped.
    Raises UnknownLead, UnknownOwner (the named owner), ClosedLead, SameOwner, NobodyEligible
    (routing again: nobody else can take the lead now, and its owner can still work it)."""
    store = store_of(target)
    if to_owner is not None and config.owner(to_owner) is None:
        raise UnknownOwner(to_owner)
    await store.lock_routing()
    now = clock.now()
    await store.load_version(lead_id)
    row = await store.assignment(lead_id, for_update=True)
    if row is None:
        return await _assign_queued(store, config, now, lead_id, to_owner, reason, cause)
    if row.closed_at is not None:
        raise ClosedLead(row.closed_at)
    if to_owner == row.owner_id:
        raise SameOwner(to_owner)
    if to_owner is None:
        return await _reroute(store, config, now, row, reason, stays_if_only_owner=True, cause=cause)
    state = await store.load_state(config, now)
    facts = row.facts
    why_not = eligibility(state.owners.get(to_owner), facts, state, config, now)
    # An admin's choice stands even when the owner is not eligible; the candidate says so.
    decision = _named(config, facts, to_owner, reason, why_not)
    return await _move(store, config, state, now, row, facts, decision, reason, cause)


def _named(config: Config, facts: LeadFacts, owner_id: str, reason: str, why_not: str | None) -> Decision:
    """An admin's choice of owner, in the owner's own team (`home_team`)."""
    return Decision(owner_id, home_team(config, owner_id, first_match(config, facts)), None, "manual", reason,
                    (Candidate(owner_id=owner_id, eligible=why_not is None, why=why_not or "named by the request"),))


async def _move(store: RouterStore, config: Config, state: RoutingState, now: datetime, row: Assignment,
                facts: LeadFacts, decision: Decision, reason: str, cause: CloudEvent | None = None) -> dict[str, Any]:
    assignment_no = row.assignment_no + 1
    assert decision.owner_id is not None
    await store.record(TOPIC_ROUTING, new_event(
        "lead.reassigned", service=SERVICE, lead_id=facts.lead_id, time=now, cause=cause,
        correlation_id=None if cause else facts.correlation_id,
        data=LeadReassigned(
            lead_id=facts.lead_id, from_owner_id=row.owner_id, to_owner_id=decision.owner_id, reason=reason,
            assignment_no=assignment_no, method=decision.method, team_id=decision.team_id,
            rule_id=decision.rule_id, candidates=list(decision.candidates), assigned_at=now, tier=facts.tier,
            source=facts.source, contactable=facts.contactable, received_at=facts.received_at,
            external_id=facts.external_id,
        ),
    ))
    await store.record(None, _routed(facts, decision, assignment_no,
                                     _owner_day(config, state, decision.owner_id, now), now, cause))
    store.after_commit(metrics.assignments.labels(decision.team_id or "none", decision.method, "reassigned").inc)
    if row.closed_at is None:
        await drain_queue(store, config, now)  # the previous owner has room again
    return {"lead_id": facts.lead_id, "status": "reassigned", "owner_id": decision.owner_id,
            "assignment_no": assignment_no}


async def _reroute(store: RouterStore, config: Config, now: datetime, row: Assignment,
                   reason: str, *, stays_if_only_owner: bool = False,
                   cause: CloudEvent | None = None) -> dict[str, Any]:
    """Route the lead again, to someone other than its owner. Nobody else eligible: a closed
    lead stays (NobodyEligible); an open one waits in the queue, unless `stays_if_only_owner`
    and its owner can still take it: the queue would only hand it straight back to them, so it
    stays with them (NobodyEligible) instead of a lead.queued the request never asked for."""
    facts = row.facts
    state = await store.load_state(config, now)
    if facts.company_domain:
        by_domain = await store.account_owners({facts.company_domain})
        if by_domain.get(facts.company_domain) != row.owner_id:
            state = _with_account(state, facts, by_domain)
    state = release(state, row.owner_id) if row.closed_at is None else state
    decision = decide(config, facts, state, now, exclude=frozenset({row.owner_id}))
    if decision.owner_id is not None:
        return await _move(store, config, state, now, row, facts, decision, reason, cause)
    if row.closed_at is not None:
        raise NobodyEligible(facts.lead_id)  # a closed lead is not worth a place in the queue
    if stays_if_only_owner and decide(config, facts, state, now).owner_id == row.owner_id:
        raise NobodyEligible(facts.lead_id)
    # Nobody else can take it now: it waits in the queue (and drains like any queued lead)
    # rather than staying with an owner it was taken from (lead.queued takes it from them).
    await _enqueue(store, facts, decision, row.assignment_no + 1, now, cause, from_owner_id=row.owner_id)
    return {"lead_id": facts.lead_id, "status": "queued", "owner_id": None}


async def _assign_queued(store: RouterStore, config: Config, now: datetime, lead_id: str, to_owner: str | None,
                         reason: str, cause: CloudEvent | None = None) -> dict[str, Any]:
    row = await store.queued(lead_id, for_update=True)
    if row is None:
        raise UnknownLead(lead_id)
    facts = row.facts
    state = await store.load_state(config, now)
    if to_owner is None:
        decision = decide(config, facts, state, now)
        if decision.owner_id is None:
            return {"lead_id": lead_id, "status": "queued", "owner_id": None}
    else:
        why_not = eligibility(state.owners.get(to_owner), facts, state, config, now)
        decision = _named(config, facts, to_owner, reason, why_not)
    await _record_dequeued(store, facts, "reassigned" if to_owner else "owner_available", row.queued_at, now, cause,
                           assignment_no=row.assignment_no)
    await _record_assigned(store, config, state, facts, decision, row.assignment_no, now, cause)
    return {"lead_id": lead_id, "status": "assigned", "owner_id": decision.owner_id,
            "assignment_no": row.assignment_no}


# ---- escalations ----------------------------------------------------------------------------


async def on_escalation(uow: Any, received: Received[EscalationTriggered], deps: RouterDeps) -> None:
    """An escalation step configured with `reassign: true` fired: route the lead again, away
    from the owner who let it breach. Once per lead and step: with `on_reassign: reset` the new
    owner's timer starts again and its chain reaches the step again; rerouting once more would
    pass the lead round the team for ever, never breaching. The step then only notifies."""
    data, config, clock = received.data, deps.config, deps.clock
    policy = next((p for p in config.escalation_policies if p.id == data.policy_id), None)
    step = next((s for s in policy.steps if s.step == data.step), None) if policy else None
    if step is None or not step.reassign:
        return
    store, reason = deps.store(uow), f"escalation:{data.policy_id}:{data.step}"
    if reason in await store.reassign_reasons(data.lead_id):
        log.info("router.escalation_reassign_done_before", lead_id=data.lead_id, policy_id=data.policy_id,
                 step=data.step)
        return
    try:
        await reassign(store, config, clock, data.lead_id, None, reason, cause=received.envelope)
    except (UnknownLead, NobodyEligible, ClosedLead):
        log.info("router.escalation_reassign_skipped", lead_id=data.lead_id, policy_id=data.policy_id,
                 step=data.step)


# ---- activities -----------------------------------------------------------------------------


async def on_activity(uow: Any, received: Received[ActivityRecorded], deps: RouterDeps) -> None:
    """A disposition or an opt-out ends the lead's claim on its owner's capacity, or takes it
    out of the queue; any touch marks the lead as worked (an owner going out of office keeps
    worked leads)."""
    activity, config, clock, event = received.data, deps.config, deps.clock, received.envelope
    store = deps.store(uow)
    closes = activity.is_disposition or activity.type == "opt_out"
    if not closes and activity.type not in TOUCH_TYPES:
        return
    if closes:
        opted_out = activity.type == "opt_out"
        await _close(store, config, activity.lead_id, activity.occurred_at, "opt_out" if opted_out else "disposition",
                     "opted_out" if opted_out else "dispositioned", event, clock.now())
        return
    await store.load_version(activity.lead_id)  # a concurrent decision on the lead: retry from fresh state
    row = await store.assignment(activity.lead_id)
    now = clock.now()
    if (row is not None and row.touched_at is None
            and works_the_lead(activity.type, activity.outcome, activity.occurred_at, row.assigned_at)):
        await store.record(None, new_event(
            LeadTouched.TYPE, service=SERVICE, lead_id=activity.lead_id, time=now, cause=event,
            data=LeadTouched(lead_id=activity.lead_id, touched_at=activity.occurred_at)))


async def _close(store: Any, config: Config, lead_id: str, closed_at: datetime, cause: str, dequeue_reason: str,
                 event: CloudEvent, now: datetime) -> None:
    """The lead is out of the funnel (opted out, dispositioned): its claim on its owner's capacity
    ends and the queue moves on; a lead still waiting leaves the queue, never to be assigned (nor
    do newer leads wait behind it)."""
    await store.lock_routing()  # before the row lock, as reassignment does
    await store.load_version(lead_id)  # a concurrent decision on the lead: retry from fresh state
    row = await store.assignment(lead_id)
    if row is None:
        waiting = await store.queued(lead_id, for_update=True)
        if waiting is not None:
            await _record_dequeued(store, waiting.facts, dequeue_reason, waiting.queued_at, now, cause=event,
                                   assignment_no=waiting.assignment_no)
        return
    if row.closed_at is not None:
        return
    await store.record(None, new_event(
        LeadClosed.TYPE, service=SERVICE, lead_id=lead_id, time=now, cause=event,
        data=LeadClosed(lead_id=lead_id, closed_at=closed_at, cause=cause)))
    await drain_queue(store, config, now)


# ---- leads completed or corrected -------------------------------------------------------------


async def on_lead_updated(uow: Any, received: Received[LeadUpdated], deps: RouterDeps) -> None:
    """A lead's fields completed or corrected (PATCH), or its tier raised by a repeat: the facts
    the router keeps follow, and a queued lead is tried again at once (a field a rule requires
    now given, a new tier in the queue's order) instead of waiting for the fallback owner."""
    data, config, now = received.data, deps.config, deps.clock.now()
    store = deps.store(uow)
    if data.withdraws_consent:  # as the opt_out activity: the buyer asked not to be contacted
        await _close(store, config, data.lead_id, received.envelope.time, "opt_out", "opted_out", received.envelope,
                     now)
        return

    async def lead_as_routed(*, for_update: bool) -> QueuedLead | Assignment | None:
        return (await store.queued(data.lead_id, for_update=for_update)
                or await store.assignment(data.lead_id, for_update=for_update))

    # Most updates change nothing routing uses (a title, a note): seen without a lock, they take
    # neither the routing lock, which new leads' decisions wait for, nor the lead's rows.
    seen = await lead_as_routed(for_update=False)
    if seen is None or updated_facts(seen.facts, data.changed, data.tier, data.contactable) == seen.facts:
        return  # not routed here (yet; its lead.received carries the facts), or nothing to follow
    await store.lock_routing()  # before the row locks, as reassignment does
    await store.load_version(data.lead_id)  # a concurrent decision on the lead: retry from fresh state
    current = await lead_as_routed(for_update=True)
    if current is None:
        return
    waiting = isinstance(current, QueuedLead)
    facts = updated_facts(current.facts, data.changed, data.tier, data.contactable)
    if facts == current.facts:
        return
    await store.record(None, new_event(
        LeadFactsUpdated.TYPE, service=SERVICE, lead_id=data.lead_id, time=now, cause=received.envelope,
        data=LeadFactsUpdated(lead_id=data.lead_id, facts=facts.to_json(), company_domain=facts.company_domain,
                              tier=facts.tier)))
    if waiting:
        await drain_queue(store, config, now)


# What each subscription does with each payload class (bound to RouterDeps in bootstrap).
INTAKE_HANDLERS = {LeadReceived: route_lead, ActivityRecorded: on_activity, LeadUpdated: on_lead_updated}
# Consecutive received leads are routed a run at a time (route_lead is the run of one).
INTAKE_BATCHED = {LeadReceived: route_leads}
ESCALATION_HANDLERS = {EscalationTriggered: on_escalation}
