"""Intake's adapters: what the handlers read, behind one small interface (`IntakeStore`), on
Postgres and in memory. Writes never go through a store: handlers record events, and the
projection (`projection.py`) writes the tables; the in-memory store folds the same events with the
same row functions. `tests/intake_store_contract.py` is one behaviour suite run against both.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db import any_text, keep_dead_letter, xact_locks
from shared.events import ActivityRecorded, CloudEvent, LeadMerged, LeadReceived, LeadUpdated
from shared.eventstore import Pending

from . import projection
from .domain import (
    ACTIVITY_HELD,
    ACTIVITY_RELEASED,
    KEY_BOUND,
    DedupeFacts,
    KnownLead,
    lead_columns,
    updated_record,
)
from .tables import (
    activities,
    availability,
    idempotency_keys,
    leads,
    merged_external_ids,
    pending_activities,
)

# At most this many leads sharing an email or phone are weighed as the same person.
CANDIDATES = 50


@dataclass(frozen=True)
class Held:
    """An activity waiting for its lead (a row of `pending_activities`)."""

    id: str
    lead_ref: str
    event: dict[str, Any]
    topic: str
    partition: int
    offset: int
    key: str | None
    original: bytes
    parked_at: datetime
    expires_at: datetime


class IntakeStore(Protocol):
    """Reads of intake's state, inside the caller's unit of work."""

    async def lock(self, names: Iterable[str]) -> None:
        """Serialise, until commit, every request touching one of these names (an idempotency
        key, an external id, an email or phone): requests that may be the same lead get one answer."""

    async def dedupe_facts(self, source: str, key: str | None, external_id: str | None,
                           identity: Sequence[tuple[str, str]], since: datetime) -> DedupeFacts:
        """What is known under a submission's key, external id and identity keys (email/phone
        of leads received since `since`, oldest first)."""

    async def lock_and_find(self, names: Iterable[str], keys: set[tuple[str, str]],
                            external_ids: set[tuple[str, str]], emails: set[str], phones: set[str],
                            since: datetime) -> set[tuple[str, str]]:
        """`lock(names)`, then which of these identifiers are taken, as seen once the locks are
        held: ("idem", "source:key"), ("ext", "source:id"), ("email", value), ("phone", value)
        (email and phone of leads received since `since`)."""

    async def lead(self, lead_id: str) -> KnownLead | None: ...

    async def known_activities(self, activity_ids: Iterable[str]) -> set[str]:
        """Which of these activities are recorded already."""

    async def resolve(self, ref: str, source: str | None = None) -> str | None:
        """A lead by its id, else by a sender's external id: the newest lead of `source` with it
        (external ids are unique per source only); with no source, the newest of any source's.
        Else the lead a repeat with that external id was merged into (of `source`, or the
        latest merge of any source's)."""

    async def held_for(self, refs: Iterable[str]) -> list[Held]:
        """Activities waiting for any of these lead refs, in the order they were held."""

    async def expired(self, now: datetime, limit: int) -> list[Held]:
        """Held activities whose wait is over (in Postgres, rows another worker holds are skipped)."""

    async def keep_dead_letter(self, letter_id: str, held: Held, error: str) -> None:
        """Keep a held activity that became a dead letter whole (`leadsla.deadletters`), as the
        consumer keeps every record it dead-letters."""


def _known(row: Any) -> KnownLead:
    return KnownLead(row.lead_id, row.tier, row.record, row.correlation_id, row.source)


# Arrays, not IN lists: one statement (compiled and prepared once) whatever the group's size.
_LOCK_AND_FIND = text(
    "SELECT kind, value FROM intake.lock_and_find(CAST(:names AS text[]), CAST(:key_sources AS text[]), "
    "CAST(:key_values AS text[]), CAST(:external_sources AS text[]), CAST(:external_ids AS text[]), "
    "CAST(:emails AS text[]), CAST(:phones AS text[]), :since)")

_LEAD = (leads.c.lead_id, leads.c.tier, leads.c.record, leads.c.correlation_id, leads.c.source)


class PostgresIntakeStore:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def lock(self, names: Iterable[str]) -> None:
        await xact_locks(self.conn, names)

    async def dedupe_facts(self, source: str, key: str | None, external_id: str | None,
                           identity: Sequence[tuple[str, str]], since: datetime) -> DedupeFacts:
        owner = None
        if key:
            owner = await self.conn.scalar(select(idempotency_keys.c.lead_id).where(
                idempotency_keys.c.source == source, idempotency_keys.c.key == key))
            if owner is not None:  # the strongest fact: nothing else is needed
                return DedupeFacts(key_owner=owner)
        if external_id:
            row = (await self.conn.execute(select(*_LEAD).where(
                leads.c.source == source, leads.c.external_id == external_id))).first()
            if row is not None:
                return DedupeFacts(by_external_id=_known(row))
        if not identity:
            return DedupeFacts()
        conditions = [leads.c.email == v if kind == "email" else leads.c.phone == v for kind, v in identity]
        rows = await self.conn.execute(select(*_LEAD).where(or_(*conditions), leads.c.received_at >= since)
                                       .order_by(leads.c.received_at, leads.c.lead_id).limit(CANDIDATES))
        return DedupeFacts(candidates=[_known(r) for r in rows])

    async def lock_and_find(self, names: Iterable[str], keys: set[tuple[str, str]],
                            external_ids: set[tuple[str, str]], emails: set[str], phones: set[str],
                            since: datetime) -> set[tuple[str, str]]:
        # One round trip (migration 0008): the locks, then the lookups in a snapshot taken after them.
        keys_, externals = sorted(keys), sorted(external_ids)
        found = await self.conn.execute(_LOCK_AND_FIND, {
            "names": sorted(set(names)), "key_sources": [s for s, _ in keys_], "key_values": [k for _, k in keys_],
            "external_sources": [s for s, _ in externals], "external_ids": [i for _, i in externals],
            "emails": sorted(emails), "phones": sorted(phones), "since": since})
        return {(r.kind, r.value) for r in found}

    async def lead(self, lead_id: str) -> KnownLead | None:
        row = (await self.conn.execute(select(*_LEAD).where(leads.c.lead_id == lead_id))).first()
        return _known(row) if row is not None else None

    async def known_activities(self, activity_ids: Iterable[str]) -> set[str]:
        wanted = sorted(set(activity_ids))
        if not wanted:
            return set()
        found = await self.conn.scalars(select(activities.c.activity_id).where(activities.c.activity_id == any_text(wanted)))
        return set(found)

    async def resolve(self, ref: str, source: str | None = None) -> str | None:
        found = await self.conn.scalar(select(leads.c.lead_id).where(leads.c.lead_id == ref))
        if found is None:
            query = select(leads.c.lead_id).where(leads.c.external_id == ref)
            if source is not None:
                query = query.where(leads.c.source == source)
            found = await self.conn.scalar(query.order_by(leads.c.received_at.desc()).limit(1))
        if found is None:
            query = select(merged_external_ids.c.lead_id).where(merged_external_ids.c.external_id == ref)
            if source is not None:
                query = query.where(merged_external_ids.c.source == source)
            found = await self.conn.scalar(query.order_by(merged_external_ids.c.merged_at.desc()).limit(1))
        return found

    async def held_for(self, refs: Iterable[str]) -> list[Held]:
        rows = await self.conn.execute(select(pending_activities).where(pending_activities.c.lead_ref.in_(sorted(refs)))
                                       .order_by(*_HELD_ORDER).with_for_update())
        return [Held(**r._mapping) for r in rows]

    async def expired(self, now: datetime, limit: int) -> list[Held]:
        rows = await self.conn.execute(select(pending_activities).where(pending_activities.c.expires_at <= now)
                                       .order_by(*_HELD_ORDER).limit(limit).with_for_update(skip_locked=True))
        return [Held(**r._mapping) for r in rows]

    async def keep_dead_letter(self, letter_id: str, held: Held, error: str) -> None:
        await keep_dead_letter(self.conn, letter_id=letter_id, service="intake", topic=held.topic,
                               partition=held.partition, offset=held.offset, key=held.key, original=held.original,
                               error=error)


_HELD_ORDER = (pending_activities.c.parked_at, pending_activities.c.topic, pending_activities.c.partition,
               pending_activities.c.offset)


class InMemoryIntakeStore:
    """The same reads over dicts, fed by the same events (`apply`): for handler unit tests."""

    def __init__(self) -> None:
        self.leads: dict[str, dict[str, Any]] = {}
        self.keys: dict[tuple[str, str], dict[str, Any]] = {}
        self.activities: dict[str, dict[str, Any]] = {}
        self.held: dict[str, dict[str, Any]] = {}
        self.merged: dict[tuple[str, str], dict[str, Any]] = {}  # (external id, source) -> row
        self.locked: list[str] = []
        self.dead_letters: dict[str, tuple[Held, str]] = {}

    def apply(self, events: Sequence[CloudEvent]) -> None:
        for event in events:
            fold = self._folds.get(event.type)
            if fold is not None:
                fold(self, event)

    def _received(self, event: CloudEvent) -> None:
        row = projection.lead_row(event)
        self.leads[row["lead_id"]] = row

    def _updated(self, event: CloudEvent) -> None:
        row = self.leads.get(event.data["lead_id"])
        if row is not None:
            row["record"] = updated_record(row["record"], event.data)
            row.update(lead_columns(row["record"]))

    def _merged(self, event: CloudEvent) -> None:
        row = projection.merged_row(event)
        if row is not None:
            self.merged[(row["external_id"], row["source"])] = row

    def _activity(self, event: CloudEvent) -> None:
        self.activities.setdefault(event.data["activity_id"], projection.activity_row(event))

    def _key_bound(self, event: CloudEvent) -> None:
        row = projection.key_row(event)
        self.keys.setdefault((row["source"], row["key"]), row)

    def _held(self, event: CloudEvent) -> None:
        row = projection.held_row(event)
        self.held[row["id"]] = row

    def _released(self, event: CloudEvent) -> None:
        self.held.pop(event.data["hold_id"], None)

    _folds: dict[str, Callable[[InMemoryIntakeStore, CloudEvent], None]] = {
        LeadReceived.TYPE: _received,
        LeadUpdated.TYPE: _updated,
        LeadMerged.TYPE: _merged,
        ActivityRecorded.TYPE: _activity,
        KEY_BOUND: _key_bound,
        ACTIVITY_HELD: _held,
        ACTIVITY_RELEASED: _released,
    }

    async def lock(self, names: Iterable[str]) -> None:
        self.locked += sorted(set(names))

    def _lead(self, row: dict[str, Any]) -> KnownLead:
        return KnownLead(row["lead_id"], row["tier"], row["record"], row["correlation_id"], row["source"])

    def _by_identity(self, identity: Iterable[tuple[str, str]], since: datetime) -> list[dict[str, Any]]:
        wanted = set(identity)
        rows = [r for r in self.leads.values() if r["received_at"] >= since
                and (("email", r["email"]) in wanted or ("phone", r["phone"]) in wanted)]
        return sorted(rows, key=lambda r: (r["received_at"], r["lead_id"]))

    async def dedupe_facts(self, source: str, key: str | None, external_id: str | None,
                           identity: Sequence[tuple[str, str]], since: datetime) -> DedupeFacts:
        if key and (source, key) in self.keys:
            return DedupeFacts(key_owner=self.keys[(source, key)]["lead_id"])
        if external_id:
            for row in self.leads.values():
                if row["source"] == source and row["external_id"] == external_id:
                    return DedupeFacts(by_external_id=self._lead(row))
        return DedupeFacts(candidates=[self._lead(r) for r in self._by_identity(identity, since)[:CANDIDATES]])

    async def lock_and_find(self, names: Iterable[str], keys: set[tuple[str, str]],
                            external_ids: set[tuple[str, str]], emails: set[str], phones: set[str],
                            since: datetime) -> set[tuple[str, str]]:
        await self.lock(names)
        taken = {("idem", f"{s}:{k}") for s, k in keys if (s, k) in self.keys}
        taken |= {("ext", f"{r['source']}:{r['external_id']}") for r in self.leads.values()
                  if (r["source"], r["external_id"]) in external_ids}
        for r in self._by_identity([("email", e) for e in emails] + [("phone", p) for p in phones], since):
            taken |= {("email", r["email"]), ("phone", r["phone"])}
        return taken

    async def lead(self, lead_id: str) -> KnownLead | None:
        row = self.leads.get(lead_id)
        return self._lead(row) if row is not None else None

    async def known_activities(self, activity_ids: Iterable[str]) -> set[str]:
        return {a for a in activity_ids if a in self.activities}

    async def resolve(self, ref: str, source: str | None = None) -> str | None:
        if ref in self.leads:
            return ref
        rows = [r for r in self.leads.values() if r["external_id"] == ref and source in (None, r["source"])]
        if rows:
            return max(rows, key=lambda r: r["received_at"])["lead_id"]
        merges = [r for (external_id, of), r in self.merged.items() if external_id == ref and source in (None, of)]
        return max(merges, key=lambda r: r["merged_at"])["lead_id"] if merges else None

    def _ordered(self, rows: Iterable[dict[str, Any]]) -> list[Held]:
        return [Held(**r) for r in sorted(rows, key=lambda r: (r["parked_at"], r["topic"], r["partition"], r["offset"]))]

    async def held_for(self, refs: Iterable[str]) -> list[Held]:
        wanted = set(refs)
        return self._ordered(r for r in self.held.values() if r["lead_ref"] in wanted)

    async def expired(self, now: datetime, limit: int) -> list[Held]:
        return self._ordered(r for r in self.held.values() if r["expires_at"] <= now)[:limit]

    async def keep_dead_letter(self, letter_id: str, held: Held, error: str) -> None:
        self.dead_letters.setdefault(letter_id, (held, error))


@dataclass
class FakeUnitOfWork:
    """A unit of work over an in-memory store: `record` folds events into the store at once, as
    the projection does in Postgres; `committed` holds what a commit appended."""

    store: InMemoryIntakeStore = field(default_factory=InMemoryIntakeStore)
    pending: list[Pending] = field(default_factory=list)
    committed: list[Pending] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)

    def emit(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None:
        self.pending.append(Pending(topic, event, stream or event.subject or event.id))

    async def record(self, topic: str | None, event: CloudEvent, *, stream: str | None = None) -> None:
        self.store.apply([event])
        self.emit(topic, event, stream=stream)

    async def record_all(self, records: Sequence[tuple[str | None, CloudEvent, str | None]]) -> None:
        for topic, event, stream in records:
            await self.record(topic, event, stream=stream)

    async def load_version(self, stream_id: str) -> int:
        self.expected.setdefault(stream_id, self.versions.get(stream_id, 0))
        return self.expected[stream_id]

    async def load_versions(self, stream_ids: Sequence[str]) -> dict[str, int]:
        return {stream_id: await self.load_version(stream_id) for stream_id in stream_ids}

    def expect(self, stream_id: str, version: int) -> None:
        self.expected.setdefault(stream_id, version)

    async def commit(self) -> None:
        for p in self.pending:
            self.versions[p.stream_id] = self.versions.get(p.stream_id, 0) + 1
        self.committed += self.pending
        self.pending, self.expected = [], {}

    @property
    def emitted(self) -> list[CloudEvent]:
        return [p.event for p in self.pending]


# The heartbeat, by the database's clock, so that beats of several processes (and hosts) and the SLA
# clock's reading of them (sla_clock's watermark) use one clock. A run goes on only if its last beat
# is recent by that clock: a beat held up (the database frozen, this process stalled) starts a new
# run, so the silence shows as an outage even though the beat went through in the end.
_BEAT = text("""
WITH going_on AS (
    UPDATE intake.availability SET last_beat = clock_timestamp()
    WHERE interval_id = :interval_id AND last_beat >= clock_timestamp() - CAST(:gap AS interval)
    RETURNING interval_id)
INSERT INTO intake.availability (interval_id, first_beat, last_beat)
SELECT :next_id, clock_timestamp(), clock_timestamp() WHERE NOT EXISTS (SELECT FROM going_on)
RETURNING interval_id""")


async def record_beat(conn: AsyncConnection, interval_id: str | None, gap: timedelta) -> str:
    """Intake can accept now: extend run `interval_id`, or start a new one after a silence of more
    than `gap`. The run the beat went to."""
    next_id = uuid.uuid4().hex
    started = await conn.scalar(_BEAT, {"interval_id": interval_id or next_id, "next_id": next_id, "gap": gap})
    return started or interval_id or next_id


async def forget_beats(conn: AsyncConnection, kept: timedelta) -> None:
    """Drop runs that ended longer than `kept` ago (by the database's clock, as the beats)."""
    await conn.execute(availability.delete().where(
        availability.c.last_beat < func.clock_timestamp() - kept))
