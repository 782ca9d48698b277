"""What the notifier's handlers read, behind one small interface (`NotifierStore`): the Postgres
store reads the projection's tables in the handler's transaction; `InMemoryStore` is the fake
the handler unit tests use, fed by the same internal events (`InMemoryStore.apply`). One
contract suite (tests/contract/notifier_store.py) runs against both.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import String, and_, bindparam, func, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db import any_text
from shared.events import CloudEvent

from .domain import (
    INTERNAL,
    ChainStopped,
    EscalationsPlanned,
    LeadNoted,
    StepFired,
    SubscriptionCreated,
    SubscriptionDeleted,
    SubscriptionQueued,
)
from .tables import deliveries, escalations, leads, subscription_deliveries, subscriptions

if TYPE_CHECKING:
    from shared.uow import UnitOfWork


@dataclass(frozen=True)
class KnownLead:
    lead_id: str
    name: str | None = None
    company: str | None = None
    tier: str | None = None
    source: str | None = None
    owner_id: str | None = None
    received_at: datetime | None = None
    routed: bool = False
    touches: list[dict[str, Any]] | None = None  # the latest read (domain.noted_touches)


@dataclass(frozen=True)
class DueEscalation:
    escalation_id: str
    lead_id: str
    policy_id: str
    step: int
    trigger: dict[str, Any]


class NotifierStore(Protocol):
    """The notifier's state as its handlers read it (written only by recording events)."""

    async def lead(self, lead_id: str) -> KnownLead | None:
        """What the notifier knows about a lead, if anything."""

    async def received_seen(self, lead_id: str) -> bool:
        """Whether the lead's lead.received has been consumed."""

    async def live_subscriptions(self) -> list[tuple[str, list[str]]]:
        """(id, event type patterns) of every subscription not deleted."""

    async def holds_for(self, lead_id: str, now: datetime) -> bool:
        """Whether subscription deliveries of the lead are held back (never tried, due later)."""

    async def has_escalations(self, sla_id: str) -> bool:
        """Whether any escalation step was planned for this SLA."""

    async def pending_triggers(self, sla_id: str) -> set[str]:
        """The events whose escalation steps for this SLA are neither fired nor cancelled yet."""

    async def pending_chains(self, lead_id: str) -> dict[str, dict[str, Any]]:
        """The SLAs of a lead with escalation steps neither fired nor cancelled yet, each with the
        data of the event that triggered its chain."""

    async def due_escalations(self, now: datetime, limit: int) -> list[DueEscalation]:
        """Steps due and neither fired nor cancelled, oldest first; Postgres locks them until
        commit (skipping ones another sender holds)."""

    async def recent_singles(self, recipient: str, channel: str, since: datetime) -> int:
        """Single (not digest) deliveries made for a person and channel since `since`."""


