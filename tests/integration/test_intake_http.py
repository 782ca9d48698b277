"""POST /v1/leads and activities through the real app, database and outbox."""
from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from services.intake.bootstrap import bootstrap
from shared.auth import create_key
from shared.http import create_app
from tests.support import stored_events

CONFIG = """
intake: {sources: {chat: {}}}
tiers:
  default: C
  rules: [{tier: A, when: {intent: [demo_request]}}]
dedupe: {window: 30d, match_on: [email, phone]}
disposition_reasons:
  disqualified: [no_budget, student]
"""


@pytest.fixture
async def api(make_ctx, engine):
    ctx = make_ctx("intake", CONFIG)
    spec = bootstrap(ctx)
    app = create_app(ctx, spec.routers, spec.on_invalid_request)
    async with engine.begin() as conn:
        source_key = await create_key(conn, "webform", "source")
        admin_key = await create_key(conn, "ops", "admin")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        client.headers["Authorization"] = f"Bearer {source_key}"
        client.admin_key = admin_key  # type: ignore[attr-defined]
        yield client


def lead_body(email: str | None = None, **extra) -> dict:
    return {"contact": {"email": email or f"{uuid.uuid4().hex[:8]}@example.com", "country": "GB"},
            "intent": {"type": "demo_request"}, **extra}


async def test_an_accepted_lead_is_normalized_tiered_and_published(api, engine) -> None:
    response = await api.post("/v1/leads", json={
        "contact": {"email": "Grace.Hopper@Example.COM", "phone": "020 7946 0958", "country": "uk"},
        "company": {"name": "Navy"}, "intent": {"type": "demo_request"},
    })
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "accepted"
    [event] = await stored_events(engine, "intake", body["lead_id"])
    assert event.type == "lead.received" and event.subject == body["lead_id"]
    data = event.data
    assert data["source"] == "webform" and data["tier"] == "A"
    assert data["contact"]["email"] == "grace.hopper@example.com"
    assert data["contact"]["phone"] == "+442079460958" and data["contact"]["country"] == "GB"
    assert data["contactable"] is True and data["missing_fields"] == []


async def test_repeats_are_duplicates_by_key_external_id_or_identity(api, engine) -> None:
    first = await api.post("/v1/leads", json=lead_body(), headers={"Idempotency-Key": "k-1"})
    again = await api.post("/v1/leads", json=lead_body(), headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == {"lead_id": first.json()["lead_id"], "status": "duplicate"}

    ext = await api.post("/v1/leads", json=lead_body(external_id="crm-42"))
    ext_again = await api.post("/v1/leads", json=lead_body(external_id="crm-42"))
    assert ext_again.json() == {"lead_id": ext.json()["lead_id"], "status": "duplicate"}

    email = f"{uuid.uuid4().hex[:8]}@example.com"
    person = await api.post("/v1/leads", json=lead_body(email))
    same_person = await api.post("/v1/leads", json=lead_body(email.upper()))
    assert same_person.status_code == 200 and same_person.json()["lead_id"] == person.json()["lead_id"]
    events = await stored_events(engine, "intake", person.json()["lead_id"])
    assert [e.type for e in events] == ["lead.received", "lead.merged"]
    assert events[1].data["match_on"] == "email"


async def test_a_record_re_sent_by_its_external_id_with_news_keeps_them_on_the_lead(api, engine) -> None:
    """A CRM re-sends its record (same external_id) with a new email and phone: the answer is the
    same lead, and what the repeat says is kept on its stream (lead.merged), not dropped; the
    same record re-sent unchanged adds nothing."""
    crm_id, email = f"crm-{uuid.uuid4().hex[:6]}", f"{uuid.uuid4().hex[:8]}@example.com"
    lead_id = (await api.post("/v1/leads", json=lead_body(email, external_id=crm_id))).json()["lead_id"]
    unchanged = await api.post("/v1/leads", json=lead_body(email, external_id=crm_id))
    assert unchanged.json() == {"lead_id": lead_id, "status": "duplicate"}
    assert [e.type for e in await stored_events(engine, "intake", lead_id)] == ["lead.received"]

    moved = lead_body(f"new-{email}", external_id=crm_id)
    moved["contact"]["phone"] = "+44 20 7946 0958"
    again = await api.post("/v1/leads", json=moved)
    assert again.json() == {"lead_id": lead_id, "status": "duplicate"}
    events = await stored_events(engine, "intake", lead_id)
    assert [e.type for e in events] == ["lead.received", "lead.merged"]
    assert events[1].data["match_on"] == "external_id"
    kept = events[1].data["duplicate_submission"]["contact"]
    assert (kept["email"], kept["phone"]) == (f"new-{email}", "+442079460958")


async def test_only_leads_without_a_usable_email_or_phone_are_refused_naming_the_fields(api) -> None:
    response = await api.post("/v1/leads", json={"contact": {"email": "nope", "phone": "12"}, "intent": {}})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"contact", "contact.email", "contact.phone"} <= fields
    for body in (b"[1, 2]", b"not json", b'"a string"'):
        refused = await api.post("/v1/leads", content=body, headers={"Content-Type": "application/json"})
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "(body)"
    # A batch posted to the single-lead endpoint: the answer says where it goes.
    batch = await api.post("/v1/leads", json={"leads": [{"contact": {"email": "a@example.com"}}]})
    assert batch.status_code == 422
    assert "POST /v1/leads:batch" in {e["field"]: e["message"] for e in batch.json()["errors"]}["leads"]


