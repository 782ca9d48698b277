"""The router's store: what its handlers read, lock and record, behind `RouterStore`.

`PostgresRouterStore` reads the projection tables (services/router/projection.py) in the unit
of work's transaction and records through the unit of work (projection + event store, one
transaction). `InMemoryRouterStore` is the same behaviour in dictionaries, for handler unit
tests; tests/integration/test_router_store_contract.py runs one contract against both.

The invariant both keep: the state a handler reads is exactly what the recorded events imply
(the fake applies events in memory as the projection does in SQL), and a stream's version is the
number of events recorded on it, which `expect` compares at commit.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import cache
from types import MappingProxyType
from typing import Any, Protocol

from pydantic import BaseModel
from sqlalchemy import Text, exists, func, literal, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause

from shared.config import Config, Owner, Tiers, per_config
from shared.db import xact_lock
from shared.events import (
    PAYLOADS,
    CloudEvent,
    LeadAssigned,
    LeadDequeued,
    LeadQueued,
    LeadReassigned,
)
from shared.eventstore import EVENTS, ConcurrencyConflict
from shared.uow import UnitOfWork

from .domain import (
    LeadClosed,
    LeadFacts,
    LeadFactsUpdated,
    LeadRouted,
    LeadTouched,
    OwnerUpdated,
    RoutingState,
    capacity_changed,
    effective_owner,
    open_counted,
    owner_day,
)
from .tables import SCHEMA, assignments, owner_state, queue

# Drain order: the tier's rank in the configuration (Tiers.key: rank, then name), queued_at, the
# lead's received_at (as its facts hold it: ISO text in UTC, which sorts as the instants do), lead_id.
# The rank is computed from the configuration of the moment, never stored: a new configuration
# re-orders the queue at once, and replaying the events rebuilds the same table whatever it says.
# received_at orders the leads one run queued (they share queued_at, its transaction's now): else
# they drained by their random ids, a lead received seconds after another often first.
QueueKey = tuple[int, str, datetime, str, str]


@dataclass(frozen=True)
class LeadContext:
    """What routing a new lead needs to know first, in one read."""

    known: bool  # already assigned or queued
    account_owner: str | None  # owner of the newest open lead of the same company domain
    queue_ahead: bool  # a lead of the same or a higher tier (by the configuration's rank) is waiting
    version: int  # the lead's stream version


@dataclass(frozen=True)
class Assignment:
    lead_id: str
    owner_id: str
    tier: str
    assignment_no: int
    assigned_at: datetime
    closed_at: datetime | None
    touched_at: datetime | None
    facts: LeadFacts
    version: int = 0


@dataclass(frozen=True)
class QueuedLead:
    lead_id: str
    tier: str
    reason: str
    queued_at: datetime
    assignment_no: int
    facts: LeadFacts
    version: int = 0
    rank: int = 0  # the tier's rank in the configuration the lead was read under (Tiers.rank)
    received: str = ""  # the lead's received_at as its stored facts hold it (see QueueKey)

    @property
    def key(self) -> QueueKey:
        return (self.rank, self.tier, self.queued_at, self.received, self.lead_id)


class Scope(Protocol):
    """Locks taken for one routing attempt: kept, or undone to try a wider scope."""

    async def keep(self) -> None: ...

    async def undo(self) -> None: ...


class RouterStore(Protocol):
    """The router's state for one unit of work, and the way its events are recorded."""

    async def record(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None:
        """Apply the event to the state and append it to the store (at commit)."""

    async def record_all(self, items: list[tuple[str | None, CloudEvent]]) -> None:
        """`record` for several events of their subjects' streams, in order."""

    def expect(self, stream: str, version: int) -> None:
        """Commit only if `stream` is still at `version` (else ConcurrencyConflict)."""

    async def load_version(self, stream: str) -> int: ...

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the unit of work has committed (metrics)."""

    # Locks (no-ops in memory): new leads hold the routing state shared and lock their scope;
    # changes that touch many owners take it exclusively.
    async def lock_routing(self) -> None: ...

    async def lock_run(self, lead_ids: list[str], keys: set[str], domains: set[str], *,
                       undoable: bool = True) -> tuple[Scope, set[str]]:
        """Lock, in one go, a run of new leads, the routing state (shared), `keys`, and the owners
        of the newest open leads of `domains` (their account owners, looked up by the lock
        itself); `undoable`: under a savepoint, so that `undo` releases them again. Returns the
        scope and the account owners locked."""

    async def read_run(self, leads: list[tuple[str, str | None, str]], config: Config, now: datetime, *,
                       owners: set[str], rules: set[str]) -> tuple[dict[str, LeadContext], RoutingState]:
        """What deciding a run reads, after its locks: per (lead_id, company domain, tier) what
        routing that lead needs to know first, and the routing state of `owners` and `rules`."""

    async def load_state(self, config: Config, now: datetime, *, owners: set[str] | None = None,
                         rules: set[str] | None = None) -> RoutingState: ...

    async def account_owners(self, domains: set[str]) -> dict[str, str]: ...

    async def assignment(self, lead_id: str, *, for_update: bool = False) -> Assignment | None: ...

    async def open_untouched(self, owner_id: str, tiers: Tiers) -> list[Assignment]:
        """The owner's open leads nobody has touched, by tier (`tiers`' rank) then age, with their
        versions."""

    async def queued(self, lead_id: str, *, for_update: bool = False) -> QueuedLead | None: ...

    async def queue_nonempty(self) -> bool: ...

    async def queue_page(self, after: QueueKey | None, limit: int, tiers: Tiers) -> list[QueuedLead]:
        """Queued leads in drain order (tier by `tiers`' rank, then age), after `after`, with
        their versions."""

    async def queued_ahead(self, tier: str, limit: int, tiers: Tiers) -> list[LeadFacts]:
        """Facts of queued leads that drain before a new lead of `tier`, in drain order."""

    async def owner_changes(self, owner_id: str) -> tuple[dict[str, Any] | None, int]:
        """The owner's runtime changes and their stream version (0: none yet)."""

    async def queue_depths(self) -> dict[str, int]: ...

    async def reassign_reasons(self, lead_id: str) -> set[str]:
        """The reasons of the lead's reassignments so far (`lead.reassigned` data.reason)."""


def tier_rank_sql(column: Any, tiers: Tiers) -> Any:
    """`tiers.rank(column)` in SQL, from the configuration given: the tier's place in
    `tiers.order`, or after all of them for a tier it does not name."""
    order = list(tiers.order)
    return func.coalesce(func.array_position(literal(order, ARRAY(Text)), column) - 1, len(order))


def drain_order(table: Any, tiers: Tiers, at: Any) -> tuple[Any, ...]:
    """`QueueKey`'s columns for a table with a tier and facts (and `at`, its age)."""
    return (tier_rank_sql(table.c.tier, tiers), table.c.tier, at,
            func.coalesce(table.c.facts["received_at"].astext, ""), table.c.lead_id)


def received_text(facts: Mapping[str, Any] | None) -> str:
    """The lead's received_at as `drain_order` reads it from its stored facts."""
    return (facts or {}).get("received_at") or ""


def facts_of_row(lead_id: str, tier: str, raw: Mapping[str, Any] | None) -> LeadFacts:
    # Rows written before facts were kept carry only the tier.
    return LeadFacts.from_json(raw) if raw else LeadFacts(lead_id=lead_id, tier=tier, source="unknown")


# ---- Postgres ---------------------------------------------------------------------------------

# Locking. A routing decision reads and advances its rule's cursor and its owners' loads. New
# leads lock just those (the rule and the owners it may give the lead to, sorted, in one
# statement), so decisions for different teams run in parallel, in one router or several.
# Changes that touch many owners at once (draining the queue, reassignment, owner changes,
# closing a lead) take the whole routing state exclusively; new leads hold it shared.
ROUTING = "router.routing"
STORE = EVENTS[SCHEMA]


async def lock_routing(conn: AsyncConnection) -> None:
    """Exclusive: no new-lead decision runs until this transaction ends."""
    await xact_lock(conn, ROUTING)


def _stream_version(lead_id):
    """The lead's stream version, as a column of a query that reads its state row."""
    return (select(func.coalesce(func.max(STORE.c.version), 0)).where(STORE.c.stream_id == lead_id)
            .scalar_subquery().label("version"))


async def effective_owners(conn: AsyncConnection, config: Config) -> dict[str, Owner]:
    changes = await runtime_owner_changes(conn)
    return {o.id: effective_owner(o, changes.get(o.id)) for o in config.owners}


async def runtime_owner_changes(conn: AsyncConnection) -> dict[str, dict[str, Any]]:
    """Owner id -> the fields set at runtime (PUT /v1/owners/{id}), which stay in force over later
    configuration files."""
    return dict((await conn.execute(select(owner_state.c.owner_id, owner_state.c.changes))).all())


async def account_owners(conn: AsyncConnection, domains: set[str]) -> dict[str, str]:
    """Company domain -> owner of its most recently assigned open lead."""
    if not domains:
        return {}
    rows = await conn.execute(_ACCOUNT_OWNERS, {"domains": sorted(domains)})
    return {domain: owner for domain, owner in rows if owner is not None}


@cache
def _state_sql(owners_filtered: bool, rules_filtered: bool, contexts: bool = False) -> TextClause:
    # One round trip for everything a decision reads; with filters, only the owners and the
    # rule in play (a decision on a 500-owner config reads ten owners' counts, not 500). With
    # `contexts`, the leads' contexts come first (kind 'lead', three more columns).
    owner_filter = " AND owner_id = ANY(CAST(:owners AS text[]))" if owners_filtered else ""
    # Open leads only of the owners whose count a decision reads (`open_counted`).
    counted = (" AND (owner_id = ANY(CAST(:counted AS text[])) OR owner_id IN "
               "(SELECT owner_id FROM router.owner_state WHERE changes ? 'capacity'))") if owners_filtered else ""
    rule_filter = " WHERE rule_id = ANY(CAST(:rules AS text[]))" if rules_filtered else ""
    more = ", NULL, NULL, NULL" if contexts else ""
    return text(
        (_CONTEXTS + " UNION ALL " if contexts else "")
        + f"SELECT 'owner' AS kind, owner_id AS k, NULL::int AS n, NULL::date AS day, changes AS j{more} "
        "FROM router.owner_state "
        f"UNION ALL SELECT 'open', owner_id, count(*)::int, NULL, NULL{more} FROM router.assignments "
        f"WHERE closed_at IS NULL{owner_filter}{counted} GROUP BY owner_id "
        f"UNION ALL SELECT 'day', owner_id, assigned, day, NULL{more} FROM router.daily_assignments "
        f"WHERE day >= CAST(:since AS date){owner_filter} "
        f"UNION ALL SELECT 'cursor', rule_id, last_index, NULL, "
        f"jsonb_build_object('counts', counts, 'last_owner', last_owner){more} FROM router.rr_cursors{rule_filter}"
    )


# The account owner of a company domain: the owner of its newest open lead. One text for the lock
# statement (which locks that owner), the read after it (which routes to that owner) and the
# queue's drain (`account_owners`).
_ACCOUNT_OWNER = ("(SELECT owner_id FROM router.assignments WHERE company_domain = {domain} AND closed_at IS NULL "
                  "ORDER BY assigned_at DESC LIMIT 1)")
_ACCOUNT_OWNERS = text("SELECT d, " + _ACCOUNT_OWNER.format(domain="d") + " FROM unnest(CAST(:domains AS text[])) AS d")

# A tier's rank (Tiers.rank) in SQL text, from the configuration's order in :tier_order.
_RANK = ("coalesce(array_position(CAST(:tier_order AS text[]), {tier}) - 1, "
         "cardinality(CAST(:tier_order AS text[])))")

# Each lead's context, as rows of the state's shape: (kind 'lead', lead, its stream version,
# NULL, NULL, known, account owner, queue ahead). Queue ahead: a waiting lead's (rank, tier) is at
# most the new lead's (Tiers.key), so `hot` is ahead of `cold` whatever the names sort as. Written
# as "a tier among the configured ones up to the lead's own" so that it stays an index lookup on
# the queue's tier (a hot lead behind a surge of cold ones reads no rows); a lead of a tier the
# configuration does not name also waits behind unnamed tiers up to its own by name.
_CONTEXTS = (
    "SELECT 'lead' AS kind, l.lead AS k, "
    "(SELECT coalesce(max(version), 0) FROM router.events WHERE stream_id = l.lead)::int AS n, "
    "NULL::date AS day, NULL AS j, "
    "EXISTS (SELECT 1 FROM router.assignments WHERE lead_id = l.lead) "
    "OR EXISTS (SELECT 1 FROM router.queue WHERE lead_id = l.lead) AS known, "
    + _ACCOUNT_OWNER.format(domain="l.domain") + " AS account_owner, "
    "(EXISTS (SELECT 1 FROM router.queue AS q WHERE q.tier = ANY((CAST(:tier_order AS text[]))[1:"
    + _RANK.format(tier="l.tier") + " + 1])) "
    "OR (array_position(CAST(:tier_order AS text[]), l.tier) IS NULL AND EXISTS (SELECT 1 FROM router.queue AS q "
    "WHERE q.tier <= l.tier AND q.tier <> ALL(CAST(:tier_order AS text[]))))) AS queue_ahead "
    "FROM unnest(CAST(:leads AS text[]), CAST(:domains AS text[]), CAST(:tiers AS text[])) "
    "AS l(lead, domain, tier)"
)


@per_config
def _owners_by_id(config: Config) -> Mapping[str, Owner]:
    # Once per configuration: a batch lays only the owners with runtime changes over it (it built
    # all 500 owners' mapping anew each time).
    return MappingProxyType({o.id: o for o in config.owners})


def _state_of(config: Config, now: datetime, changes: Mapping[str, Any], open_leads: Mapping[str, int],
              days: Iterable[tuple[str, date, int]], cursors: Mapping[str, int], last_turns: Mapping[str, str],
              weighted: Mapping[str, Mapping[str, int]]) -> RoutingState:
    configured = _owners_by_id(config)  # shared, never changed: a decision reads it only
    effective = {**configured, **{owner: effective_owner(configured[owner], changed)
                                  for owner, changed in changes.items() if owner in configured}} if changes else configured
    today = {owner: n for owner, day, n in days if owner in effective
             and day == owner_day(effective[owner], config, now)}  # each owner's own day
    return RoutingState(owners=effective, open_leads=dict(open_leads), today=today, cursors=dict(cursors),
                        last_turns=dict(last_turns), weighted={k: dict(v) for k, v in weighted.items()})


def _state_params(config: Config, now: datetime, owners: set[str] | None, rules: set[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {"since": (now - timedelta(days=2)).date()}
    if owners is not None:
        params["owners"] = sorted(owners)
        params["counted"] = sorted(owners & open_counted(config))
    if rules is not None:
        params["rules"] = sorted(rules)
    return params


async def load_state(conn: AsyncConnection, config: Config, now: datetime, *, owners: set[str] | None = None,
                     rules: set[str] | None = None) -> RoutingState:
    """The routing state; `owners`/`rules` limit the counts and cursors read to those."""
    rows = await conn.execute(_state_sql(owners is not None, rules is not None), _state_params(config, now, owners, rules))
    return _state_from(config, now, rows, {})


def _state_from(config: Config, now: datetime, rows: Iterable[Any],
                contexts: dict[str, LeadContext]) -> RoutingState:
    """The state in `rows` (the leads' contexts among them go to `contexts`)."""
    changes: dict[str, Any] = {}
    open_leads: dict[str, int] = {}
    days: list[tuple[str, date, int]] = []
    cursors: dict[str, int] = {}
    last_turns: dict[str, str] = {}
    weighted: dict[str, Any] = {}
    for kind, key, n, day, value, *context in rows:  # one pass: a run's state can be a thousand rows
        if kind == "open":
            open_leads[key] = n
        elif kind == "day":
            days.append((key, day, n))
        elif kind == "cursor":
            cursors[key], weighted[key] = n, value["counts"] or {}
            if value["last_owner"] is not None:
                last_turns[key] = value["last_owner"]
        elif kind == "lead":
            known, account_owner, queue_ahead = context
            contexts[key] = LeadContext(known, account_owner, queue_ahead, n)
        else:
            changes[key] = value
    return _state_of(config, now, changes=changes, open_leads=open_leads, days=days, cursors=cursors,
                     last_turns=last_turns, weighted=weighted)


async def queue_depths(conn: AsyncConnection) -> dict[str, int]:
    return {tier: depth for tier, (depth, _) in (await queue_waits(conn)).items()}


async def queue_waits(conn: AsyncConnection) -> dict[str, tuple[int, datetime]]:
    """Per tier: how many leads are queued, and since when the longest-waiting one is."""
    rows = await conn.execute(select(queue.c.tier, func.count(), func.min(queue.c.queued_at)).group_by(queue.c.tier))
    return {tier: (depth, oldest) for tier, depth, oldest in rows.all()}


class _Savepoint:
    def __init__(self, transaction) -> None:
        self._transaction = transaction

    async def keep(self) -> None:
        await self._transaction.commit()  # releases the savepoint; its locks stay with the transaction

    async def undo(self) -> None:
        await self._transaction.rollback()  # and the locks taken under it


def _assignment(row) -> Assignment:
    return Assignment(lead_id=row.lead_id, owner_id=row.owner_id, tier=row.tier, assignment_no=row.assignment_no,
                      assigned_at=row.assigned_at, closed_at=row.closed_at, touched_at=row.touched_at,
                      facts=facts_of_row(row.lead_id, row.tier, row.facts), version=row.version)


def _queued(row, tiers: Tiers | None = None) -> QueuedLead:
    return QueuedLead(lead_id=row.lead_id, tier=row.tier, reason=row.reason, queued_at=row.queued_at,
                      assignment_no=row.assignment_no, facts=facts_of_row(row.lead_id, row.tier, row.facts),
                      version=row.version, rank=tiers.rank(row.tier) if tiers is not None else 0,
                      received=received_text(row.facts))


# Locks of a run of new leads, in one statement: the leads, the keys given and the account
# owners of the domains given, all in hash order (every transaction takes its locks in the same
# order, so none waits in a circle), then the routing state shared. The account owners are read
# before the locks are granted (one statement, one snapshot): the decision reads them again after.
_LOCK_RUN = text(
    "WITH accounts AS (SELECT " + _ACCOUNT_OWNER.format(domain="d") + " AS owner_id "
    "FROM unnest(CAST(:domains AS text[])) AS d), "
    "keys AS (SELECT 'router.lead:' || k AS k FROM unnest(CAST(:leads AS text[])) AS k "
    "UNION SELECT k FROM unnest(CAST(:keys AS text[])) AS k "
    "UNION SELECT 'router.owner:' || owner_id FROM accounts WHERE owner_id IS NOT NULL), "
    "locked AS (SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtext(k) AS h FROM keys ORDER BY 1) "
    "AS ordered UNION ALL SELECT pg_advisory_xact_lock_shared(hashtext(:routing))) "
    "SELECT (SELECT count(*) FROM locked) AS locks, "
    "ARRAY(SELECT DISTINCT owner_id FROM accounts WHERE owner_id IS NOT NULL) AS accounts"
)


class PostgresRouterStore:
    """The router's projection tables, read in the unit of work's transaction."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    @property
    def conn(self) -> AsyncConnection:
        return self.uow.conn

    async def record(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None:
        await self.uow.record(topic, event, stream=stream)

    async def record_all(self, items: list[tuple[str | None, CloudEvent]]) -> None:
        await self.uow.record_all(items)  # one call: the projection may fuse them into one statement

    def expect(self, stream: str, version: int) -> None:
        self.uow.expect(stream, version)

    async def load_version(self, stream: str) -> int:
        return await self.uow.load_version(stream)

    async def commit(self) -> None:
        """Commit the unit of work (handlers leave that to their caller)."""
        await self.uow.commit()

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.uow.after_commit(callback)

    async def lock_routing(self) -> None:
        await lock_routing(self.conn)

    async def lock_run(self, lead_ids: list[str], keys: set[str], domains: set[str], *,
                       undoable: bool = True) -> tuple[Scope, set[str]]:
        # The same lead under another event id (a replay) may be in flight in another router: the
        # lead's lock makes the second one see the first one's decision instead of deciding again.
        attempt = await self.conn.begin_nested() if undoable else None
        row = (await self.conn.execute(_LOCK_RUN, {"leads": lead_ids, "keys": sorted(keys),
                                                   "domains": sorted(domains), "routing": ROUTING})).one()
        return (_Savepoint(attempt) if attempt is not None else _Kept()), set(row.accounts)

    async def read_run(self, leads: list[tuple[str, str | None, str]], config: Config, now: datetime, *,
                       owners: set[str], rules: set[str]) -> tuple[dict[str, LeadContext], RoutingState]:
        params = _state_params(config, now, owners, rules) | {
            "leads": [lead for lead, _, _ in leads], "domains": [domain for _, domain, _ in leads],
            "tiers": [tier for _, _, tier in leads], "tier_order": list(config.tiers.order)}
        contexts: dict[str, LeadContext] = {}
        state = _state_from(config, now, await self.conn.execute(_state_sql(True, True, True), params), contexts)
        return contexts, state

    async def load_state(self, config: Config, now: datetime, *, owners: set[str] | None = None,
                         rules: set[str] | None = None) -> RoutingState:
        return await load_state(self.conn, config, now, owners=owners, rules=rules)

    async def account_owners(self, domains: set[str]) -> dict[str, str]:
        return await account_owners(self.conn, domains)

    async def assignment(self, lead_id: str, *, for_update: bool = False) -> Assignment | None:
        stmt = select(assignments, _stream_version(assignments.c.lead_id)).where(assignments.c.lead_id == lead_id)
        row = (await self.conn.execute(stmt.with_for_update(of=assignments) if for_update else stmt)).first()
        return _assignment(row) if row else None

    async def open_untouched(self, owner_id: str, tiers: Tiers) -> list[Assignment]:
        rows = await self.conn.execute(
            select(assignments, _stream_version(assignments.c.lead_id))
            .where(assignments.c.owner_id == owner_id, assignments.c.closed_at.is_(None),
                   assignments.c.touched_at.is_(None))
            .order_by(*drain_order(assignments, tiers, assignments.c.assigned_at))
        )
        return [_assignment(r) for r in rows]

    async def queued(self, lead_id: str, *, for_update: bool = False) -> QueuedLead | None:
        stmt = select(queue, _stream_version(queue.c.lead_id)).where(queue.c.lead_id == lead_id)
        row = (await self.conn.execute(stmt.with_for_update(of=queue) if for_update else stmt)).first()
        return _queued(row) if row else None

    async def queue_nonempty(self) -> bool:
        return bool(await self.conn.scalar(select(exists().select_from(queue))))

    async def queue_page(self, after: QueueKey | None, limit: int, tiers: Tiers) -> list[QueuedLead]:
        order = drain_order(queue, tiers, queue.c.queued_at)
        stmt = select(queue, _stream_version(queue.c.lead_id)).order_by(*order).limit(limit)
        if after is not None:
            stmt = stmt.where(tuple_(*order) > tuple_(*after))
        return [_queued(r, tiers) for r in await self.conn.execute(stmt)]

    async def queued_ahead(self, tier: str, limit: int, tiers: Tiers) -> list[LeadFacts]:
        order = drain_order(queue, tiers, queue.c.queued_at)
        rows = await self.conn.execute(
            select(queue.c.lead_id, queue.c.tier, queue.c.facts)
            .where(tuple_(*order[:2]) <= tuple_(*tiers.key(tier))).order_by(*order).limit(limit)
        )
        return [facts_of_row(r.lead_id, r.tier, r.facts) for r in rows]

    async def owner_changes(self, owner_id: str) -> tuple[dict[str, Any] | None, int]:
        row = (await self.conn.execute(
            select(owner_state.c.changes, owner_state.c.version).where(owner_state.c.owner_id == owner_id)
        )).first()
        return (row.changes, row.version) if row else (None, 0)

    async def queue_depths(self) -> dict[str, int]:
        return await queue_depths(self.conn)

    async def reassign_reasons(self, lead_id: str) -> set[str]:
        events = EVENTS[SCHEMA]
        payloads = await self.conn.scalars(
            select(events.c.payload).where(events.c.stream_id == lead_id, events.c.event_type == LeadReassigned.TYPE))
        return {CloudEvent.from_bytes(p).data["reason"] for p in payloads}


# ---- in memory --------------------------------------------------------------------------------


@dataclass
class _Row:
    lead_id: str
    owner_id: str
    team_id: str | None
    rule_id: str | None
    tier: str
    assignment_no: int
    assigned_at: datetime
    closed_at: datetime | None = None
    touched_at: datetime | None = None
    facts: dict[str, Any] | None = None
    company_domain: str | None = None


@dataclass
class _Waiting:
    lead_id: str
    tier: str
    reason: str
    queued_at: datetime
    facts: dict[str, Any] = field(default_factory=dict)
    assignment_no: int = 1


class _Kept:
    async def keep(self) -> None:
        pass

    async def undo(self) -> None:
        pass


@dataclass
class InMemoryRouterData:
    """One router's whole state in memory, shared by the units of work over it: the projection's
    tables, and the committed events (topic, stream, event)."""

    assignments: dict[str, _Row] = field(default_factory=dict)
    queue: dict[str, _Waiting] = field(default_factory=dict)
    owner_state: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)
    daily: dict[tuple[str, date], int] = field(default_factory=dict)
    cursors: dict[str, tuple[int, str | None, dict[str, int] | None]] = field(default_factory=dict)
    events: list[tuple[str | None, str, CloudEvent]] = field(default_factory=list)

    def version(self, stream: str) -> int:
        return sum(1 for _, s, _ in self.events if s == stream)

    @property
    def recorded(self) -> list[CloudEvent]:
        return [e for _, _, e in self.events]


class InMemoryRouterStore:
    """A unit of work over `InMemoryRouterData`: recorded events are applied at once, as the
    projection applies them, and kept at `commit()`, which checks the expected versions as the
    event store does. No isolation and no rollback: a unit test runs one unit at a time."""

    def __init__(self, data: InMemoryRouterData | None = None) -> None:
        self.data = data if data is not None else InMemoryRouterData()
        self.pending: list[tuple[str | None, str, CloudEvent]] = []
        self.expected: dict[str, int] = {}
        self.callbacks: list[Callable[[], None]] = []

    # -- recording --

    def version(self, stream: str) -> int:
        """The committed version, as Postgres reads it (this unit's events append at commit)."""
        return self.data.version(stream)

    async def record(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None:
        found = _APPLIERS.get(event.type)
        if found is not None:
            cls, applier = found
            applier(self.data, cls.model_validate(event.data), event)
        self.pending.append((topic, stream or event.subject or event.id, event))

    async def record_all(self, items: list[tuple[str | None, CloudEvent]]) -> None:
        for topic, event in items:
            await self.record(topic, event)

    def expect(self, stream: str, version: int) -> None:
        self.expected.setdefault(stream, version)

    async def load_version(self, stream: str) -> int:
        self.expected.setdefault(stream, self.version(stream))
        return self.expected[stream]

    async def commit(self) -> None:
        for stream, version in self.expected.items():
            if (actual := self.version(stream)) != version:
                raise ConcurrencyConflict(stream, version, actual)
        self.data.events.extend(self.pending)
        self.pending.clear()
        self.expected.clear()
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    async def __aenter__(self) -> InMemoryRouterStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    @property
    def emitted(self) -> list[CloudEvent]:
        """This unit's events, not yet committed."""
        return [e for _, _, e in self.pending]

    # -- locks: one process, one task at a time --

    async def lock_routing(self) -> None:
        pass

    async def lock_run(self, lead_ids: list[str], keys: set[str], domains: set[str], *,
                       undoable: bool = True) -> tuple[Scope, set[str]]:
        return _Kept(), set((await self.account_owners(domains)).values())

    # -- reads --

    async def read_run(self, leads: list[tuple[str, str | None, str]], config: Config, now: datetime, *,
                       owners: set[str], rules: set[str]) -> tuple[dict[str, LeadContext], RoutingState]:
        return await self._contexts(leads, config), await self.load_state(config, now, owners=owners, rules=rules)

    async def _contexts(self, leads: list[tuple[str, str | None, str]], config: Config) -> dict[str, LeadContext]:
        owners = await self.account_owners({domain for _, domain, _ in leads if domain})
        return {lead_id: LeadContext(known=lead_id in self.data.assignments or lead_id in self.data.queue,
                                     account_owner=owners.get(domain) if domain else None,
                                     queue_ahead=any(config.tiers.key(w.tier) <= config.tiers.key(tier)
                                                     for w in self.data.queue.values()),
                                     version=self.version(lead_id))
                for lead_id, domain, tier in leads}

    async def load_state(self, config: Config, now: datetime, *, owners: set[str] | None = None,
                         rules: set[str] | None = None) -> RoutingState:
        def wanted(owner: str) -> bool:
            return owners is None or owner in owners

        def counted(owner: str) -> bool:  # as the Postgres store reads them
            return owners is None or (owner in owners and (
                owner in open_counted(config) or capacity_changed(self.data.owner_state.get(owner, (None,))[0])))

        open_leads: dict[str, int] = {}
        for row in self.data.assignments.values():
            if row.closed_at is None and counted(row.owner_id):
                open_leads[row.owner_id] = open_leads.get(row.owner_id, 0) + 1
        since = (now - timedelta(days=2)).date()
        chosen = {r: c for r, c in self.data.cursors.items() if rules is None or r in rules}
        return _state_of(
            config, now,
            changes={o: c for o, (c, _) in self.data.owner_state.items()},
            open_leads=open_leads,
            days=[(o, d, n) for (o, d), n in self.data.daily.items() if d >= since and wanted(o)],
            cursors={r: i for r, (i, _, _) in chosen.items()},
            last_turns={r: o for r, (_, o, _) in chosen.items() if o is not None},
            weighted={r: w or {} for r, (_, _, w) in chosen.items()},
        )

    async def account_owners(self, domains: set[str]) -> dict[str, str]:
        newest: dict[str, _Row] = {}
        for row in self.data.assignments.values():
            if row.closed_at is None and row.company_domain in domains:
                if row.company_domain not in newest or row.assigned_at > newest[row.company_domain].assigned_at:
                    newest[row.company_domain] = row
        return {d: r.owner_id for d, r in newest.items()}

    def _assignment(self, row: _Row) -> Assignment:
        return Assignment(lead_id=row.lead_id, owner_id=row.owner_id, tier=row.tier,
                          assignment_no=row.assignment_no, assigned_at=row.assigned_at, closed_at=row.closed_at,
                          touched_at=row.touched_at, facts=facts_of_row(row.lead_id, row.tier, row.facts),
                          version=self.version(row.lead_id))

    def _queued(self, waiting: _Waiting, tiers: Tiers | None = None) -> QueuedLead:
        return QueuedLead(lead_id=waiting.lead_id, tier=waiting.tier, reason=waiting.reason,
                          queued_at=waiting.queued_at, assignment_no=waiting.assignment_no,
                          facts=facts_of_row(waiting.lead_id, waiting.tier, waiting.facts),
                          version=self.version(waiting.lead_id),
                          rank=tiers.rank(waiting.tier) if tiers is not None else 0,
                          received=received_text(waiting.facts))

    async def assignment(self, lead_id: str, *, for_update: bool = False) -> Assignment | None:
        row = self.data.assignments.get(lead_id)
        return self._assignment(row) if row else None

    async def open_untouched(self, owner_id: str, tiers: Tiers) -> list[Assignment]:
        rows = [r for r in self.data.assignments.values()
                if r.owner_id == owner_id and r.closed_at is None and r.touched_at is None]
        return [self._assignment(r) for r in sorted(rows, key=lambda r: (*tiers.key(r.tier), r.assigned_at,
                                                                          received_text(r.facts), r.lead_id))]

    async def queued(self, lead_id: str, *, for_update: bool = False) -> QueuedLead | None:
        waiting = self.data.queue.get(lead_id)
        return self._queued(waiting) if waiting else None

    @staticmethod
    def _key(waiting: _Waiting, tiers: Tiers) -> QueueKey:
        return (*tiers.key(waiting.tier), waiting.queued_at, received_text(waiting.facts), waiting.lead_id)

    def _drain_order(self, tiers: Tiers) -> list[_Waiting]:
        return sorted(self.data.queue.values(), key=lambda w: self._key(w, tiers))

    async def queue_nonempty(self) -> bool:
        return bool(self.data.queue)

    async def queue_page(self, after: QueueKey | None, limit: int, tiers: Tiers) -> list[QueuedLead]:
        page = [w for w in self._drain_order(tiers) if after is None or self._key(w, tiers) > after]
        return [self._queued(w, tiers) for w in page[:limit]]

    async def queued_ahead(self, tier: str, limit: int, tiers: Tiers) -> list[LeadFacts]:
        ahead = [w for w in self._drain_order(tiers) if tiers.key(w.tier) <= tiers.key(tier)][:limit]
        return [facts_of_row(w.lead_id, w.tier, w.facts) for w in ahead]

    async def owner_changes(self, owner_id: str) -> tuple[dict[str, Any] | None, int]:
        return self.data.owner_state.get(owner_id, (None, 0))

    async def queue_depths(self) -> dict[str, int]:
        depths: dict[str, int] = {}
        for waiting in self.data.queue.values():
            depths[waiting.tier] = depths.get(waiting.tier, 0) + 1
        return depths

    async def reassign_reasons(self, lead_id: str) -> set[str]:
        return {e.data["reason"] for _, stream, e in self.data.events
                if stream == lead_id and PAYLOADS.get(e.type) is LeadReassigned}


# The projection, in memory: the same events change the same state as projection.py's statements.

def _assigned(store: InMemoryRouterData, data: LeadAssigned, event: CloudEvent) -> None:
    row = store.assignments.get(data.lead_id)
    values = {"owner_id": data.owner_id, "team_id": data.team_id, "rule_id": data.rule_id, "tier": data.tier or "",
              "assignment_no": data.assignment_no, "assigned_at": data.assigned_at}
    store.assignments[data.lead_id] = replace(row, **values) if row else _Row(lead_id=data.lead_id, **values)


def _reassigned(store: InMemoryRouterData, data: LeadReassigned, event: CloudEvent) -> None:
    row = store.assignments.get(data.lead_id)
    if row is not None:
        store.assignments[data.lead_id] = replace(
            row, owner_id=data.to_owner_id, team_id=data.team_id, rule_id=data.rule_id,
            assignment_no=data.assignment_no, assigned_at=data.assigned_at or event.time)


def _queued_in(store: InMemoryRouterData, data: LeadQueued, event: CloudEvent) -> None:
    store.assignments.pop(data.lead_id, None)
    store.queue.setdefault(data.lead_id, _Waiting(data.lead_id, data.tier, data.reason, data.queued_at or event.time))


def _dequeued(store: InMemoryRouterData, data: LeadDequeued, event: CloudEvent) -> None:
    store.queue.pop(data.lead_id, None)


def _routed(store: InMemoryRouterData, data: LeadRouted, event: CloudEvent) -> None:
    if data.owner_id is None:
        if (waiting := store.queue.get(data.lead_id)) is not None:
            waiting.facts, waiting.assignment_no = dict(data.facts), data.assignment_no
    else:
        if (row := store.assignments.get(data.lead_id)) is not None:
            row.facts, row.company_domain = dict(data.facts), data.company_domain
        if data.day is not None:
            store.daily[(data.owner_id, data.day)] = store.daily.get((data.owner_id, data.day), 0) + 1
    if data.rule_id is not None and (data.cursor is not None or data.weights is not None):
        index, last_owner, weights = store.cursors.get(data.rule_id, (-1, None, None))
        store.cursors[data.rule_id] = (index if data.cursor is None else data.cursor,
                                       last_owner if data.cursor is None else data.owner_id,
                                       weights if data.weights is None else dict(data.weights))


def _facts_updated(store: InMemoryRouterData, data: LeadFactsUpdated, event: CloudEvent) -> None:
    if (waiting := store.queue.get(data.lead_id)) is not None:
        waiting.facts, waiting.tier = dict(data.facts), data.tier
    if (row := store.assignments.get(data.lead_id)) is not None:
        row.facts, row.tier, row.company_domain = dict(data.facts), data.tier, data.company_domain


def _closed(store: InMemoryRouterData, data: LeadClosed, event: CloudEvent) -> None:
    if (row := store.assignments.get(data.lead_id)) is not None and row.closed_at is None:
        row.closed_at = data.closed_at


def _touched(store: InMemoryRouterData, data: LeadTouched, event: CloudEvent) -> None:
    if (row := store.assignments.get(data.lead_id)) is not None and row.touched_at is None:
        row.touched_at = data.touched_at


def _owner_updated(store: InMemoryRouterData, data: OwnerUpdated, event: CloudEvent) -> None:
    changes, version = store.owner_state.get(data.owner_id, ({}, 0))
    store.owner_state[data.owner_id] = ({**changes, **data.changes}, version + 1)


_APPLIERS: dict[str, tuple[type[BaseModel], Any]] = {
    cls.TYPE: (cls, fn) for cls, fn in {  # type: ignore[attr-defined]
        LeadAssigned: _assigned, LeadReassigned: _reassigned, LeadQueued: _queued_in, LeadDequeued: _dequeued,
        LeadRouted: _routed, LeadClosed: _closed, LeadTouched: _touched, OwnerUpdated: _owner_updated,
        LeadFactsUpdated: _facts_updated,
    }.items()
}