class PostgresStore:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def lead(self, lead_id: str) -> KnownLead | None:
        row = (await self._conn.execute(select(leads).where(leads.c.lead_id == lead_id))).first()
        return KnownLead(**row._asdict()) if row else None

    async def received_seen(self, lead_id: str) -> bool:
        found = await self._conn.scalar(select(leads.c.received_at).where(leads.c.lead_id == lead_id))
        return found is not None

    async def live_subscriptions(self) -> list[tuple[str, list[str]]]:
        rows = await self._conn.execute(select(subscriptions.c.id, subscriptions.c.event_types)
                                        .where(subscriptions.c.deleted_at.is_(None)))
        return [(r.id, list(r.event_types)) for r in rows]

    async def holds_for(self, lead_id: str, now: datetime) -> bool:
        s = subscription_deliveries
        found = await self._conn.scalar(select(s.c.id).where(s.c.lead_id == lead_id, s.c.state == "pending",
                                                             s.c.attempts == 0, s.c.next_attempt_at > now).limit(1))
        return found is not None

    async def has_escalations(self, sla_id: str) -> bool:
        found = await self._conn.scalar(select(escalations.c.escalation_id)
                                         .where(escalations.c.sla_id == sla_id).limit(1))
        return found is not None

    async def pending_triggers(self, sla_id: str) -> set[str]:
        e = escalations
        rows = await self._conn.scalars(select(e.c.trigger_event_id).distinct().where(
            e.c.sla_id == sla_id, e.c.triggered_at.is_(None), e.c.cancelled_at.is_(None)))
        return set(rows)

    async def pending_chains(self, lead_id: str) -> dict[str, dict[str, Any]]:
        e = escalations
        rows = await self._conn.execute(
            select(e.c.sla_id, e.c.trigger)
            .where(e.c.lead_id == lead_id, e.c.sla_id.is_not(None), e.c.triggered_at.is_(None),
                   e.c.cancelled_at.is_(None)).order_by(e.c.sla_id))
        return {row.sla_id: row.trigger.get("data", {}) for row in rows}

    async def due_escalations(self, now: datetime, limit: int) -> list[DueEscalation]:
        e = escalations
        rows = await self._conn.execute(
            select(e.c.escalation_id, e.c.lead_id, e.c.policy_id, e.c.step, e.c.trigger)
            .where(e.c.triggered_at.is_(None), e.c.cancelled_at.is_(None), e.c.due_at <= now)
            .order_by(e.c.due_at).limit(limit).with_for_update(skip_locked=True))
        return [DueEscalation(**r._asdict()) for r in rows]

    async def recent_singles(self, recipient: str, channel: str, since: datetime) -> int:
        d = deliveries
        return await self._conn.scalar(select(func.count()).select_from(d).where(
            d.c.recipient == recipient, d.c.channel == channel, d.c.kind == "single",
            d.c.created_at >= since)) or 0


def postgres_store(uow: UnitOfWork) -> NotifierStore:
    return PostgresStore(uow.conn)


# ---- the fake -------------------------------------------------------------------------------


@dataclass
class _Escalation:
    due: DueEscalation
    sla_id: str
    due_at: datetime
    triggered_at: datetime | None = None
    cancelled_at: datetime | None = None


@dataclass
class _Delivery:
    recipient: str
    channel: str
    kind: str
    created_at: datetime
    escalation_id: str
    state: str = "pending"
    attempts: int = 0
    next_attempt_at: datetime | None = None


@dataclass
class _SubscriptionDelivery:
    lead_id: str
    next_attempt_at: datetime
    state: str = "pending"
    attempts: int = 0


