"""Intake's handlers through the in-memory store and a fake unit of work: no I/O."""
from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from services.intake.adapters import FakeUnitOfWork
from services.intake.domain import (
    ACTIVITY_HELD,
    ACTIVITY_RELEASED,
    KEY_BOUND,
    ActivityIn,
    intent_vocabulary,
)
from services.intake.handlers import (
    LeadRequest,
    RawPosition,
    RawTouch,
    RejectedActivity,
    UnknownLead,
    expire_pending,
    park_activity,
    record_activity,
    record_touches,
    resolve_leads,
    submit_lead,
    submit_leads,
    update_lead,
)
from services.intake.normalize import read_submission
from shared.config import parse_config
from shared.events import CloudEvent, LeadReceived

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
CONFIG = parse_config("""
tiers:
  default: C
  rules: [{tier: A, when: {intent: [demo_request]}}, {tier: B, when: {intent: [trial]}}]
dedupe: {window: 30d, match_on: [email, phone]}
disposition_reasons:
  disqualified: [no_budget, student]
intake:
  activity_wait: 60s
""")


def sub(body: dict, *, partial: bool = False):
    return read_submission(body, CONFIG.intake.source("webform"), intent_vocabulary(CONFIG), partial=partial)


@pytest.fixture
def uow() -> FakeUnitOfWork:
    return FakeUnitOfWork()


async def submit(uow: FakeUnitOfWork, body: dict, key: str | None = None, at: datetime = NOW):
    result = await submit_lead(uow, uow.store, CONFIG, sub(body), source="webform", now=at, idempotency_key=key)
    await uow.commit()
    return result


def types(uow: FakeUnitOfWork) -> list[str]:
    return [p.event.type for p in uow.committed]


async def test_a_new_lead_is_recorded_and_becomes_what_the_store_knows(uow) -> None:
    result = await submit(uow, {"contact": {"email": "Ada@Example.com"}, "intent": {"type": "Demo Request"}})
    assert result.status == "accepted" and result.tier == "A"
    assert types(uow) == ["lead.received"] and uow.committed[0].topic == "leads.intake"
    lead = await uow.store.lead(result.lead_id)
    assert lead is not None and lead.record["contact"]["email"] == "ada@example.com" and lead.tier == "A"


async def test_a_replayed_idempotency_key_gets_the_same_lead_and_records_nothing(uow) -> None:
    first = await submit(uow, {"contact": {"email": "a@example.com"}}, key="k-1")
    again = await submit(uow, {"contact": {"email": "other@example.com"}}, key="k-1")
    assert (again.lead_id, again.status) == (first.lead_id, "duplicate")
    assert types(uow) == ["lead.received", KEY_BOUND]
    bound = uow.committed[1]
    assert bound.topic is None and bound.stream_id == "idempotency:webform:k-1" and bound.event.subject is None


async def test_a_repeat_by_external_id_is_a_duplicate_merged_only_with_news_and_binds_its_key(uow) -> None:
    first = await submit(uow, {"external_id": "crm-1", "contact": {"email": "a@example.com"}})
    again = await submit(uow, {"external_id": "crm-1", "contact": {"email": "a@example.com"}}, key="k-2")
    assert (again.lead_id, again.status, again.upgraded) == (first.lead_id, "duplicate", False)
    assert types(uow) == ["lead.received", KEY_BOUND]
    assert uow.store.keys[("webform", "k-2")]["lead_id"] == first.lead_id
    # The record re-sent with another email: kept on the lead's stream, not dropped.
    moved = await submit(uow, {"external_id": "crm-1", "contact": {"email": "b@example.com"}})
    assert (moved.lead_id, moved.status) == (first.lead_id, "duplicate")
    assert types(uow) == ["lead.received", KEY_BOUND, "lead.merged"]
    merged = uow.committed[2].event.data
    assert merged["match_on"] == "external_id" and merged["duplicate_submission"]["contact"]["email"] == "b@example.com"


