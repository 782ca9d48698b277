"""The router's decision state as a projection of its own event store.

Every state table below changes only here, by applying a stored event; the handlers record
events (`uow.record`) instead of writing the tables, and `leadsla replay router` runs this same
function over the store, so the live tables and a rebuild cannot drift.

| table               | events                                                             |
| ------------------- | ------------------------------------------------------------------ |
| `assignments`       | lead.assigned, lead.reassigned, lead.queued (taken back to the queue), |
|                     | router.lead_routed (facts), router.lead_closed, router.lead_touched, |
|                     | router.lead_facts_updated (facts, tier)                            |
| `queue`             | lead.queued, lead.dequeued, router.lead_routed (facts, next number), |
|                     | router.lead_facts_updated (facts, tier)                            |
| `daily_assignments` | router.lead_routed (the owner's day)                               |
| `rr_cursors`        | router.lead_routed (the rule's cursor or weighted credits)         |
| `owner_state`       | owner.updated (on the owner's stream)                              |

Capacity is the count of open assignments: it is released by `router.lead_closed` (a
disposition or opt-out), by `lead.reassigned` (the row moves to the new owner) and by
`lead.queued` for a lead taken back to the queue; the queue shrinks by `lead.dequeued`.

Events carry every value applied (times, days, counters); nothing here reads the clock or the
configuration. The statements name tables through SQLAlchemy Core only, so that a rebuild can
point them at a scratch schema (`schema_translate_map`). There is no bookkeeping column in these
tables that is not derived from events, so nothing is ignored by `--verify`.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy import (
    ARRAY,
    Date,
    DateTime,
    Integer,
    String,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.events import CloudEvent, LeadAssigned, LeadDequeued, LeadQueued, LeadReassigned
from shared.replay import Projection

from .domain import LeadClosed, LeadFactsUpdated, LeadRouted, LeadTouched, OwnerUpdated
from .tables import SCHEMA, assignments, cursors, daily_assignments, owner_state, queue

# An applier gets the event's payload, decoded into its class, and the envelope (its time).
Applier = Callable[[AsyncConnection, Any, CloudEvent], Awaitable[None]]


async def _assigned(conn: AsyncConnection, data: LeadAssigned, event: CloudEvent) -> None:
    values = {"owner_id": data.owner_id, "team_id": data.team_id, "rule_id": data.rule_id,
              "tier": data.tier or "", "assignment_no": data.assignment_no, "assigned_at": data.assigned_at}
    await conn.execute(pg_insert(assignments).values(lead_id=data.lead_id, **values)
                       .on_conflict_do_update(index_elements=[assignments.c.lead_id], set_=values))


async def _reassigned(conn: AsyncConnection, data: LeadReassigned, event: CloudEvent) -> None:
    await conn.execute(update(assignments).where(assignments.c.lead_id == data.lead_id).values(
        owner_id=data.to_owner_id, team_id=data.team_id, rule_id=data.rule_id, assignment_no=data.assignment_no,
        assigned_at=data.assigned_at or event.time))


async def _queued(conn: AsyncConnection, data: LeadQueued, event: CloudEvent) -> None:
    # A lead taken back from its owner (nobody else could take it) stops counting against them.
    # The facts and the assignment number follow in router.lead_routed.
    taken_back = delete(assignments).where(assignments.c.lead_id == data.lead_id).cte("taken_back")
    await conn.execute(pg_insert(queue).values(
        lead_id=data.lead_id, tier=data.tier, reason=data.reason, queued_at=data.queued_at or event.time,
        facts={}, assignment_no=1,
    ).on_conflict_do_nothing().add_cte(taken_back))


async def _dequeued(conn: AsyncConnection, data: LeadDequeued, event: CloudEvent) -> None:
    await conn.execute(delete(queue).where(queue.c.lead_id == data.lead_id))


async def _routed(conn: AsyncConnection, data: LeadRouted, event: CloudEvent) -> None:
    """The decision's private part, in one statement: facts on the lead's row, the owner's count
    for their day, the rule's cursor."""
    if data.owner_id is None:
        facts = update(queue).where(queue.c.lead_id == data.lead_id).values(
            facts=data.facts, assignment_no=data.assignment_no)
    else:
        facts = update(assignments).where(assignments.c.lead_id == data.lead_id).values(
            facts=data.facts, company_domain=data.company_domain)
    statement = select(literal(1)).add_cte(facts.cte("routed_facts"))
    for part in _counters(data):
        statement = statement.add_cte(part)
    await conn.execute(statement)


class _AssignedRow(BaseModel):
    """What the fused statement reads of lead.assigned: its decoding skips the candidates, the
    bulk of the payload (a tenth of a routing decision's CPU when it decoded them all)."""

    lead_id: str
    owner_id: str
    team_id: str | None
    rule_id: str | None
    tier: str | None = None
    assignment_no: int
    assigned_at: datetime


