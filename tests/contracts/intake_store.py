"""One behaviour contract for intake's store (`services.intake.adapters.IntakeStore`), run against the
in-memory store (tests/unit/test_intake_store_memory.py) and Postgres
(tests/integration/test_intake_store_postgres.py). A subclass provides the `harness` fixture: the
store under test and `apply`, which feeds it events the way recording does (the projection)."""
from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.intake.adapters import IntakeStore
from services.intake.domain import (
    ActivityHeld,
    ActivityReleased,
    IdempotencyKeyBound,
)
from services.intake.handlers import internal_event
from shared.events import (
    ActivityRecorded,
    CloudEvent,
    Company,
    Consent,
    Contact,
    Intent,
    LeadMerged,
    LeadReceived,
    LeadUpdated,
    deterministic_id,
    new_event,
)

# Far from any other test's rows in a shared database (windows and expiry compare times).
T0 = datetime(2001, 3, 4, 9, 0, tzinfo=UTC)


@dataclass
class Harness:
    store: IntakeStore
    apply: Callable[[Sequence[CloudEvent]], Awaitable[None]]


def unique(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def received(*, email: str | None = None, phone: str | None = None, at: datetime = T0, source: str = "webform",
             external_id: str | None = None, tier: str = "C", flawed: Sequence[str] = ()) -> CloudEvent:
    lead_id = str(uuid.uuid4())
    data = LeadReceived(
        lead_id=lead_id, source=source, external_id=external_id, tier=tier,
        contact=Contact(email=email, phone=phone), company=Company(), intent=Intent(type="inquiry"),
        consent=Consent(), contactable=True, received_at=at,
        data_quality=[{"field": f, "message": "kept as sent", "value": "?"} for f in flawed])
    return new_event("lead.received", service="intake", lead_id=lead_id, data=data, time=at)


def updated(lead: CloudEvent, changed: dict, *, tier: str = "C", data_quality: Sequence[dict] = (),
            missing_fields: list[str] | None = None) -> CloudEvent:
    data = LeadUpdated(lead_id=lead.subject, changed=changed, tier=tier, previous_tier="C", reason="patched",
                       data_quality=list(data_quality), missing_fields=missing_fields)
    return new_event("lead.updated", service="intake", lead_id=lead.subject, data=data, time=T0)


def merged(lead: CloudEvent, external_id: str | None, source: str | None = "webform",
           at: datetime = T0) -> CloudEvent:
    """A repeat of `lead` from `source`, under an external id of its own."""
    data = LeadMerged(lead_id=lead.subject, match_on="email", source=source,
                      duplicate_submission={"external_id": external_id, "contact": {}})
    return new_event("lead.merged", service="intake", lead_id=lead.subject, data=data, time=at)


def activity(lead: CloudEvent, activity_id: str, kind: str = "call") -> CloudEvent:
    data = ActivityRecorded(lead_id=lead.subject, activity_id=activity_id, type=kind, occurred_at=T0)
    return new_event("activity.recorded", service="intake", lead_id=lead.subject, data=data, time=T0)


def key_bound(source: str, key: str, lead: CloudEvent) -> CloudEvent:
    return internal_event(IdempotencyKeyBound.TYPE,
                          IdempotencyKeyBound(source=source, key=key, lead_id=lead.subject, bound_at=T0), time=T0)


def held(ref: str, offset: int, at: datetime, wait: timedelta = timedelta(minutes=1)) -> CloudEvent:
    topic = unique("raw.")
    data = ActivityHeld(hold_id=deterministic_id("held", topic, "0", str(offset)), lead_ref=ref,
                        event={"id": unique(), "type": "activity", "data": {"type": "call"}}, topic=topic,
                        partition=0, offset=offset, key=ref, original_b64=base64.b64encode(b"{}").decode(),
                        held_at=at, expires_at=at + wait)
    return internal_event(ActivityHeld.TYPE, data, time=at)


def released(hold: CloudEvent, outcome: str = "recorded") -> CloudEvent:
    data = ActivityReleased(hold_id=hold.data["hold_id"], lead_ref=hold.data["lead_ref"], outcome=outcome,
                            released_at=T0)
    return internal_event(ActivityReleased.TYPE, data, time=T0)


class IntakeStoreContract:
    async def test_an_idempotency_key_answers_with_its_lead_and_nothing_else_is_looked_up(self, harness) -> None:
        lead, key = received(email=unique() + "@x.example", external_id=unique("crm-")), unique("k-")
        await harness.apply([lead, key_bound("webform", key, lead)])
        facts = await harness.store.dedupe_facts("webform", key, lead.data["external_id"], [], since=T0)
        assert facts.key_owner == lead.subject and facts.by_external_id is None
        assert (await harness.store.dedupe_facts("other", key, None, [], since=T0)).key_owner is None

    async def test_an_external_id_names_a_lead_of_its_source_only(self, harness) -> None:
        external_id = unique("crm-")
        lead = received(external_id=external_id, email=unique() + "@x.example")
        await harness.apply([lead])
        facts = await harness.store.dedupe_facts("webform", None, external_id, [], since=T0)
        assert facts.by_external_id is not None and facts.by_external_id.lead_id == lead.subject
        assert facts.by_external_id.source == "webform" and facts.by_external_id.record == lead.data
        assert facts.by_external_id.correlation_id == lead.correlationid
        assert (await harness.store.dedupe_facts("chat", None, external_id, [], since=T0)).by_external_id is None

    async def test_identity_candidates_are_the_window_s_leads_sharing_an_email_or_phone_oldest_first(
            self, harness) -> None:
        email, phone = unique() + "@x.example", "+1415" + str(uuid.uuid4().int)[:7]
        old = received(email=email, at=T0 - timedelta(days=40))
        second = received(phone=phone, email=unique() + "@x.example", at=T0 + timedelta(minutes=2))
        first = received(email=email, at=T0 + timedelta(minutes=1))
        flawed = received(email=email, at=T0 + timedelta(minutes=3), flawed=["contact.email"])
        await harness.apply([old, second, first, flawed])
        facts = await harness.store.dedupe_facts("webform", None, None, [("email", email), ("phone", phone)],
                                                 since=T0 - timedelta(days=30))
        assert [c.lead_id for c in facts.candidates] == [first.subject, second.subject]

    async def test_lock_and_find_names_the_identifiers_already_taken(self, harness) -> None:
        email, key, external_id = unique() + "@x.example", unique("k-"), unique("crm-")
        phone = "+1415" + str(uuid.uuid4().int)[:7]
        lead = received(email=email, phone=phone, external_id=external_id)
        old = received(email=unique() + "@x.example", phone="+1415" + str(uuid.uuid4().int)[:7],
                       at=T0 - timedelta(days=40))
        await harness.apply([lead, old, key_bound("webform", key, lead)])
        taken = await harness.store.lock_and_find(
            [f"id:email:{email}"], {("webform", key), ("webform", "nope")}, {("webform", external_id)},
            {email, "free@x.example", old.data["contact"]["email"]}, set(), since=T0 - timedelta(days=30))
        # A lead found by its email names its phone too.
        assert taken == {("idem", f"webform:{key}"), ("ext", f"webform:{external_id}"), ("email", email),
                         ("phone", phone)}
        assert await harness.store.lock_and_find([], set(), set(), set(), set(), since=T0) == set()

    async def test_an_update_is_folded_into_the_lead_and_its_indexes(self, harness) -> None:
        lead = received(email=unique() + "@x.example", phone="n/a", flawed=["contact.phone"])
        new_phone = "+1415" + str(uuid.uuid4().int)[:7]
        await harness.apply([lead, updated(lead, {"contact.phone": {"old": "n/a", "new": new_phone},
                                                  "attributes.crm.stage": {"old": None, "new": "MQL"}},
                                           tier="A", missing_fields=["company.name"])])
        known = await harness.store.lead(lead.subject)
        assert known is not None and known.tier == "A"
        assert known.record["contact"]["phone"] == new_phone and known.record["attributes"] == {"crm.stage": "MQL"}
        assert known.record["data_quality"] == [] and known.record["missing_fields"] == ["company.name"]
        facts = await harness.store.dedupe_facts("webform", None, None, [("phone", new_phone)], since=T0)
        assert [c.lead_id for c in facts.candidates] == [lead.subject]
        assert await harness.store.lead(unique()) is None

    async def test_an_activity_is_recorded_once(self, harness) -> None:
        lead, activity_id = received(email=unique() + "@x.example"), unique("a-")
        await harness.apply([lead, activity(lead, activity_id), activity(lead, activity_id, "note")])
        other = unique("a-")
        assert await harness.store.known_activities([activity_id, other, activity_id]) == {activity_id}
        assert await harness.store.known_activities([]) == set()

    async def test_a_ref_resolves_to_a_lead_id_or_the_newest_lead_with_that_external_id(self, harness) -> None:
        external_id = unique("crm-")
        older = received(external_id=external_id, source="webform", at=T0)
        newer = received(external_id=external_id, source="chat", at=T0 + timedelta(minutes=5))
        await harness.apply([older, newer])
        assert await harness.store.resolve(older.subject) == older.subject
        assert await harness.store.resolve(external_id) == newer.subject
        # External ids are unique per source only: a sender that names its source gets its own lead.
        assert await harness.store.resolve(external_id, "webform") == older.subject
        assert await harness.store.resolve(external_id, "partner") is None
        assert await harness.store.resolve(unique("crm-")) is None

    async def test_an_external_id_merged_into_a_lead_resolves_to_it_in_its_source(self, harness) -> None:
        """A repeat's own external id (the sender's record of the second form fill) names the lead
        it was merged into, for the repeat's source only; a lead's own external id comes first."""
        survivor, later, ref, own = received(), received(), unique("crm-"), unique("crm-")
        chat_lead = received(external_id=own, source="chat")
        await harness.apply([survivor, later, chat_lead, merged(survivor, ref), merged(survivor, None),
                             merged(later, own, "chat"), merged(later, own, "webform")])
        assert await harness.store.resolve(ref, "webform") == survivor.subject
        assert await harness.store.resolve(ref) == survivor.subject
        assert await harness.store.resolve(ref, "chat") is None
        assert await harness.store.resolve(own, "chat") == chat_lead.subject
        assert await harness.store.resolve(own, "webform") == later.subject
        # Merged again into another lead (identity moved on): the latest merge names it.
        await harness.apply([merged(later, ref, at=T0 + timedelta(minutes=1))])
        assert await harness.store.resolve(ref, "webform") == later.subject
        again = unique("crm-")  # two merges of one id applied together (a replay's page)
        await harness.apply([merged(later, again), merged(survivor, again, at=T0 + timedelta(minutes=2))])
        assert await harness.store.resolve(again, "webform") == survivor.subject

    async def test_a_merge_recorded_without_its_source_names_no_lead(self, harness) -> None:
        """lead.merged events from before the source was recorded: the id's source is unknown,
        and another source's id of the same spelling must not land on this lead."""
        lead, ref = received(), unique("crm-")
        await harness.apply([merged(lead, ref, source=None)])
        assert await harness.store.resolve(ref) is None

    async def test_held_activities_wait_in_order_until_released_or_expired(self, harness) -> None:
        ref, other = unique("crm-"), unique("crm-")
        second, first = held(ref, 2, T0 + timedelta(seconds=1)), held(ref, 1, T0)
        elsewhere = held(other, 3, T0, wait=timedelta(hours=1))
        await harness.apply([second, first, elsewhere])
        waiting = await harness.store.held_for([ref])
        assert [h.id for h in waiting] == [first.data["hold_id"], second.data["hold_id"]]
        assert waiting[0].original == b"{}" and waiting[0].lead_ref == ref and waiting[0].offset == 1
        due = await harness.store.expired(T0 + timedelta(minutes=1), 10)
        assert [h.id for h in due] == [first.data["hold_id"]]
        await harness.apply([released(first), released(second, "expired")])
        assert await harness.store.held_for([ref]) == []
        assert [h.id for h in await harness.store.held_for([other])] == [elsewhere.data["hold_id"]]