async def test_the_same_person_with_a_higher_intent_is_merged_and_upgraded(uow) -> None:
    first = await submit(uow, {"contact": {"email": "a@example.com"}, "intent": {"type": "ebook"}})
    again = await submit(uow, {"contact": {"email": "a@example.com"}, "intent": {"type": "demo_request"}},
                         at=NOW + timedelta(hours=1))
    assert (again.lead_id, again.upgraded, again.tier) == (first.lead_id, True, "A")
    assert types(uow) == ["lead.received", "lead.merged", "lead.updated"]
    merged, update = uow.committed[1].event, uow.committed[2].event
    assert merged.data["match_on"] == "email" and merged.correlationid == uow.committed[0].event.correlationid
    assert update.data["reason"] == "upgraded" and update.data["previous_tier"] == "C"
    lead = await uow.store.lead(first.lead_id)
    assert lead.tier == "A" and lead.record["intent"]["type"] == "demo_request"


async def test_a_repeat_reads_the_lead_s_stream_version_so_a_racing_writer_conflicts(uow) -> None:
    first = await submit(uow, {"contact": {"email": "a@example.com"}})
    await submit_lead(uow, uow.store, CONFIG, sub({"contact": {"email": "a@example.com"}}), source="webform",
                      now=NOW)
    assert uow.expected == {first.lead_id: 1}


async def test_a_colleague_on_the_same_switchboard_is_a_lead_of_their_own(uow) -> None:
    first = await submit(uow, {"contact": {"email": "a@example.com", "phone": "+14155550100"}})
    other = await submit(uow, {"contact": {"email": "b@example.com", "phone": "+14155550100"}})
    assert other.status == "accepted" and other.lead_id != first.lead_id


async def test_a_group_records_its_new_leads_together_and_sends_repeats_one_by_one(uow) -> None:
    requests = [LeadRequest(sub({"contact": {"email": e}}), "webform", k)
                for e, k in (("a@example.com", "g-1"), ("b@example.com", None), ("a@example.com", "g-3"))]
    results = await submit_leads(uow, uow.store, CONFIG, requests, now=NOW)
    await uow.commit()
    assert [r.status for r in results] == ["accepted", "accepted", "duplicate"]
    assert results[2].lead_id == results[0].lead_id
    assert types(uow) == ["lead.received", KEY_BOUND, "lead.received", "lead.merged", KEY_BOUND]
    assert {k for _, k in uow.store.keys} == {"g-1", "g-3"}


async def test_a_patch_records_the_changes_and_the_store_folds_them(uow) -> None:
    lead = await submit(uow, {"contact": {"email": "a@example.com", "phone": "n/a"}, "intent": {"type": "inquiry"}})
    tier, changed = await update_lead(uow, uow.store, CONFIG, lead.lead_id,
                                      sub({"contact": {"phone": "+14155552671"}, "intent": {"type": "trial"}},
                                          partial=True), now=NOW)
    await uow.commit()
    assert tier == "B" and changed["contact.phone"] == {"old": "n/a", "new": "+14155552671"}
    assert types(uow) == ["lead.received", "lead.updated"]
    known = await uow.store.lead(lead.lead_id)
    assert known.record["contact"]["phone"] == "+14155552671" and known.record["data_quality"] == []
    assert uow.store.leads[lead.lead_id]["phone"] == "+14155552671"
    assert await update_lead(uow, uow.store, CONFIG, lead.lead_id, sub({"intent": {"type": "trial"}}, partial=True),
                             now=NOW) == ("B", {})
    with pytest.raises(UnknownLead):
        await update_lead(uow, uow.store, CONFIG, "nobody", sub({"score": 3}, partial=True), now=NOW)


