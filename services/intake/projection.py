"""Intake's decision state as a projection of its own event store (`leadsla replay intake`).

| table                       | from                                                              |
|-----------------------------|-------------------------------------------------------------------|
| `intake.leads`              | `lead.received` (the row and its dedupe indexes: email, phone,    |
|                             | source + external id), `lead.updated` (folded into the record,    |
|                             | `domain.updated_record`; email/phone/tier follow the record)      |
| `intake.idempotency_keys`   | `intake.idempotency_key_bound` (internal): key -> lead            |
| `intake.activities`         | `activity.recorded`                                               |
| `intake.pending_activities` | `intake.activity_held` (internal) adds, `intake.activity_released`|
|                             | (internal: recorded, rejected or expired) removes                 |
| `intake.merged_external_ids`| `lead.merged` with the repeat's external id and source: (source,  |
|                             | external id) -> the lead it was merged into; a later merge wins   |

Otherwise `lead.merged` changes no table (the repeat's key binding and any upgrade are events of
their own). One recorded before it carried its source names no lead (see `merged_row`).

Idempotency keys: the table maps a source's key to the lead it answered with; a replayed request
is answered "duplicate" with that lead id, so no HTTP response is stored and the mapping is all
the event needs to carry. The key is intake's own business (a request header), so it travels in
an internal event rather than on the published lead.received. Its `created_at` is the binding's
time from the event, not the insert's.

Events carry every value written here (ids, times, normalized values, the correlation id in the
envelope); nothing reads the clock or the configuration. Nothing is left out of the comparison.
"""
from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db import insert_rows, json_rows
from shared.events import ActivityRecorded, CloudEvent, LeadMerged, LeadReceived, LeadUpdated
from shared.replay import Projection

from .domain import (
    ActivityHeld,
    ActivityReleased,
    IdempotencyKeyBound,
    lead_columns,
    updated_record,
)
from .tables import (
    SCHEMA,
    activities,
    idempotency_keys,
    leads,
    merged_external_ids,
    pending_activities,
)


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


# ---- rows: pure, shared with the in-memory store (stores.InMemoryIntakeStore) ---------------


def lead_row(event: CloudEvent) -> dict[str, Any]:
    data = event.data
    return {
        "lead_id": data["lead_id"],
        "source": data["source"],
        "external_id": data.get("external_id"),
        "received_at": _time(data["received_at"]),
        "correlation_id": event.correlationid or event.id,
        "record": data,
        **lead_columns(data),
    }


def key_row(event: CloudEvent) -> dict[str, Any]:
    data = event.data
    return {"source": data["source"], "key": data["key"], "lead_id": data["lead_id"],
            "created_at": _time(data["bound_at"])}


def activity_row(event: CloudEvent) -> dict[str, Any]:
    data = event.data
    return {"activity_id": data["activity_id"], "lead_id": data["lead_id"], "type": data["type"],
            "occurred_at": _time(data["occurred_at"]), "record": data}


def merged_row(event: CloudEvent) -> dict[str, Any] | None:
    """The repeat's external id naming the lead it was merged into; None for a repeat without
    one, or an event from before merges carried the repeat's source (an external id is unique
    per source only: under a guessed source it could take another source's touches)."""
    data = event.data
    external_id, source = (data.get("duplicate_submission") or {}).get("external_id"), data.get("source")
    if not external_id or not source or data.get("match_on") == "external_id":
        return None  # (a repeat by the lead's own external id: the lead holds that id already)
    return {"external_id": external_id, "source": source, "lead_id": data["lead_id"], "merged_at": event.time}


def held_row(event: CloudEvent) -> dict[str, Any]:
    data = event.data
    return {"id": data["hold_id"], "lead_ref": data["lead_ref"], "event": data["event"], "topic": data["topic"],
            "partition": data["partition"], "offset": data["offset"], "key": data.get("key"),
            "original": base64.b64decode(data["original_b64"]), "parked_at": _time(data["held_at"]),
            "expires_at": _time(data["expires_at"])}


# ---- Postgres ---------------------------------------------------------------------------------
# Core statements on the Table objects only (replay points them at a scratch schema). Runs of
# inserts of one kind go in one statement: a group commit or a replay page costs a few round trips.


_INSERT_LEADS = insert_rows(leads, ("lead_id", "source", "external_id", "received_at", "correlation_id", "record",
                                     "email", "phone", "tier"))


async def _received(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    await conn.execute(_INSERT_LEADS, {"rows": json_rows([lead_row(e) for e in events])})


async def _updated(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    for event in events:
        lead_id = event.data["lead_id"]
        record = await conn.scalar(select(leads.c.record).where(leads.c.lead_id == lead_id))
        if record is None:
            continue  # an update of a lead this store never received (cannot happen live)
        record = updated_record(record, event.data)
        await conn.execute(leads.update().where(leads.c.lead_id == lead_id).values(record=record, **lead_columns(record)))


async def _merged(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    # The last merge of each id (one statement cannot upsert a row twice).
    rows = {(r["external_id"], r["source"]): r for r in map(merged_row, events) if r is not None}
    if not rows:
        return
    insert = pg_insert(merged_external_ids)
    await conn.execute(insert.on_conflict_do_update(
        index_elements=[merged_external_ids.c.external_id, merged_external_ids.c.source],
        set_={"lead_id": insert.excluded.lead_id, "merged_at": insert.excluded.merged_at}), list(rows.values()))


async def _activity(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    await conn.execute(pg_insert(activities).on_conflict_do_nothing(), [activity_row(e) for e in events])


async def _key_bound(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    await conn.execute(pg_insert(idempotency_keys).on_conflict_do_nothing(), [key_row(e) for e in events])


async def _held(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    await conn.execute(pending_activities.insert(), [held_row(e) for e in events])


async def _released(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    await conn.execute(delete(pending_activities).where(
        pending_activities.c.id.in_([e.data["hold_id"] for e in events])))


# By payload class: the contract's (shared.events) and intake's internal ones (domain).
APPLY: dict[str, Callable[[AsyncConnection, Sequence[CloudEvent]], Any]] = {
    LeadReceived.TYPE: _received,
    LeadMerged.TYPE: _merged,
    LeadUpdated.TYPE: _updated,
    ActivityRecorded.TYPE: _activity,
    IdempotencyKeyBound.TYPE: _key_bound,
    ActivityHeld.TYPE: _held,
    ActivityReleased.TYPE: _released,
}


async def apply(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    """Apply events in order; consecutive events of one type go to their writer together.
    Events of other types in the store (a dead letter) change no state."""
    for kind, run in groupby(events, key=lambda e: e.type):
        writer = APPLY.get(kind)
        if writer is not None:
            await writer(conn, list(run))


PROJECTION = Projection(service=SCHEMA, tables=(leads, idempotency_keys, activities, pending_activities,
                                                merged_external_ids), apply=apply)