async def test_a_body_in_its_declared_charset_is_read_in_it(api, engine) -> None:
    """Older form tools post ISO-8859-1 and say so: the lead is read, not refused as 'not JSON'."""
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    body = json.dumps({"contact": {"first_name": "J\u00fcrgen", "email": email}}, ensure_ascii=False).encode("iso-8859-1")
    response = await api.post("/v1/leads", content=body,
                              headers={"Content-Type": "application/json; charset=ISO-8859-1"})
    assert response.status_code == 201, response.text
    [event] = await stored_events(engine, "intake", response.json()["lead_id"])
    assert event.data["contact"]["first_name"] == "J\u00fcrgen"
    unknown = await api.post("/v1/leads", content=body, headers={"Content-Type": "application/json; charset=x-nope"})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "(body)"


async def test_values_that_cannot_be_normalized_are_kept_and_named_not_refused(api, engine) -> None:
    response = await api.post("/v1/leads", json={
        "contact": {"email": f"{uuid.uuid4().hex[:8]}@example.com", "phone": "n/a", "country": "Deutschland",
                    "language": "en-us", "linkedin": "in/ada"},
        "company": {"name": "Acme", "size": 250, "country": None},
        "intent": {"type": "Demo Request"}, "score": "high", "utm_source": "google", "source": "typeform",
        "submitted_at": "2026-11-17 08:00:00",
    })
    assert response.status_code == 201, response.text
    body = response.json()
    assert {w["field"] for w in body["warnings"]} == {"contact.phone", "score", "submitted_at"}
    [event] = await stored_events(engine, "intake", body["lead_id"])
    data = event.data
    assert data["source"] == "webform"  # from the key; the body's source is kept as an attribute
    assert data["tier"] == "A" and data["intent"]["type"] == "demo_request"
    assert data["contact"]["phone"] == "n/a" and data["contact"]["country"] == "DE"
    assert data["contact"]["language"] == "en-US"
    assert data["company"]["size_band"] == "201-500" and data["company"]["employees"] == 250
    assert data["attributes"] == {"contact": {"linkedin": "in/ada"}, "utm_source": "google",
                                  "source": "typeform", "score": "high"}
    assert {q["field"] for q in data["data_quality"]} == {"contact.phone", "score", "submitted_at"}
    assert "contact.phone" in data["missing_fields"]