async def test_an_unreadable_correction_is_not_applied_says_so_and_leaves_no_flaw(uow) -> None:
    """'Narnia' for a lead in GB: not applied (right), but the answer said "kept as sent" and the
    note made the lead's good country count as missing."""
    lead = await submit(uow, {"contact": {"email": "a@example.com", "country": "GB"}, "company": {"name": "Acme"},
                              "intent": {"type": "trial"}})
    patch = sub({"contact": {"country": "Narnia"}, "score": 40}, partial=True)
    _, changed = await update_lead(uow, uow.store, CONFIG, lead.lead_id, patch, now=NOW)
    await uow.commit()
    assert "contact.country" not in changed and changed["score"]["new"] == 40
    assert patch.warnings == [{"field": "contact.country", "message": "'Narnia' is not a known country; not applied: "
                                                                      "the lead keeps its value"}]
    known = await uow.store.lead(lead.lead_id)
    assert known.record["contact"]["country"] == "GB" and known.record["data_quality"] == []
    [update] = [p.event for p in uow.committed if p.event.type == "lead.updated"]
    assert "contact.country" not in update.data["missing_fields"] and update.data["data_quality"] == []


async def test_an_opt_out_is_recorded_once_and_makes_the_lead_not_contactable(uow) -> None:
    lead = await submit(uow, {"contact": {"email": "a@example.com"}})
    opt_out = ActivityIn(type="opt_out", external_id="o-1", reason="asked")
    first = await record_activity(uow, uow.store, CONFIG, lead.lead_id, opt_out, now=NOW)
    again = await record_activity(uow, uow.store, CONFIG, lead.lead_id, opt_out, now=NOW)
    await uow.commit()
    assert first == again
    assert types(uow) == ["lead.received", "activity.recorded", "lead.updated"]
    update = uow.committed[2].event.data
    assert update["reason"] == "opted_out" and update["changed"]["consent.contact"]["new"] is False
    known = await uow.store.lead(lead.lead_id)
    assert known.record["contactable"] is False and known.record["consent"]["contact"] is False


async def test_an_activity_in_the_future_or_for_no_lead_is_refused(uow) -> None:
    lead = await submit(uow, {"contact": {"email": "a@example.com"}})
    with pytest.raises(RejectedActivity):
        await record_activity(uow, uow.store, CONFIG, lead.lead_id,
                              ActivityIn(type="call", occurred_at=NOW + timedelta(hours=1)), now=NOW)
    with pytest.raises(UnknownLead):
        await record_activity(uow, uow.store, CONFIG, "nobody", ActivityIn(type="call"), now=NOW)
    assert types(uow) == ["lead.received"] and uow.pending == []


async def test_a_local_time_that_the_assumed_zone_puts_in_the_future_is_kept_not_refused(uow) -> None:
    """A CRM in Berlin sends local times without an offset and its source has no time zone: read
    as UTC, a call made a minute ago is an hour ahead and was a 422 ("in the future"), the call
    lost. The zone was a guess: the time is kept as sent and the touch dated when accepted. An
    explicit offset in the future is still refused."""
    lead = await submit(uow, {"contact": {"email": "a@example.com"}})
    sent = (NOW + timedelta(minutes=59)).strftime("%Y-%m-%d %H:%M:%S")
    activity = ActivityIn.model_validate({"type": "call", "occurred_at": sent}).dated("UTC")
    await record_activity(uow, uow.store, CONFIG, lead.lead_id, activity, now=NOW)
    await uow.commit()
    [recorded] = [p.event.data for p in uow.committed if p.event.type == "activity.recorded"]
    assert recorded["occurred_at"] == NOW.isoformat().replace("+00:00", "Z") and recorded["attributes"] == {"occurred_at": sent}
    with pytest.raises(RejectedActivity):
        await record_activity(uow, uow.store, CONFIG, lead.lead_id, ActivityIn.model_validate(
            {"type": "call", "occurred_at": (NOW + timedelta(minutes=59)).isoformat()}).dated("UTC"), now=NOW)


async def park(uow: FakeUnitOfWork, ref: str, offset: int, data: dict, at: datetime = NOW) -> None:
    event = CloudEvent(id=f"e-{offset}", source="crm", type="activity", subject=ref, time=at,
                       data={"lead_id": ref, **data})
    await park_activity(uow, CONFIG, ref, event, RawPosition("raw", 0, offset, ref, b'{"raw": 1}'), at)
    await uow.commit()