async def _assigned_and_routed(conn: AsyncConnection,
                               pairs: list[tuple[_AssignedRow, LeadRouted, CloudEvent]]) -> None:
    """lead.assigned and its router.lead_routed, as recorded together: the rows with their facts
    and the counters, in one statement for a whole run of pairs (the same state as applying them
    one by one: the last assignment of a lead wins, an owner's day counts every one, a rule keeps
    its last cursor and its last credits). The hot path of routing: one statement planned once per
    run, where a statement per pair was planned and run for every lead."""
    rows: list[tuple[Any, ...]] = []
    for assigned, routed, event in pairs:
        if routed.owner_id != assigned.owner_id or routed.day is None:
            await _flush_fused(conn, rows)
            rows = []
            await _assigned(conn, LeadAssigned.model_validate(event.data), event)
            await _routed(conn, routed, event)
            continue
        counted = routed.rule_id is not None and (routed.cursor is not None or routed.weights is not None)
        rows.append((
            assigned.lead_id, assigned.owner_id, assigned.team_id, assigned.rule_id, assigned.tier or "",
            assigned.assignment_no, assigned.assigned_at, _json(routed.facts), routed.company_domain, routed.day,
            routed.rule_id if counted else None,
            # -1: no cursor in this decision (a cursor is an index into the rule's owners, never negative)
            -1 if routed.cursor is None else routed.cursor, routed.owner_id,
            None if routed.weights is None else _json(routed.weights)))
    await _flush_fused(conn, rows)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _flush_fused(conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        columns = zip(*rows, strict=True)  # one list per column, as the statement's arrays
        await conn.execute(_FUSED, {name: list(values) for name, values in zip(_FUSED_COLUMNS, columns, strict=True)})


_FUSED_COLUMNS = ("lead_id", "owner_id", "team_id", "rule_id", "tier", "assignment_no", "assigned_at", "facts",
                  "company_domain", "day", "cursor_rule", "last_index", "last_owner", "counts")


def _fused_statement():
    """The run's rows arrive as one array per column (`unnest`, in order: `n`)."""
    types = {"assignment_no": Integer, "assigned_at": DateTime(timezone=True), "day": Date, "last_index": Integer}
    source = func.unnest(*(bindparam(name, type_=ARRAY(types.get(name, String))) for name in _FUSED_COLUMNS)
                         ).table_valued(*_FUSED_COLUMNS, with_ordinality="n").render_derived()
    run = select(source).cte("fused_run")
    day = pg_insert(daily_assignments).from_select(
        ["owner_id", "day", "assigned"],
        select(run.c.owner_id, run.c.day, func.count()).group_by(run.c.owner_id, run.c.day))
    day = day.on_conflict_do_update(index_elements=[daily_assignments.c.owner_id, daily_assignments.c.day],
                                    set_={"assigned": daily_assignments.c.assigned + day.excluded.assigned})

    def last(value, present):  # the value of the last row of the rule that has one
        return func.array_agg(aggregate_order_by(value, run.c.n.desc())).filter(present)[1]

    counted = select(run.c.cursor_rule,
                     func.coalesce(last(run.c.last_index, run.c.last_index >= 0), -1),
                     last(run.c.last_owner, run.c.last_index >= 0),
                     cast(last(run.c.counts, run.c.counts.is_not(None)), JSONB)
                     ).where(run.c.cursor_rule.is_not(None)).group_by(run.c.cursor_rule)
    cursor = pg_insert(cursors).from_select(["rule_id", "last_index", "last_owner", "counts"], counted)
    cursor = cursor.on_conflict_do_update(index_elements=[cursors.c.rule_id], set_={
        # A decision without a cursor (or credits) leaves the rule's as it was.
        "last_index": case((cursor.excluded.last_index >= 0, cursor.excluded.last_index), else_=cursors.c.last_index),
        "last_owner": case((cursor.excluded.last_index >= 0, cursor.excluded.last_owner), else_=cursors.c.last_owner),
        "counts": func.coalesce(cursor.excluded.counts, cursors.c.counts)})
    columns = ("owner_id", "team_id", "rule_id", "tier", "assignment_no", "assigned_at", "facts", "company_domain")
    latest = (select(run.c.lead_id, *(cast(run.c.facts, JSONB) if c == "facts" else run.c[c] for c in columns))
              .distinct(run.c.lead_id).order_by(run.c.lead_id, run.c.n.desc()))
    statement = pg_insert(assignments).from_select(["lead_id", *columns], latest)
    statement = statement.on_conflict_do_update(index_elements=[assignments.c.lead_id],
                                                set_={c: statement.excluded[c] for c in columns})
    return statement.add_cte(day.cte("routed_day")).add_cte(cursor.cte("routed_cursor"))


_FUSED = _fused_statement()


def _counters(data: LeadRouted) -> list:
    """The owner's count for their day and the rule's cursor, as statements for CTEs (tables
    apart from the lead's row, so they combine with its statement)."""
    parts = []
    if data.owner_id is not None:
        if data.day is not None:
            parts.append(pg_insert(daily_assignments).values(owner_id=data.owner_id, day=data.day, assigned=1)
                         .on_conflict_do_update(index_elements=[daily_assignments.c.owner_id, daily_assignments.c.day],
                                                set_={"assigned": daily_assignments.c.assigned + 1}).cte("routed_day"))
    if data.rule_id is not None and (data.cursor is not None or data.weights is not None):
        insert_cursor = pg_insert(cursors).values(
            rule_id=data.rule_id, last_index=-1 if data.cursor is None else data.cursor,
            last_owner=None if data.cursor is None else data.owner_id,
            counts=null() if data.weights is None else data.weights)  # SQL NULL, not JSON null
        changed = {}
        if data.cursor is not None:
            changed["last_index"] = insert_cursor.excluded.last_index
            changed["last_owner"] = insert_cursor.excluded.last_owner
        if data.weights is not None:
            changed["counts"] = insert_cursor.excluded.counts
        parts.append(insert_cursor.on_conflict_do_update(index_elements=[cursors.c.rule_id], set_=changed)
                     .cte("routed_cursor"))
    return parts


async def _facts_updated(conn: AsyncConnection, data: LeadFactsUpdated, event: CloudEvent) -> None:
    in_queue = update(queue).where(queue.c.lead_id == data.lead_id).values(facts=data.facts, tier=data.tier)
    assigned = update(assignments).where(assignments.c.lead_id == data.lead_id).values(
        facts=data.facts, tier=data.tier, company_domain=data.company_domain)
    await conn.execute(select(literal(1)).add_cte(in_queue.cte("updated_queue")).add_cte(
        assigned.cte("updated_assignment")))


async def _closed(conn: AsyncConnection, data: LeadClosed, event: CloudEvent) -> None:
    await conn.execute(update(assignments).where(assignments.c.lead_id == data.lead_id,
                                                 assignments.c.closed_at.is_(None)).values(closed_at=data.closed_at))


async def _touched(conn: AsyncConnection, data: LeadTouched, event: CloudEvent) -> None:
    await conn.execute(update(assignments).where(assignments.c.lead_id == data.lead_id,
                                                 assignments.c.touched_at.is_(None)).values(touched_at=data.touched_at))


async def _owner_updated(conn: AsyncConnection, data: OwnerUpdated, event: CloudEvent) -> None:
    # The row's version is the owner stream's version: only owner.updated events are on it.
    insert_owner = pg_insert(owner_state).values(owner_id=data.owner_id, changes=data.changes, version=1,
                                                 updated_at=event.time)
    await conn.execute(insert_owner.on_conflict_do_update(index_elements=[owner_state.c.owner_id], set_={
        "changes": owner_state.c.changes.concat(insert_owner.excluded.changes),  # later keys win, as a dict merge
        "version": owner_state.c.version + 1,
        "updated_at": insert_owner.excluded.updated_at,
    }))


# Payload class -> what it does to the state. Every class names its event type (`TYPE`).
APPLIERS: dict[type[BaseModel], Applier] = {
    LeadAssigned: _assigned,
    LeadReassigned: _reassigned,
    LeadQueued: _queued,
    LeadDequeued: _dequeued,
    LeadRouted: _routed,
    LeadClosed: _closed,
    LeadFactsUpdated: _facts_updated,
    LeadTouched: _touched,
    OwnerUpdated: _owner_updated,
}
_BY_TYPE: dict[str, tuple[type[BaseModel], Applier]] = {cls.TYPE: (cls, fn) for cls, fn in APPLIERS.items()}  # type: ignore[attr-defined]
# Two events of one lead that follow each other, applied in one statement when they come in one
# call (a routing decision records them together; replay pages may split them, then one by one).
# Consecutive such pairs go to the fused applier together, each event decoded into the class given.
FUSED = {(LeadAssigned.TYPE, LeadRouted.TYPE): (_assigned_and_routed, _AssignedRow, LeadRouted)}


async def apply(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    """Apply stored events, in store order, to the state tables (live: as recorded, in the
    recording transaction; replay: a page at a time). Types the router stores but does not
    project are skipped."""
    i = 0
    while i < len(events):
        pairs, key = [], None
        while i + 1 < len(events) and events[i + 1].subject == events[i].subject:
            pair = (events[i].type, events[i + 1].type)
            if pair not in FUSED or key not in (None, pair):
                break
            key = pair
            _, first, second = FUSED[pair]
            pairs.append((first.model_validate(events[i].data), second.model_validate(events[i + 1].data),
                          events[i]))
            i += 2
        if pairs:
            assert key is not None
            await FUSED[key][0](conn, pairs)
            continue
        event = events[i]
        found = _BY_TYPE.get(event.type)
        if found is not None:
            cls, applier = found
            await applier(conn, cls.model_validate(event.data), event)
        i += 1


PROJECTION = Projection(
    service=SCHEMA,
    tables=(assignments, cursors, queue, owner_state, daily_assignments),
    apply=apply,
)
