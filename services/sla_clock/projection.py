"""The SLA clock's decision state, `sla_clock.timers` and `sla_clock.leads`, as a projection of
the clock's own event store.

- A timer row is the `timer` (a `TimerRecord`) of the last sla.* event about it: sla.started,
  sla.warning, sla.met, sla.breached, sla.paused, sla.resumed and sla.cancelled each carry the
  timer as that transition leaves it (due_at, pending warnings, next_fire_at, pause bookkeeping,
  root cause...). A re-plan after a tier change is sla.cancelled (policy_changed) for the old
  timers and sla.started for their successors; a reset on reassignment is sla.started.
- A lead row is the last `sla_clock.lead_noted` (internal, store only) about it.
- `sla_clock.owner_changed` (internal) hands the lead and its running timers to a new owner.

The projector never reads the clock or the configuration: everything it writes is in the events.
Nothing is left out of the comparison (`ignore` is empty): the tables are decision state.

The timers upsert also keeps `open_timer_counts` (open timers by metric and tier, for the gauge),
in the same statement: it is decision state's summary, rebuilt and compared by replay like the rest.

Set-based: a page of events becomes one upsert statement per table (all its rows in one
statement; the last state of a row in the page wins), so the timer loop writes a batch of fired
timers with one statement, the consumer a run of events, and replay goes a page at a time. An
owner change rewrites the lead's row and its live timers' rows in that upsert: the rows as stored
before the page are read first (one statement per table) for the leads whose owner changes.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Row,
    String,
    Table,
    Text,
    bindparam,
    cast,
    column,
    delete,
    func,
    literal,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql.dml import Insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.config import keeps_owner
from shared.db import any_text, insert_rows, json_rows
from shared.events import CloudEvent
from shared.replay import Projection

from .domain import LEAD_NOTED, OWNER_CHANGED, TIMER_NOTED, LeadFacts, OwnerChanged, TimerRecord
from .tables import leads, open_timer_counts, timers

SERVICE = "sla_clock"
TIMER_EVENTS = tuple(f"sla.{kind}" for kind in ("started", "warning", "met", "breached", "paused", "resumed",
                                                "cancelled"))
LIVE = ("open", "paused")


@dataclass
class _Staged:
    """Rows waiting to be written, by primary key: the last state of each wins. `known_*`: rows as
    stored before this page, of the leads whose owner changes in it (an owner change rewrites
    them here, so it needs no statement of its own)."""

    timers: dict[str, dict[str, Any]] = field(default_factory=dict)
    leads: dict[str, dict[str, Any]] = field(default_factory=dict)
    known_timers: dict[str, dict[str, Any]] = field(default_factory=dict)
    known_leads: dict[str, dict[str, Any]] = field(default_factory=dict)
    sla_ids: dict[str, set[str]] = field(default_factory=dict)  # lead id -> its timers known or staged

    async def load(self, conn: AsyncConnection, lead_ids: list[str]) -> None:
        """Read the stored lead rows and live timers of `lead_ids` (one statement each)."""
        self.known_leads.update(await lead_rows(conn, lead_ids))
        for row in await conn.execute(select(timers).where(timers.c.lead_id == any_text(lead_ids),
                                                           timers.c.state.in_(LIVE))):
            self.stage_timer(plain(row), known=True)

    def stage_timer(self, row: dict[str, Any], *, known: bool = False) -> None:
        (self.known_timers if known else self.timers)[row["sla_id"]] = row
        self.sla_ids.setdefault(row["lead_id"], set()).add(row["sla_id"])

    def change_owner(self, lead_id: str, owner_id: str | None, as_of: datetime | None = None) -> None:
        """The lead and its live timers, as they stand at this point of the page, to `owner_id`
        (but those already past their deadline `as_of`: see `keeps_owner`)."""
        lead = self.leads.get(lead_id) or self.known_leads.get(lead_id)
        if lead is not None:
            self.leads[lead_id] = {**lead, "owner_id": owner_id}
        for sla_id in sorted(self.sla_ids.get(lead_id, ())):
            row = self.timers.get(sla_id) or self.known_timers[sla_id]
            if row["state"] in LIVE and not keeps_owner(row["state"], row["due_at"], as_of):
                self.timers[sla_id] = {**row, "owner_id": owner_id}

    async def flush(self, conn: AsyncConnection) -> None:
        # Rows leaving the live states first: a successor may take its predecessor's place in the
        # one-live-timer-per-metric index within the same statement.
        await _upsert(conn, timers, "sla_id", sorted(self.timers.values(), key=lambda r: r["state"] in LIVE))
        await _upsert(conn, leads, "lead_id", list(self.leads.values()))
        self.timers.clear()
        self.leads.clear()


def plain(row: Row) -> dict[str, Any]:
    """A stored row as a dict with plain str keys (SQLAlchemy's are a str subclass, which the
    JSON of an upsert's rows refuses)."""
    return {str(name): value for name, value in row._mapping.items()}


async def lead_rows(conn: AsyncConnection, lead_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The stored rows of these leads, by lead id (one statement)."""
    return {row.lead_id: plain(row)
            for row in await conn.execute(select(leads).where(leads.c.lead_id == any_text(lead_ids)))}


def timer_row(event: CloudEvent) -> dict[str, Any] | None:
    """The timers row an sla.* event leaves, typed (None: an event from before timers were projected)."""
    if "timer" not in event.data:
        return None
    row = TimerRecord.unwire(event.data["timer"])
    row["warnings"] = _stored_warnings(row["warnings"])
    row["warned"] = list(row["warned"])
    return {"sla_id": event.data["sla_id"], "lead_id": event.data["lead_id"], "metric": event.data["metric"], **row}


def _wire_timer_row(event: CloudEvent) -> dict[str, Any] | None:
    """`timer_row` as the event carries it, times as text: what the upsert sends (Postgres parses
    the times), without parsing and dumping every column again."""
    timer = event.data.get("timer")
    if timer is None:
        return None
    row = {**_TIMER_DEFAULTS, **timer, "sla_id": event.data["sla_id"], "lead_id": event.data["lead_id"],
           "metric": event.data["metric"]}
    if row["warnings"]:
        row["warnings"] = _stored_warnings([(pct, datetime.fromisoformat(at)) for pct, at in row["warnings"]])
    return row


def _stored_warnings(warnings: Iterable[tuple[int, datetime]]) -> list[list[Any]]:
    """Stored as the live path always stored them: [[percent, ISO time], ...]."""
    return [[pct, at.isoformat()] for pct, at in warnings]


# What an older event's timer may lack.
_TIMER_DEFAULTS = {name: info.get_default(call_default_factory=True)
                   for name, info in TimerRecord.model_fields.items() if not info.is_required()}


async def _timer_changed(staged: _Staged, conn: AsyncConnection, event: CloudEvent) -> None:
    row = _wire_timer_row(event)
    if row is not None:
        staged.stage_timer(row)


async def _lead_noted(staged: _Staged, conn: AsyncConnection, event: CloudEvent) -> None:
    facts = LeadFacts.unwire(event.data)
    staged.leads[facts["lead_id"]] = facts


async def _owner_changed(staged: _Staged, conn: AsyncConnection, event: CloudEvent) -> None:
    change = OwnerChanged.model_validate(event.data)
    staged.change_owner(change.lead_id, change.owner_id, change.as_of)


Applier = Callable[[_Staged, AsyncConnection, CloudEvent], Awaitable[None]]
APPLIERS: dict[str, Applier] = {
    **{kind: _timer_changed for kind in (*TIMER_EVENTS, TIMER_NOTED)},
    LEAD_NOTED: _lead_noted,
    OWNER_CHANGED: _owner_changed,
}


async def apply(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    """Apply stored events, in order, to the timers and leads tables (live or in a replay schema)."""
    staged = _Staged()
    changing = list(dict.fromkeys(event.data["lead_id"] for event in events
                                  if APPLIERS.get(event.type) is _owner_changed))
    if changing:
        await staged.load(conn, changing)
    for event in events:
        applier = APPLIERS.get(event.type)
        if applier is not None:  # anything else in the store (a dead letter) is no state of ours
            await applier(staged, conn, event)
    await staged.flush(conn)


async def _upsert(conn: AsyncConnection, table: Table, key: str, rows: list[dict[str, Any]]) -> None:
    """One statement for all the rows, in their order (see shared.db.insert_rows); for timers, the
    same statement moves the open counts by the rows it opens and closes."""
    if not rows:
        return
    counted = await conn.execute(_UPSERTS[table.name], {"rows": json_rows(rows)})
    if table is timers:
        emptied = [(r.metric, r.tier) for r in counted if r.open == 0]
        if emptied:  # their rows are ours (locked by the upsert) until commit
            await conn.execute(delete(open_timer_counts).where(
                tuple_(open_timer_counts.c.metric, open_timer_counts.c.tier).in_(emptied),
                open_timer_counts.c.open == 0))


def _upsert_statement(table: Table, key: str) -> Insert:
    statement = insert_rows(table, [c.name for c in table.columns])
    return statement.on_conflict_do_update(
        index_elements=[table.c[key]],
        set_={c.name: statement.excluded[c.name] for c in table.columns if c.name != key})


def _timers_upsert() -> Insert:
    """The timers upsert, and open_timer_counts moved by it: +1 for each row it leaves open, -1 for
    each row that was open before it (one snapshot: the rows as they were). Keys in order, so that
    two writers lock the counts in the same order; returns each moved key's count."""
    upsert = _upsert_statement(timers, "sla_id")
    written = upsert.returning(timers.c.metric, timers.c.tier, timers.c.state).cte("written")
    sent = func.json_to_recordset(cast(bindparam("rows", type_=Text), JSON)).table_valued(
        column("sla_id", String)).render_derived(with_types=True)  # the same rows, their keys only
    before = (select(timers.c.metric, timers.c.tier)
              .where(timers.c.state == "open", timers.c.sla_id.in_(select(sent.c.sla_id))).cte("before"))
    moves = union_all(
        select(written.c.metric, written.c.tier, literal(1).label("d")).where(written.c.state == "open"),
        select(before.c.metric, before.c.tier, literal(-1).label("d")),
    ).subquery("moves")
    delta = (select(moves.c.metric, moves.c.tier, func.sum(moves.c.d).label("d"))
             .group_by(moves.c.metric, moves.c.tier).having(func.sum(moves.c.d) != 0)
             .order_by(moves.c.metric, moves.c.tier))
    counts = pg_insert(open_timer_counts).from_select(["metric", "tier", "open"], delta)
    return counts.on_conflict_do_update(
        index_elements=[open_timer_counts.c.metric, open_timer_counts.c.tier],
        set_={"open": open_timer_counts.c.open + counts.excluded.open},
    ).returning(open_timer_counts.c.metric, open_timer_counts.c.tier, open_timer_counts.c.open)


_UPSERTS = {timers.name: _timers_upsert(), leads.name: _upsert_statement(leads, "lead_id")}


PROJECTION = Projection(service=SERVICE, tables=[timers, leads, open_timer_counts], apply=apply)