async def test_held_activities_are_recorded_when_their_lead_arrives(uow) -> None:
    await park(uow, "crm-9", 1, {"type": "call", "external_id": "c-1"})
    await park(uow, "crm-9", 2, {"type": "disposition", "disposition": {"status": "bogus"}})
    assert [p.stream_id for p in uow.committed] == ["held:crm-9"] * 2
    lead = await submit(uow, {"external_id": "crm-9", "contact": {"email": "a@example.com"}})
    assert types(uow)[2:] == ["lead.received", "activity.recorded", ACTIVITY_RELEASED, "deadletter",
                              ACTIVITY_RELEASED]
    outcomes = [p.event.data["outcome"] for p in uow.committed if p.event.type == ACTIVITY_RELEASED]
    assert outcomes == ["recorded", "rejected"]
    assert uow.committed[3].event.data["lead_id"] == lead.lead_id and uow.store.held == {}


async def test_a_merged_repeat_s_external_id_names_the_lead_it_was_merged_into(uow) -> None:
    """The second form fill of one person is merged; the CRM's record of it (its external id)
    still names the person's lead: a touch held for it is recorded there, and later ones resolve."""
    lead = await submit(uow, {"external_id": "crm-1", "contact": {"email": "ada@example.com"}})
    await park(uow, "crm-2", 1, {"type": "call", "external_id": "c-1"})
    repeat = await submit(uow, {"external_id": "crm-2", "contact": {"email": "Ada@Example.com"}})
    assert (repeat.lead_id, repeat.status) == (lead.lead_id, "duplicate")
    assert types(uow)[2:] == ["lead.merged", "activity.recorded", ACTIVITY_RELEASED]
    merged = uow.committed[2].event.data
    assert merged["source"] == "webform" and merged["duplicate_submission"]["external_id"] == "crm-2"
    assert uow.committed[3].event.data["lead_id"] == lead.lead_id and uow.store.held == {}
    assert await uow.store.resolve("crm-2", "webform") == lead.lead_id
    assert await uow.store.resolve("crm-2", "chat") is None


async def test_held_activities_whose_lead_never_comes_are_dead_lettered(uow) -> None:
    await park(uow, "crm-0", 1, {"type": "note"})
    assert await expire_pending(uow, uow.store, NOW + timedelta(seconds=59)) == []
    assert await expire_pending(uow, uow.store, NOW + timedelta(seconds=60)) == ["raw"]
    await uow.commit()
    assert types(uow) == [ACTIVITY_HELD, "deadletter", ACTIVITY_RELEASED]
    letter = uow.committed[1].event.data
    assert base64.b64decode(letter["original_bytes_b64"]) == b'{"raw": 1}'
    assert letter["error"].startswith("unknown_lead") and uow.store.held == {}
    # Kept whole where every dead letter is (an audit found these on the topic only), and named.
    kept, error = uow.store.dead_letters[letter["deadletter_id"]]
    assert kept.original == b'{"raw": 1}' and error == letter["error"]
    assert (letter["original_size"], letter["truncated"]) == (10, False)
    assert letter["original_sha256"] == hashlib.sha256(b'{"raw": 1}').hexdigest()


async def test_lead_received_wire_form(uow) -> None:
    """lead.received is built in wire form without validation: the same data as the validated model."""
    body = {"external_id": "x-1", "submitted_at": "2026-11-17T08:00:00", "score": 70,
            "contact": {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0958 ext. 12",
                        "timezone": "CET", "language": "en_GB", "nickname": "ada"},
            "company": {"name": "Analytical", "size": "201-500", "website": "https://www.analytical.example/x",
                        "country": "Narnia"},
            "intent": "Book a demo", "consent": {"marketing": "yes", "terms_version": 3},
            "custom_fields": {"deep": {"list": [1, 2.5, None, "x"]}}}
    await submit(uow, body)
    [event] = [p.event for p in uow.committed if p.event.type == "lead.received"]
    assert event.data == LeadReceived.model_validate(event.data).model_dump(mode="json")
    submission = sub(body)
    data = event.data
    assert data["contact"] == submission.contact.model_dump(mode="json")
    assert data["consent"] == submission.consent.model_dump(mode="json")
    assert data["score"] == 70.0 and isinstance(data["score"], float)
    assert data["received_at"] == "2026-11-17T09:00:00Z" and data["submitted_at"] == "2026-11-17T08:00:00Z"
    assert list(data) == list(LeadReceived.model_fields)
    assert data["data_quality"] == submission.data_quality and data["attributes"] == submission.attributes