async def test_an_integer_too_long_for_python_is_kept_as_sent_not_a_lost_lead(api, engine) -> None:
    """Past 4,300 digits Python refuses to read an integer: the whole body failed, a 500 (and one
    such item failed a whole batch)."""
    digits = "9" * 5000

    def raw(lead: dict) -> str:  # the score as a bare JSON number of 5,000 digits
        return json.dumps({**lead, "score": "DIGITS"}).replace('"DIGITS"', digits)

    response = await api.post("/v1/leads", content=raw(lead_body()), headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    assert [w["field"] for w in response.json()["warnings"]] == ["score"]
    [event] = await stored_events(engine, "intake", response.json()["lead_id"])
    assert event.data["attributes"]["score"] == digits
    batch = f'{{"leads": [{raw(lead_body())}, {json.dumps(lead_body())}]}}'
    response = await api.post("/v1/leads:batch", content=batch, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]


async def test_text_postgres_cannot_store_is_cleaned_and_the_answer_says_where(api, engine) -> None:
    """A NUL or a lone surrogate (valid JSON escapes) cannot be stored as sent: the lead is taken
    with the text cleaned, and the 201's warnings and the event's data quality name each field
    changed, so the sender learns that its value was not kept verbatim."""
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    # JSON escapes as a sender writes them (json.dumps would refuse the lone surrogate).
    raw = ('{"contact": {"email": "EMAIL", "first_name": "A\\u0000da", "last_name": "\\ud800"},'
           ' "x\\u0000y": "v\\u0000"}').replace("EMAIL", email)
    response = await api.post("/v1/leads", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    warned = [(w["field"], w["message"]) for w in response.json()["warnings"]]
    assert warned == [("contact.first_name", "NUL characters removed"),
                      ("contact.last_name", "characters that are not valid Unicode (lone surrogates) replaced with '?'"),
                      ("xy", "field name: NUL characters removed"), ("xy", "NUL characters removed")]
    [event] = await stored_events(engine, "intake", response.json()["lead_id"])
    assert event.data["contact"]["first_name"] == "Ada" and event.data["contact"]["last_name"] == "?"
    assert event.data["attributes"] == {"xy": "v"}
    assert [(q["field"], q["value"]) for q in event.data["data_quality"]] == [
        ("contact.first_name", "Ada"), ("contact.last_name", "?"), ("xy", None), ("xy", "v")]
    assert not {"contact.first_name", "contact.last_name"} & set(event.data["missing_fields"])


async def test_a_colleague_on_the_same_switchboard_is_a_lead_of_their_own(api, engine) -> None:
    switchboard = "+44 20 7946 0000"
    ada = await api.post("/v1/leads", json={
        "contact": {"email": f"ada-{uuid.uuid4().hex[:6]}@acme.example", "first_name": "Ada", "phone": switchboard},
        "intent": {"type": "demo_request"}})
    bob = await api.post("/v1/leads", json={
        "contact": {"email": f"bob-{uuid.uuid4().hex[:6]}@acme.example", "first_name": "Bob", "phone": switchboard},
        "intent": {"type": "demo_request"}})
    assert ada.status_code == 201 and bob.status_code == 201
    assert ada.json()["lead_id"] != bob.json()["lead_id"]
    ada_again = await api.post("/v1/leads", json={"contact": {"first_name": "ada", "phone": switchboard}})
    assert ada_again.status_code == 200 and ada_again.json()["lead_id"] == ada.json()["lead_id"]


async def test_keys_are_required_and_roles_enforced(api) -> None:
    assert (await api.post("/v1/leads", json=lead_body(), headers={"Authorization": ""})).status_code == 401
    forged = await api.post("/v1/leads", json=lead_body(), headers={"Authorization": "Bearer lsk_abc_def"})
    assert forged.status_code == 401
    assert (await api.get("/v1/config")).status_code == 403
    shown = await api.get("/v1/config", headers={"Authorization": f"Bearer {api.admin_key}"})
    assert shown.status_code == 200 and shown.json()["version"] == 1


async def test_bodies_over_64_kib_are_refused(api) -> None:
    body = lead_body(attributes={"blob": "x" * 70_000})
    response = await api.post("/v1/leads", json=body)
    assert response.status_code == 413 and response.json()["status"] == 413


async def test_a_crm_syncing_a_lead_s_touches_in_parallel_gets_every_one_recorded(api, engine) -> None:
    """40 touches of one lead at once (a webhook-driven CRM): each lost the race on the lead's
    stream to the others, five retries over, and 16 of 40 got a plain-text 500."""
    lead_id = (await api.post("/v1/leads", json=lead_body())).json()["lead_id"]
    touches = [{"type": "email", "actor": "alice", "external_id": f"sync-{i}"} for i in range(40)]
    answers = await asyncio.gather(*(api.post(f"/v1/leads/{lead_id}/activities", json=t) for t in touches))
    assert [r.status_code for r in answers] == [202] * 40, {r.status_code: r.text for r in answers}
    recorded = [e for e in await stored_events(engine, "intake", lead_id) if e.type == "activity.recorded"]
    assert len(recorded) == 40 and len({e.data["activity_id"] for e in recorded}) == 40


async def test_activities(api, engine) -> None:
    lead_id = (await api.post("/v1/leads", json=lead_body())).json()["lead_id"]
    call = {"type": "call", "actor": "alice", "external_id": "crm-call-1", "outcome": "connected"}
    first = await api.post(f"/v1/leads/{lead_id}/activities", json=call)
    again = await api.post(f"/v1/leads/{lead_id}/activities", json=call)
    assert first.status_code == 202 and again.json() == first.json()
    events = await stored_events(engine, "intake", lead_id)
    assert [e.type for e in events] == ["lead.received", "activity.recorded"]  # the repeat emitted nothing
    # A CRM that retries with an Idempotency-Key header instead of an id in the body.
    email = {"type": "email", "actor": "alice"}
    sent = [await api.post(f"/v1/leads/{lead_id}/activities", json=email, headers={"Idempotency-Key": "mail-7"})
            for _ in range(2)]
    assert [r.status_code for r in sent] == [202, 202] and sent[0].json() == sent[1].json()
    assert [e.type for e in await stored_events(engine, "intake", lead_id)].count("activity.recorded") == 2

    unknown = await api.post(f"/v1/leads/{uuid.uuid4()}/activities", json=call)
    assert unknown.status_code == 404
    no_reason = await api.post(f"/v1/leads/{lead_id}/activities",
                               json={"type": "disposition", "disposition": {"status": "disqualified"}})
    assert no_reason.status_code == 422
    assert no_reason.json()["errors"][0]["field"] == "disposition.reason"
    # A reason not in the configured list names that field; the picklist's label of a configured
    # one is recorded in the configured spelling.
    bored = await api.post(f"/v1/leads/{lead_id}/activities",
                           json={"type": "disposition", "disposition": {"status": "disqualified", "reason": "bored"}})
    assert bored.status_code == 422 and [e["field"] for e in bored.json()["errors"]] == ["disposition.reason"]
    labelled = await api.post(f"/v1/leads/{lead_id}/activities", json={
        "type": "Disposition", "disposition": {"status": "Disqualified", "reason": "No Budget"}})
    assert labelled.status_code == 202, labelled.text
    [recorded] = [e.data for e in await stored_events(engine, "intake", lead_id)
                  if e.type == "activity.recorded" and e.data["type"] == "disposition"]
    assert recorded["disposition"] == {"status": "disqualified", "reason": "no_budget"}
    # A disposition with no `disposition` at all names that field too, not the whole body.
    none_given = await api.post(f"/v1/leads/{lead_id}/activities", json={"type": "disposition", "actor": "alice"})
    assert none_given.status_code == 422
    assert [e["field"] for e in none_given.json()["errors"]] == ["disposition"]
    future = await api.post(f"/v1/leads/{lead_id}/activities",
                            json={"type": "meeting", "occurred_at": "2030-01-01T10:00:00Z"})
    assert future.status_code == 422 and future.json()["errors"][0]["field"] == "occurred_at"
    ok = await api.post(f"/v1/leads/{lead_id}/activities",
                        json={"type": "disposition", "disposition": {"status": "disqualified", "reason": "student"}})
    assert ok.status_code == 202


async def test_an_activity_for_a_lead_known_by_the_crm_s_own_id_is_recorded_on_that_lead(api, engine) -> None:
    """A CRM knows the lead by its own record id (the lead's external_id). Kafka found the lead by
    it; HTTP answered 404 and the touch was lost. The 202 names the lead it went to."""
    crm_id = f"00Q{uuid.uuid4().hex[:12]}"
    lead_id = (await api.post("/v1/leads", json=lead_body(external_id=crm_id))).json()["lead_id"]
    call = {"type": "call", "actor": "alice", "outcome": "connected", "external_id": "00T-1"}
    by_crm_id = await api.post(f"/v1/leads/{crm_id}/activities", json=call)
    assert by_crm_id.status_code == 202 and by_crm_id.json()["lead_id"] == lead_id
    again = await api.post(f"/v1/leads/{lead_id}/activities", json=call)  # the same touch by the lead id
    assert again.json()["activity_id"] == by_crm_id.json()["activity_id"]
    events = await stored_events(engine, "intake", lead_id)
    assert [e.type for e in events] == ["lead.received", "activity.recorded"]
    assert (await api.post(f"/v1/leads/00Q-nobody-{uuid.uuid4().hex[:6]}/activities", json=call)).status_code == 404


async def test_an_activity_by_the_external_id_of_a_merged_repeat_goes_to_the_surviving_lead(api, engine) -> None:
    """The same person's second form fill is merged into the first lead; a CRM that made a
    record of the second fill posts touches with that record's id. They answered 404 and were
    lost; they belong to the lead the fill was merged into (in the sender's own source only)."""
    first_id, second_id = f"00Q{uuid.uuid4().hex[:12]}", f"00Q{uuid.uuid4().hex[:12]}"
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    lead_id = (await api.post("/v1/leads", json=lead_body(email, external_id=first_id))).json()["lead_id"]
    repeat = await api.post("/v1/leads", json=lead_body(email, external_id=second_id))
    assert repeat.status_code == 200 and repeat.json()["lead_id"] == lead_id
    call = {"type": "call", "actor": "alice", "outcome": "connected", "external_id": "00T-2"}
    touch = await api.post(f"/v1/leads/{second_id}/activities", json=call)
    assert touch.status_code == 202, touch.text
    assert touch.json()["lead_id"] == lead_id
    events = await stored_events(engine, "intake", lead_id)
    assert [e.type for e in events] == ["lead.received", "lead.merged", "activity.recorded"]
    async with engine.begin() as conn:
        chat_key = await create_key(conn, "chat", "source")
    other_source = await api.post(f"/v1/leads/{second_id}/activities", json=call,
                                  headers={"Authorization": f"Bearer {chat_key}"})
    assert other_source.status_code == 404


async def test_an_activity_with_fields_of_the_crm_s_own_is_recorded_with_them(api, engine) -> None:
    """CRMs send more than the contract names (a call's duration, their own ids). Once, any
    unknown field refused the touch with 422: the call was lost and the SLA breached for it."""
    lead_id = (await api.post("/v1/leads", json=lead_body())).json()["lead_id"]
    call = {"type": "call", "actor": "alice", "outcome": "connected", "duration_seconds": 312,
            "crm": {"id": "00T5g00000abc", "owner": "alice@corp"}, "outcom": "typo",
            "disposition": None}
    response = await api.post(f"/v1/leads/{lead_id}/activities", json=call)
    assert response.status_code == 202, response.text
    assert {w["field"] for w in response.json()["warnings"]} == {"duration_seconds", "crm", "outcom"}
    closed = await api.post(f"/v1/leads/{lead_id}/activities", json={
        "type": "disposition", "disposition": {"status": "disqualified", "reason": "student", "note": "gap year"}})
    assert closed.status_code == 202 and closed.json()["warnings"][0]["field"] == "disposition.note"
    # A CRM's local timestamp is read in the source's zone (UTC here); one nobody can read is
    # kept and the touch dated when intake accepted it. Both used to refuse the touch with 422.
    local = await api.post(f"/v1/leads/{lead_id}/activities", json={"type": "email", "occurred_at": "2026-11-17 08:30"})
    unread = await api.post(f"/v1/leads/{lead_id}/activities", json={"type": "note", "occurred_at": "after lunch"})
    assert [r.status_code for r in (local, unread)] == [202, 202]
    assert [w["field"] for w in local.json()["warnings"] + unread.json()["warnings"]] == ["occurred_at"] * 2
    recorded = [e.data for e in await stored_events(engine, "intake", lead_id) if e.type == "activity.recorded"]
    assert recorded[2]["occurred_at"] == "2026-11-17T08:30:00Z"
    assert recorded[3]["occurred_at"] == "2026-11-17T09:00:00Z" and recorded[3]["attributes"] == {
        "occurred_at": "after lunch"}
    assert recorded[0]["outcome"] == "connected" and recorded[0]["attributes"] == {
        "duration_seconds": 312, "crm": {"id": "00T5g00000abc", "owner": "alice@corp"}, "outcom": "typo"}
    assert recorded[1]["disposition"] == {"status": "disqualified", "reason": "student"}
    assert recorded[1]["attributes"] == {"disposition": {"note": "gap year"}}


async def test_an_admin_key_submits_for_the_source_its_body_names(api, engine) -> None:
    """A source key is bound to its source; the admin key (the one `leadsla dev` prints, or an
    integration posting for several sources) submits for the body's `source`. Once, every such
    lead counted as the key's name ("ops"), so no tier rule, route or SLA policy by source matched."""
    admin = {"Authorization": f"Bearer {api.admin_key}"}
    named = await api.post("/v1/leads", headers=admin, json=lead_body(source="chat"))
    unnamed = await api.post("/v1/leads", headers=admin, json=lead_body(source="Website "))
    silent = await api.post("/v1/leads", headers=admin, json=lead_body())
    sources = [(await stored_events(engine, "intake", r.json()["lead_id"]))[0].data["source"]
               for r in (named, unnamed, silent)]
    assert sources == ["chat", "Website", "ops"]
    keyed = await api.post("/v1/leads", json=lead_body(source="chat"))  # a source key stays its own source
    assert (await stored_events(engine, "intake", keyed.json()["lead_id"]))[0].data["source"] == "webform"
    batch = await api.post("/v1/leads:batch", headers=admin, json={"leads": [lead_body(source="chat"), lead_body()]})
    assert [(await stored_events(engine, "intake", r["lead_id"]))[0].data["source"]
            for r in batch.json()["results"]] == ["chat", "ops"]
    # Metric labels stay bounded: a source the configuration does not name counts as the key.
    metrics = (await api.get("/metrics")).text
    assert 'leadsla_leads_received_total{source="chat",tier="A"}' in metrics and "Website" not in metrics


async def test_health_and_metrics_without_personal_data(api) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    await api.post("/v1/leads", json=lead_body(email))
    assert (await api.get("/healthz")).status_code == 200
    ready = await api.get("/readyz")
    assert ready.status_code == 200, ready.text
    metrics = (await api.get("/metrics")).text
    assert 'leadsla_leads_received_total{source="webform",tier="A"}' in metrics
    assert email not in metrics and "@" not in metrics


@pytest.mark.parametrize("submitted_at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+01:00"])
async def test_a_submitted_at_with_no_instant_in_utc_is_kept_and_named_not_a_lost_lead(
        api, engine, submitted_at) -> None:
    """Valid ISO 8601 whose offset takes it outside the years 1 to 9999 in UTC: the lead answered
    500 and was lost; like any timestamp that cannot be read, it is kept as sent and named."""
    response = await api.post("/v1/leads", json={
        "contact": {"email": f"{uuid.uuid4().hex[:8]}@example.com"}, "submitted_at": submitted_at})
    assert response.status_code == 201, response.text
    assert [w["field"] for w in response.json()["warnings"]] == ["submitted_at"]
    [event] = await stored_events(engine, "intake", response.json()["lead_id"])
    assert event.data["submitted_at"] is None and event.data["attributes"]["submitted_at"] == submitted_at


@pytest.mark.parametrize("occurred_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00"])
async def test_an_occurred_at_with_no_instant_in_utc_is_kept_like_any_unreadable_one(api, engine, occurred_at) -> None:
    """Valid ISO 8601 whose offset takes it outside the years 1 to 9999 in UTC: the touch answered
    500 and was lost; it is kept under attributes and dated when intake accepted it."""
    lead_id = (await api.post("/v1/leads", json=lead_body())).json()["lead_id"]
    response = await api.post(f"/v1/leads/{lead_id}/activities",
                              json={"type": "call", "actor": "alice", "occurred_at": occurred_at})
    assert response.status_code == 202, response.text
    assert [w["field"] for w in response.json()["warnings"]] == ["occurred_at"]
    [recorded] = [e.data for e in await stored_events(engine, "intake", lead_id) if e.type == "activity.recorded"]
    assert recorded["attributes"] == {"occurred_at": occurred_at}


