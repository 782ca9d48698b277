"""The notifier's decision state as a projection of its own event store.

Projected (the same `apply` runs live, through `UnitOfWork.record`, and on `leadsla replay`):
`leads` (facts taken from input events, kept as `notifier.lead_noted`), `escalations`
(`notifier.escalations_planned`, `notifier.chain_stopped`, `notifier.step_fired`), `deliveries`
and `digest_items` (`notifier.step_fired`, `notifier.deliveries_leased`,
`notifier.delivery_attempted`), `subscriptions` (`notifier.subscription_created` / `_deleted`)
and `subscription_deliveries` (`notifier.subscription_queued`, the lease and attempt events,
`notifier.subscription_redelivered`, `notifier.deliveries_pruned`). Every value written comes
from the event: the projector never reads the clock or the configuration.

Left out of the comparison (`ignore`): the lease (`leased_until`, `lease_token`: which sender
holds a delivery right now is bookkeeping; they are projected all the same), and the surrogate
keys `subscription_deliveries.id` and `digest_items.seq`, which a rebuild draws again from the
sequences (in the same order). Events refer to deliveries by their natural keys
(notification id; subscription id and event id), never by those surrogates.

Contract events the notifier emits (escalation.triggered, notification.*, deadletter) change no
table: their state changes are the internal events recorded beside them.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql.dml import Insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db import insert_rows, json_rows
from shared.events import CloudEvent
from shared.replay import Projection

from .domain import (
    INTERNAL,
    ChainStopped,
    DeliveriesLeased,
    DeliveriesPruned,
    DeliveryAttempted,
    EscalationsPlanned,
    InternalEvent,
    LeadNoted,
    StepFired,
    SubscriptionCreated,
    SubscriptionDeleted,
    SubscriptionQueued,
    SubscriptionRedelivered,
)
from .tables import (
    deliveries,
    digest_items,
    escalations,
    leads,
    subscription_deliveries,
    subscriptions,
)

d, s = deliveries, subscription_deliveries
DONE_WITH = ("sent", "cancelled")  # CRM deliveries retention removes (failures stay for operators)


async def lead_noted(conn: AsyncConnection, e: LeadNoted) -> None:
    await leads_noted(conn, {e.lead_id: {f: getattr(e, f) for f in e.fields}})


async def leads_noted(conn: AsyncConnection, noted: dict[str, dict[str, Any]]) -> None:
    """The facts noted about each lead (the fields set, nothing else): one upsert per set of
    fields, whatever the number of leads."""
    by_fields: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for lead_id, values in noted.items():
        by_fields.setdefault(tuple(sorted(values)), []).append({"lead_id": lead_id, **values})
    for fields, rows in by_fields.items():
        await conn.execute(_noting(fields), {"rows": json_rows(rows)})


@cache
def _noting(fields: tuple[str, ...]) -> Insert:
    """The upsert that sets `fields` of the leads it is given (compiled once per set of fields)."""
    statement = insert_rows(leads, ("lead_id", *fields))
    if not fields:
        return statement.on_conflict_do_nothing()
    return statement.on_conflict_do_update(index_elements=[leads.c.lead_id],
                                           set_={f: statement.excluded[f] for f in fields})


async def escalations_planned(conn: AsyncConnection, e: EscalationsPlanned) -> None:
    await conn.execute(pg_insert(escalations).on_conflict_do_nothing(), [
        {"escalation_id": p.escalation_id, "lead_id": e.lead_id, "policy_id": p.policy_id, "step": p.step,
         "trigger_event_id": e.trigger_event_id, "created_at": e.planned_at, "sla_id": e.sla_id,
         "due_at": p.due_at, "trigger": e.trigger}
        for p in e.steps])


async def chain_stopped(conn: AsyncConnection, e: ChainStopped) -> None:
    chain = [escalations.c.sla_id == e.sla_id]
    if e.due_after is not None:
        chain.append(escalations.c.due_at > e.due_after)
    if e.except_trigger is not None:
        chain.append(escalations.c.trigger_event_id != e.except_trigger)
    await conn.execute(update(escalations).where(
        *chain, escalations.c.triggered_at.is_(None), escalations.c.cancelled_at.is_(None),
    ).values(cancelled_at=e.stopped_at))
    await conn.execute(update(d).where(
        d.c.escalation_id.in_(select(escalations.c.escalation_id).where(*chain)),
        d.c.state == "pending", d.c.kind == "single", d.c.attempts == 0, d.c.next_attempt_at > e.stopped_at,
    ).values(state="cancelled"))
    # Its lines in digests not yet sent go too (a message that no longer stands, sent minutes
    # later with a countdown long past), and a digest left with no line is not sent at all.
    unsent = select(d.c.notification_id).where(d.c.kind == "digest", d.c.state == "pending", d.c.attempts == 0)
    emptied = (await conn.execute(delete(digest_items).where(
        digest_items.c.lead_id == e.lead_id, digest_items.c.notification_id.in_(unsent),
        digest_items.c.item["escalation_id"].astext.in_(select(escalations.c.escalation_id).where(*chain)),
    ).returning(digest_items.c.notification_id))).scalars().all()
    if emptied:
        await conn.execute(update(d).where(
            d.c.notification_id.in_(set(emptied)), d.c.kind == "digest", d.c.state == "pending", d.c.attempts == 0,
            ~select(digest_items.c.seq).where(digest_items.c.notification_id == d.c.notification_id).exists(),
        ).values(state="cancelled"))


async def step_fired(conn: AsyncConnection, e: StepFired) -> None:
    await conn.execute(update(escalations).where(escalations.c.escalation_id == e.escalation_id)
                       .values(triggered_at=e.fired_at))
    if e.deliveries:
        await conn.execute(pg_insert(d).on_conflict_do_nothing(), [
            {"notification_id": n.notification_id, "idempotency_key": n.notification_id,
             "escalation_id": e.escalation_id, "lead_id": e.lead_id, "step": e.step, "channel": n.channel,
             "recipient": n.recipient, "kind": n.kind, "payload": n.payload, "state": "pending",
             "next_attempt_at": n.next_attempt_at, "created_at": e.fired_at}
            for n in e.deliveries])
    if e.digest_items:
        await conn.execute(digest_items.insert(), [
            {"notification_id": i.notification_id, "lead_id": e.lead_id, "item": i.item} for i in e.digest_items])


async def subscription_queued(conn: AsyncConnection, e: SubscriptionQueued) -> None:
    if e.releases_held:
        # The lead's events held back waiting for this one may go as soon as it has.
        await conn.execute(update(s).where(s.c.lead_id == e.lead_id, s.c.state == "pending", s.c.attempts == 0,
                                           s.c.next_attempt_at > e.queued_at).values(next_attempt_at=e.queued_at))
    if e.deliveries:
        body = e.body.encode()
        await conn.execute(pg_insert(s).on_conflict_do_nothing(), [
            {"subscription_id": q.subscription_id, "lead_id": e.lead_id, "event_id": e.event_id,
             "event_type": e.event_type, "event_time": e.event_time, "body": body, "state": "pending",
             "next_attempt_at": q.next_attempt_at, "created_at": e.queued_at}
            for q in e.deliveries])


async def deliveries_leased(conn: AsyncConnection, e: DeliveriesLeased) -> None:
    if e.notification_ids:
        await conn.execute(update(d).where(d.c.notification_id.in_(e.notification_ids), d.c.state == "pending")
                           .values(leased_until=e.leased_until, lease_token=e.token, attempts=d.c.attempts + 1))
    if e.subscription_deliveries:
        await conn.execute(update(s).where(tuple_(s.c.subscription_id, s.c.event_id).in_(e.subscription_deliveries),
                                           s.c.state == "pending")
                           .values(leased_until=e.leased_until, lease_token=e.token, attempts=s.c.attempts + 1))


async def delivery_attempted(conn: AsyncConnection, e: DeliveryAttempted) -> None:
    values: dict[str, Any] = {"state": e.state, "leased_until": None, "last_error": e.error}
    if e.state == "sent":
        values["sent_at"] = e.at
    elif e.state == "pending":
        values["next_attempt_at"] = e.next_attempt_at
    if e.notification_id is not None:
        await conn.execute(update(d).where(d.c.notification_id == e.notification_id)
                           .values(**values, tried_at=e.at))
    else:
        await conn.execute(update(s).where(s.c.subscription_id == e.subscription_id, s.c.event_id == e.event_id)
                           .values(**values))


async def subscription_created(conn: AsyncConnection, e: SubscriptionCreated) -> None:
    await conn.execute(pg_insert(subscriptions).values(
        id=e.subscription_id, url=e.url, event_types=e.event_types, secret=e.secret, created_at=e.created_at,
    ).on_conflict_do_nothing())


async def subscription_deleted(conn: AsyncConnection, e: SubscriptionDeleted) -> None:
    await conn.execute(update(subscriptions).where(subscriptions.c.id == e.subscription_id,
                                                   subscriptions.c.deleted_at.is_(None))
                       .values(deleted_at=e.deleted_at))
    await conn.execute(update(s).where(s.c.subscription_id == e.subscription_id, s.c.state == "pending")
                       .values(state="cancelled", leased_until=None))


async def subscription_redelivered(conn: AsyncConnection, e: SubscriptionRedelivered) -> None:
    if e.event_ids:
        await conn.execute(update(s).where(s.c.subscription_id == e.subscription_id, s.c.event_id.in_(e.event_ids),
                                           s.c.state == "failed")
                           .values(state="pending", attempts=0, next_attempt_at=e.at, leased_until=None,
                                   last_error=None))


async def deliveries_pruned(conn: AsyncConnection, e: DeliveriesPruned) -> None:
    await conn.execute(delete(s).where(s.c.id.in_(prunable(e.before, e.up_to))))


def prunable(before: datetime, up_to: int | None):
    """The ids of the deliveries retention removes: done with, made before `before`, the oldest
    `up_to` (a replay removes the same rows: the order is total)."""
    query = select(s.c.id).where(s.c.state.in_(DONE_WITH), s.c.created_at < before)
    return query if up_to is None else query.order_by(s.c.created_at, s.c.id).limit(up_to)


APPLY: dict[type[InternalEvent], Callable[[AsyncConnection, Any], Awaitable[None]]] = {
    LeadNoted: lead_noted,
    EscalationsPlanned: escalations_planned,
    ChainStopped: chain_stopped,
    StepFired: step_fired,
    SubscriptionQueued: subscription_queued,
    DeliveriesLeased: deliveries_leased,
    DeliveryAttempted: delivery_attempted,
    SubscriptionCreated: subscription_created,
    SubscriptionDeleted: subscription_deleted,
    SubscriptionRedelivered: subscription_redelivered,
    DeliveriesPruned: deliveries_pruned,
}
assert set(APPLY) == set(INTERNAL.values()), "every internal event changes the state tables"


async def apply(conn: AsyncConnection, events: Sequence[CloudEvent]) -> None:
    # Lead facts are written last, merged per lead (the last value of each field wins), in one
    # statement per set of fields: no other event reads or writes the leads table.
    noted: dict[str, dict[str, Any]] = {}
    for event in events:
        cls = INTERNAL.get(event.type)
        if cls is LeadNoted:
            e = LeadNoted.model_validate(event.data)
            noted.setdefault(e.lead_id, {}).update({f: getattr(e, f) for f in e.fields})
        elif cls is not None:  # contract events change no table (see the module docstring)
            await APPLY[cls](conn, cls.model_validate(event.data))
    await leads_noted(conn, noted)


PROJECTION = Projection(
    service="notifier",
    tables=(leads, escalations, deliveries, digest_items, subscriptions, subscription_deliveries),
    apply=apply,
    ignore={
        "deliveries": frozenset({"leased_until", "lease_token"}),
        "subscription_deliveries": frozenset({"id", "leased_until", "lease_token"}),
        "digest_items": frozenset({"seq"}),
    },
)