SCORED = parse_config("""
tiers:
  default: C
  rules: [{tier: A, when: {min_score: 80}}, {tier: B, when: {intent: [trial]}}]
dedupe: {window: 30d, match_on: [email]}
""")


async def test_a_repeat_whose_higher_score_raises_the_tier_keeps_that_score_for_later_re_tiering(uow) -> None:
    """The upgrade named the intent only: the lead kept its old score, so a later PATCH of any
    field (a title) re-tiered it from the old score, back down to C."""
    def scored(body: dict, partial: bool = False):
        return read_submission(body, SCORED.intake.source("webform"), intent_vocabulary(SCORED), partial=partial)

    first = await submit_lead(uow, uow.store, SCORED, scored({"contact": {"email": "a@example.com"}, "score": 20}),
                              source="webform", now=NOW)
    again = await submit_lead(uow, uow.store, SCORED, scored({"contact": {"email": "a@example.com"}, "score": "95%"}),
                              source="webform", now=NOW + timedelta(hours=1))
    await uow.commit()
    assert (again.upgraded, again.tier) == (True, "A")
    assert uow.committed[-1].event.data["changed"]["score"] == {"old": 20.0, "new": 95.0}
    tier, changed = await update_lead(uow, uow.store, SCORED, first.lead_id,
                                      scored({"contact": {"title": "CTO"}}, partial=True), now=NOW + timedelta(hours=2))
    assert tier == "A" and "tier" not in changed


BY_SOURCE = parse_config("""
tiers:
  default: C
  rules: [{tier: A, when: {source: [partner]}}, {tier: B, when: {intent: [trial]}}]
dedupe: {window: 30d, match_on: [email]}
""")


async def test_a_patch_of_a_field_tiering_does_not_read_keeps_the_tier_a_repeat_raised(uow) -> None:
    """A partner's repeat of a web lead raises it to A (the partner's rule); the lead keeps its
    first source, so a PATCH of its title re-tiered it from that source, back down to C."""
    def read(body: dict, partial: bool = False):
        return read_submission(body, BY_SOURCE.intake.source("web"), intent_vocabulary(BY_SOURCE), partial=partial)

    first = await submit_lead(uow, uow.store, BY_SOURCE, read({"contact": {"email": "a@example.com"}}),
                              source="web", now=NOW)
    again = await submit_lead(uow, uow.store, BY_SOURCE, read({"contact": {"email": "a@example.com"}}),
                              source="partner", now=NOW + timedelta(hours=1))
    await uow.commit()
    assert (first.tier, again.tier) == ("C", "A")
    tier, changed = await update_lead(uow, uow.store, BY_SOURCE, first.lead_id,
                                      read({"contact": {"title": "CTO"}}, partial=True), now=NOW + timedelta(hours=2))
    assert (tier, changed) == ("A", {"contact.title": {"old": None, "new": "CTO"}})


def raw_touch(ref: str, offset: int, **activity) -> RawTouch:
    cause = CloudEvent(id=f"t-{offset}", source="crm", type="activity", subject=ref, time=NOW,
                       data={"lead_id": ref, **activity})
    return RawTouch(ref, None, ActivityIn.model_validate(activity), cause,
                    RawPosition("raw", 0, offset, ref, b'{"raw": 1}'))