@dataclass
class InMemoryStore:
    """The store's behaviour over dicts, kept current by applying the same internal events as
    the projection (those the handlers read back; the delivery loop's are Postgres-only)."""

    leads: dict[str, KnownLead] = field(default_factory=dict)
    escalations: dict[str, _Escalation] = field(default_factory=dict)
    deliveries: dict[str, _Delivery] = field(default_factory=dict)
    subscriptions: dict[str, tuple[list[str], datetime | None]] = field(default_factory=dict)
    subscription_deliveries: dict[tuple[str, str], _SubscriptionDelivery] = field(default_factory=dict)

    async def lead(self, lead_id: str) -> KnownLead | None:
        return self.leads.get(lead_id)

    async def received_seen(self, lead_id: str) -> bool:
        known = self.leads.get(lead_id)
        return known is not None and known.received_at is not None

    async def live_subscriptions(self) -> list[tuple[str, list[str]]]:
        return [(sub_id, types) for sub_id, (types, deleted_at) in self.subscriptions.items() if deleted_at is None]

    async def holds_for(self, lead_id: str, now: datetime) -> bool:
        return any(d.lead_id == lead_id and d.state == "pending" and d.attempts == 0 and d.next_attempt_at > now
                   for d in self.subscription_deliveries.values())

    async def has_escalations(self, sla_id: str) -> bool:
        return any(e.sla_id == sla_id for e in self.escalations.values())

    async def pending_triggers(self, sla_id: str) -> set[str]:
        return {e.due.trigger.get("event_id") for e in self.escalations.values()
                if e.sla_id == sla_id and e.triggered_at is None and e.cancelled_at is None}

    async def pending_chains(self, lead_id: str) -> dict[str, dict[str, Any]]:
        pending = sorted((e for e in self.escalations.values()
                          if e.due.lead_id == lead_id and e.triggered_at is None and e.cancelled_at is None),
                         key=lambda e: e.sla_id)
        return {e.sla_id: e.due.trigger.get("data", {}) for e in pending}

    async def due_escalations(self, now: datetime, limit: int) -> list[DueEscalation]:
        due = sorted((e for e in self.escalations.values()
                      if e.triggered_at is None and e.cancelled_at is None and e.due_at <= now),
                     key=lambda e: e.due_at)
        return [e.due for e in due[:limit]]

    async def recent_singles(self, recipient: str, channel: str, since: datetime) -> int:
        return sum(1 for d in self.deliveries.values()
                   if d.recipient == recipient and d.channel == channel and d.kind == "single"
                   and d.created_at >= since)

    def apply(self, event: CloudEvent) -> None:
        cls = INTERNAL.get(event.type)
        if cls is None:
            return
        e = cls.model_validate(event.data)
        if isinstance(e, LeadNoted):
            known = self.leads.get(e.lead_id) or KnownLead(e.lead_id)
            self.leads[e.lead_id] = replace(known, **{f: getattr(e, f) for f in e.fields})
        elif isinstance(e, EscalationsPlanned):
            for p in e.steps:
                self.escalations.setdefault(p.escalation_id, _Escalation(
                    DueEscalation(p.escalation_id, e.lead_id, p.policy_id, p.step, e.trigger), e.sla_id, p.due_at))
        elif isinstance(e, ChainStopped):
            stopped = {k for k, esc in self.escalations.items() if esc.sla_id == e.sla_id
                       and (e.due_after is None or esc.due_at > e.due_after)
                       and (e.except_trigger is None or esc.due.trigger.get("event_id") != e.except_trigger)}
            for k in stopped:
                esc = self.escalations[k]
                if esc.triggered_at is None and esc.cancelled_at is None:
                    esc.cancelled_at = e.stopped_at
            for d in self.deliveries.values():
                if (d.escalation_id in stopped and d.state == "pending" and d.kind == "single" and d.attempts == 0
                        and d.next_attempt_at is not None and d.next_attempt_at > e.stopped_at):
                    d.state = "cancelled"
        elif isinstance(e, StepFired):
            self.escalations[e.escalation_id].triggered_at = e.fired_at
            for n in e.deliveries:
                self.deliveries.setdefault(n.notification_id, _Delivery(
                    n.recipient, n.channel, n.kind, e.fired_at, e.escalation_id, next_attempt_at=n.next_attempt_at))
        elif isinstance(e, SubscriptionQueued):
            if e.releases_held:
                for d in self.subscription_deliveries.values():
                    if (d.lead_id == e.lead_id and d.state == "pending" and d.attempts == 0
                            and d.next_attempt_at > e.queued_at):
                        d.next_attempt_at = e.queued_at
            for q in e.deliveries:
                self.subscription_deliveries.setdefault((q.subscription_id, e.event_id),
                                                        _SubscriptionDelivery(e.lead_id, q.next_attempt_at))
        elif isinstance(e, SubscriptionCreated):
            self.subscriptions.setdefault(e.subscription_id, (e.event_types, None))
        elif isinstance(e, SubscriptionDeleted):
            types, _ = self.subscriptions[e.subscription_id]
            self.subscriptions[e.subscription_id] = (types, e.deleted_at)
            for (sub_id, _), d in self.subscription_deliveries.items():
                if sub_id == e.subscription_id and d.state == "pending":
                    d.state = "cancelled"