async def test_a_form_encoded_post_is_read_as_the_same_lead(api, engine) -> None:
    """An HTML form posting straight to intake (or a form tool's 'send as form data' webhook)
    was refused as 'not JSON'; its fields are read as a JSON body's would be, PHP-style
    brackets as nested objects and repeated keys as lists."""
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    form = (f"contact[email]={email.upper()}&contact[country]=uk&company=Navy&intent=Demo+Request"
            "&interests[]=ledger&interests[]=payroll&utm_source=google")
    response = await api.post("/v1/leads", content=form.encode(),
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 201, response.text
    assert response.json()["tier"] == "A"
    [event] = await stored_events(engine, "intake", response.json()["lead_id"])
    assert (event.data["contact"]["email"], event.data["contact"]["country"]) == (email, "GB")
    assert event.data["company"]["name"] == "Navy"
    assert event.data["attributes"] == {"interests": ["ledger", "payroll"], "utm_source": "google"}
    # Unbounce and others send the fields as JSON in one `data.json` field.
    wrapped = await api.post("/v1/leads", content=b"data.json=" + json.dumps(
        {"email": [f"x{email}"], "page_name": ["Demo"]}).encode().replace(b"&", b"%26"),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert wrapped.status_code == 201, wrapped.text
    # As Unbounce really posts it: the page's fields beside it (refused, found by an acceptance sweep).
    from urllib.parse import urlencode
    page = await api.post("/v1/leads", content=urlencode({
        "page_id": "abc", "page_name": "LP", "page_url": "https://lp.example", "variant": "a",
        "data.json": json.dumps({"email": [f"y{email}"], "phone_number": ["+1 415 555 0141"]}),
        "data.xml": "<x/>"}).encode(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert page.status_code == 201, page.text
    [event] = await stored_events(engine, "intake", page.json()["lead_id"])
    assert (event.data["contact"]["email"], event.data["contact"]["phone"]) == (f"y{email}", "+14155550141")
    assert event.data["attributes"]["page_id"] == "abc" and "data.xml" not in event.data["attributes"]
    refused = await api.post("/v1/leads", content=b"first_name=Ada",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "contact"