async def test_a_batch_of_raw_touches_records_what_one_at_a_time_would_in_the_same_order() -> None:
    """A fetched batch is decided at once (a CRM back-fill read one touch at a time, six round trips
    each): the same events, in the same order, as the touches taken one by one: a repeat once, a
    touch whose lead is not here yet held, an opt-out changing its lead in its place."""
    batch = [
        raw_touch("crm-1", 1, type="call", external_id="c-1"),
        raw_touch("crm-2", 2, type="email", external_id="e-1"),
        raw_touch("crm-1", 3, type="call", external_id="c-1"),  # the same touch again
        raw_touch("crm-404", 4, type="call", external_id="c-9"),  # its lead is on its way
        raw_touch("crm-1", 5, type="opt_out", external_id="o-1", reason="asked"),
        raw_touch("crm-1", 6, type="note", external_id="n-1"),
        raw_touch("crm-2", 7, type="email", external_id="e-1"),
    ]
    async def one_at_a_time(uow: FakeUnitOfWork, touches: list[RawTouch]) -> None:
        for touch in touches:
            [lead_id] = (await resolve_leads(uow.store, [(touch.ref, touch.source)])).values()
            if lead_id is None:
                await park_activity(uow, CONFIG, touch.ref, touch.cause, touch.position, NOW)
            else:
                await record_activity(uow, uow.store, CONFIG, lead_id, touch.activity, now=NOW, cause=touch.cause)
            await uow.commit()

    async def at_once(uow: FakeUnitOfWork, touches: list[RawTouch]) -> None:
        await record_touches(uow, uow.store, CONFIG, touches, now=NOW)
        await uow.commit()

    outcomes = []
    for record in (at_once, one_at_a_time):
        uow = FakeUnitOfWork()
        refs = {"held:crm-404": "held"}  # stream -> the ref that named it
        for ref in ("crm-1", "crm-2"):
            refs[(await submit(uow, {"external_id": ref, "contact": {"email": f"{ref}@example.com"}})).lead_id] = ref
        await record(uow, batch)
        outcomes.append([(p.event.type, refs[p.stream_id], p.event.data.get("type") or p.event.data.get("reason"))
                         for p in uow.committed[2:]])
    assert outcomes[0] == outcomes[1]
    assert [t for t, _, _ in outcomes[0]] == ["activity.recorded", "activity.recorded", ACTIVITY_HELD,
                                          "activity.recorded", "lead.updated", "activity.recorded"]


async def test_a_batch_of_raw_touches_with_one_refused_is_refused_whole(uow) -> None:
    """The consumer then takes the batch a record at a time, and dead-letters the refused one alone."""
    await submit(uow, {"external_id": "crm-1", "contact": {"email": "a@example.com"}})
    future = (NOW + timedelta(hours=1)).isoformat()
    with pytest.raises(RejectedActivity):
        await record_touches(uow, uow.store, CONFIG, [raw_touch("crm-1", 1, type="call"),
                                                      raw_touch("crm-1", 2, type="call", occurred_at=future)], now=NOW)


async def test_a_touch_resent_before_its_lead_comes_is_held_once(uow) -> None:
    """A CRM resending its sync while the lead is on its way: each copy was held (600 holds for
    300 touches), and had the lead never come, each copy would have been a dead letter."""
    copies = [raw_touch("crm-7", offset, type="call", external_id="c-1") for offset in (1, 2, 3)]
    others = [raw_touch("crm-7", 4, type="call", external_id="c-2"), raw_touch("crm-7", 5, type="email"),
              raw_touch("crm-7", 6, type="email")]  # another touch, and two that say not which they are
    await record_touches(uow, uow.store, CONFIG, copies[:2], now=NOW)
    await uow.commit()
    await record_touches(uow, uow.store, CONFIG, [others[1], copies[2], others[0], others[2]], now=NOW)
    await uow.commit()
    assert len(uow.store.held) == len([p for p in uow.committed if p.event.type == ACTIVITY_HELD]) == 4
    lead = await submit(uow, {"external_id": "crm-7", "contact": {"email": "a@example.com"}})
    recorded = [p.event.data for p in uow.committed if p.event.type == "activity.recorded"]
    assert len(recorded) == 4 and {r["lead_id"] for r in recorded} == {lead.lead_id} and uow.store.held == {}