class InMemoryUnitOfWork:
    """The unit of work the handler unit tests give handlers: what is recorded is applied to an
    `InMemoryStore` at once (as the projection would be) and kept, in order, in `recorded`;
    emitted events are kept in `emitted`. No database, no commit needed."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.recorded: list[CloudEvent] = []
        self.emitted: list[CloudEvent] = []
        self.versions: dict[str, int] = {}

    async def record(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None:
        self.store.apply(event)
        self.recorded.append(event)
        self.emit(topic, event, stream=stream)

    def emit(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None:
        self.emitted.append(event)
        key = stream or event.subject or event.id
        self.versions[key] = self.versions.get(key, 0) + 1

    async def load_version(self, stream_id: str) -> int:
        return self.versions.get(stream_id, 0)


async def run_store(conn: AsyncConnection, lead_ids: Sequence[str], sla_ids: Sequence[str],
                    chain_lead_ids: Sequence[str] = ()) -> InMemoryStore:
    """What a consumer's run of events reads, read at once (a statement per table): the known
    leads, the live subscriptions, the leads' held subscription deliveries and the escalations of
    the SLAs and of the leads whose chains may stop (opted out, touched); the handlers then read and
    record through it in memory (`RunUnitOfWork`)."""
    store = InMemoryStore()
    for row in await conn.execute(select(leads).where(leads.c.lead_id == any_text(lead_ids))):
        store.leads[row.lead_id] = KnownLead(**row._asdict())
    for row in await conn.execute(select(subscriptions.c.id, subscriptions.c.event_types)
                                  .where(subscriptions.c.deleted_at.is_(None))):
        store.subscriptions[row.id] = (list(row.event_types), None)
    s = subscription_deliveries
    for row in await conn.execute(select(s.c.subscription_id, s.c.event_id, s.c.lead_id, s.c.next_attempt_at)
                                  .where(s.c.lead_id == any_text(lead_ids), s.c.state == "pending",
                                         s.c.attempts == 0)):
        store.subscription_deliveries[(row.subscription_id, row.event_id)] = _SubscriptionDelivery(
            row.lead_id, row.next_attempt_at)
    e = escalations
    # One statement for both (touches, the busiest type, may stop chains: a second one was a round
    # trip more per run): every step of the SLAs that end, and the steps still to fire of the leads
    # whose chains may stop (all that `pending_chains` reads of them).
    wanted = [e.c.sla_id == func.any(bindparam("sla_ids", list(sla_ids), type_=ARRAY(String)))] if sla_ids else []
    if chain_lead_ids:
        wanted.append(and_(e.c.lead_id == func.any(bindparam("chain_lead_ids", list(chain_lead_ids),
                                                             type_=ARRAY(String))),
                           e.c.triggered_at.is_(None), e.c.cancelled_at.is_(None)))
    if wanted:
        for row in await conn.execute(select(e).where(or_(*wanted))):
            store.escalations[row.escalation_id] = _Escalation(
                DueEscalation(row.escalation_id, row.lead_id, row.policy_id, row.step, row.trigger), row.sla_id,
                row.due_at, row.triggered_at, row.cancelled_at)
    return store


class RunUnitOfWork:
    """The unit of work a consumer's run of events is decided through: what the handlers record
    is applied to the run's `InMemoryStore` at once and kept; `flush` records it all in the real
    unit of work, whose projection writes it in a few statements. Versions are the real ones
    (read for the whole run first: `UnitOfWork.load_versions`)."""

    def __init__(self, uow: UnitOfWork, store: InMemoryStore) -> None:
        self.uow, self.store = uow, store
        self.records: list[tuple[str | None, CloudEvent, str | None]] = []

    async def record(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None:
        self.store.apply(event)
        self.records.append((topic, event, stream))

    async def load_version(self, stream_id: str) -> int:
        return await self.uow.load_version(stream_id)

    async def flush(self) -> None:
        await self.uow.record_all(self.records)
