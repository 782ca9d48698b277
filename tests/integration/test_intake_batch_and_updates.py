"""Batch submissions, rate limits, PATCH, intent upgrades and opt-outs, through the real app,
database and outbox."""
from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client import REGISTRY

from services.intake.bootstrap import bootstrap
from services.intake.domain import updated_record
from shared.auth import create_key
from shared.http import create_app
from tests.support import stored_events

CONFIG = """
tiers:
  default: C
  rules:
    - {tier: A, when: {intent: [demo_request]}}
    - {tier: B, when: {intent: [trial]}}
dedupe: {window: 30d, match_on: [email, phone]}
intake:
  sources:
    throttled: {rate_limit: {rate: 0.01, burst: 2}}
  suppression: {domains: [donotcall.example]}
"""


@pytest.fixture
async def app(make_ctx):
    ctx = make_ctx("intake", CONFIG)
    spec = bootstrap(ctx)
    return create_app(ctx, spec.routers, spec.on_invalid_request)


async def client_for(app, engine, source: str) -> httpx.AsyncClient:
    async with engine.begin() as conn:
        key = await create_key(conn, source, "source")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake")
    client.headers["Authorization"] = f"Bearer {key}"
    return client


@pytest.fixture
async def api(app, engine):
    async with await client_for(app, engine, f"webform-{uuid.uuid4().hex[:6]}") as client:
        yield client


def email() -> str:
    return f"{uuid.uuid4().hex[:10]}@example.com"


def rejected(source: str, reason: str) -> float:
    return REGISTRY.get_sample_value("leadsla_leads_rejected_total", {"source": source, "reason": reason}) or 0


async def test_a_batch_gives_one_result_per_lead_in_order(api, engine) -> None:
    known = email()
    first = await api.post("/v1/leads", json={"contact": {"email": known}})
    leads = [
        {"contact": {"email": email()}, "intent": {"type": "Demo Request"}},
        {"contact": {"first_name": "no way to reach"}},
        {"contact": {"email": known}},
        "not an object",
        {"contact": {"email": email(), "phone": "n/a"}, "external_id": "b-1"},
        {"contact": {"email": email()}, "external_id": "b-1"},  # the same lead again, inside the batch
    ]
    response = await api.post("/v1/leads:batch", json={"leads": leads})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["status"] for r in results] == ["accepted", "invalid", "duplicate", "invalid", "accepted", "duplicate"]
    assert results[1]["errors"][0]["field"] == "contact" and "lead_id" not in results[1]
    assert results[2]["lead_id"] == first.json()["lead_id"]
    assert results[4]["warnings"] == [{"field": "contact.phone", "message": results[4]["warnings"][0]["message"]}]
    assert results[5]["lead_id"] == results[4]["lead_id"]
    [event] = await stored_events(engine, "intake", results[0]["lead_id"])
    assert event.type == "lead.received" and event.data["tier"] == "A"


async def test_each_batch_item_is_idempotent_on_its_own(api) -> None:
    leads = [{"contact": {"email": email()}}, {"contact": {"email": email()}}]
    first = await api.post("/v1/leads:batch", json={"leads": leads}, headers={"Idempotency-Key": "batch-7"})
    again = await api.post("/v1/leads:batch", json={"leads": leads}, headers={"Idempotency-Key": "batch-7"})
    assert [r["status"] for r in first.json()["results"]] == ["accepted", "accepted"]
    assert [r["status"] for r in again.json()["results"]] == ["duplicate", "duplicate"]
    assert [r["lead_id"] for r in again.json()["results"]] == [r["lead_id"] for r in first.json()["results"]]


async def test_a_batch_sent_again_in_part_under_its_key_matches_each_lead_with_itself(api) -> None:
    """A sender resends, under the same Idempotency-Key, only what failed (corrected) or a part in
    another order: each lead is matched with itself, never with the lead first sent at its place."""
    kept, fixed, other = email(), email(), email()
    key = f"batch-{uuid.uuid4().hex[:6]}"
    first = (await api.post("/v1/leads:batch", json={"leads": [{"contact": {"email": kept}},
                                                              {"contact": {"email": "not an address"}},
                                                              {"contact": {"email": other}}]},
                            headers={"Idempotency-Key": key})).json()["results"]
    assert [r["status"] for r in first] == ["accepted", "invalid", "accepted"]
    again = (await api.post("/v1/leads:batch", json={"leads": [{"contact": {"email": fixed}},
                                                              {"contact": {"email": other}}]},
                            headers={"Idempotency-Key": key})).json()["results"]
    assert again[0]["status"] == "accepted" and again[0]["lead_id"] not in (first[0]["lead_id"], first[2]["lead_id"])
    assert (again[1]["status"], again[1]["lead_id"]) == ("duplicate", first[2]["lead_id"])


async def test_batches_are_bounded_in_count_and_size(api) -> None:
    too_many = await api.post("/v1/leads:batch", json={"leads": [{"contact": {"email": "a@b.co"}}] * 501})
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["field"] == "leads"
    not_a_list = await api.post("/v1/leads:batch", json={"leads": {"contact": {}}})
    assert not_a_list.status_code == 422
    big = [{"contact": {"email": email()}, "attributes": {"notes": "x" * 9_000}} for _ in range(400)]  # ~3.6 MB
    assert (await api.post("/v1/leads:batch", json={"leads": big})).status_code == 200
    huge = [{"contact": {"email": email()}, "attributes": {"notes": "x" * 12_000}} for _ in range(450)]  # ~5.4 MB
    assert (await api.post("/v1/leads:batch", json={"leads": huge})).status_code == 413


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(app, engine) -> None:
    async with await client_for(app, engine, "throttled") as client:
        before = rejected("throttled", "rate_limited")
        statuses = [(await client.post("/v1/leads", json={"contact": {"email": email()}})).status_code
                    for _ in range(3)]
        assert statuses == [201, 201, 429]
        limited = await client.post("/v1/leads", json={"contact": {"email": email()}})
        assert limited.status_code == 429
        assert limited.headers["content-type"] == "application/problem+json"
        assert int(limited.headers["Retry-After"]) >= 1
        assert [e["field"] for e in limited.json()["errors"]] == ["Authorization"]  # the key, as field
        assert rejected("throttled", "rate_limited") == before + 2


async def test_unauthorized_and_oversized_submissions_are_counted(api) -> None:
    unauthorized, too_large = rejected("unknown", "unauthorized"), rejected("unknown", "too_large")
    assert (await api.post("/v1/leads", json={}, headers={"Authorization": "Bearer lsk_x_y"})).status_code == 401
    big = {"contact": {"email": email()}, "attributes": {"blob": "x" * 70_000}}
    assert (await api.post("/v1/leads", json=big)).status_code == 413
    assert rejected("unknown", "unauthorized") == unauthorized + 1
    assert rejected("unknown", "too_large") == too_large + 1


async def test_the_openapi_describes_the_wire(api) -> None:
    spec = (await api.get("/openapi.json")).json()
    post = spec["paths"]["/v1/leads"]["post"]
    assert {"200", "201", "400", "401", "403", "405", "413", "422", "429"} <= set(post["responses"])
    assert "application/problem+json" in post["responses"]["429"]["content"]
    assert "Retry-After" in post["responses"]["429"]["headers"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"post"} <= set(spec["paths"]["/v1/leads:batch"]) and "patch" in spec["paths"]["/v1/leads/{lead_id}"]
    wrong_method = await api.get("/v1/leads:batch")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]


async def test_a_patch_completes_fields_and_emits_lead_updated(api, engine) -> None:
    lead_id = (await api.post("/v1/leads", json={"contact": {"email": email(), "phone": "n/a"}})).json()["lead_id"]
    response = await api.patch(f"/v1/leads/{lead_id}", json={
        "contact": {"phone": "+1 415 555 2671", "country": "United States"}, "company": {"name": "Acme"},
        "intent": {"type": "Free Trial"}, "crm_stage": "MQL"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tier"] == "B"
    assert body["changed"]["contact.phone"] == {"old": "n/a", "new": "+14155552671"}
    assert body["changed"]["contact.country"] == {"old": None, "new": "US"}
    events = await stored_events(engine, "intake", lead_id)
    assert [e.type for e in events] == ["lead.received", "lead.updated"]
    update = events[1].data
    assert update["tier"] == "B" and update["previous_tier"] == "C" and update["reason"] == "patched"
    assert update["changed"]["intent.type"] == {"old": "inquiry", "new": "trial"}
    assert update["changed"]["attributes.crm_stage"] == {"old": None, "new": "MQL"}

    unchanged = await api.patch(f"/v1/leads/{lead_id}", json={"company": {"name": "Acme"}})
    assert unchanged.json()["changed"] == {}
    assert len(await stored_events(engine, "intake", lead_id)) == 2
    assert (await api.patch(f"/v1/leads/{uuid.uuid4()}", json={"company": {"name": "X"}})).status_code == 404
    assert (await api.patch(f"/v1/leads/{lead_id}", content=b"[]")).status_code == 422


async def test_a_corrected_field_takes_its_derived_values_with_it(api, engine) -> None:
    # A company size of 250 read as 201-500 (employees 250), corrected to "1000+", has no exact
    # count and no upper bound: the old ones must go, or consumers folding lead.updated read a
    # company of 250 employees, at least 1000 and at most 500. Likewise a corrected phone's extension.
    lead_id = (await api.post("/v1/leads", json={
        "contact": {"email": email(), "phone": "+1 415 555 2671 ext. 123"}, "company": {"size": 250}})).json()["lead_id"]
    response = await api.patch(f"/v1/leads/{lead_id}", json={
        "company": {"size": "1000+"}, "contact": {"phone": "+1 415 555 2672"}})
    assert response.status_code == 200, response.text
    changed = response.json()["changed"]
    assert changed["company.size_band"] == {"old": "201-500", "new": "1000+"}
    assert changed["company.employees_min"] == {"old": 201, "new": 1000}
    assert changed["company.employees_max"] == {"old": 500, "new": None}
    assert changed["company.employees"] == {"old": 250, "new": None}
    assert changed["contact.phone_extension"] == {"old": "123", "new": None}
    received, update = await stored_events(engine, "intake", lead_id)
    record = updated_record(received.data, update.data)
    assert record["company"] == {**received.data["company"], "size": "1000+", "size_band": "1000+",
                                      "employees": None, "employees_min": 1000, "employees_max": None}
    assert record["contact"]["phone"] == "+14155552672" and record["contact"]["phone_extension"] is None


async def test_an_unreadable_correction_never_overwrites_a_usable_value(api) -> None:
    lead_id = (await api.post("/v1/leads", json={"contact": {"email": email(), "phone": "+14155552671"}})
               ).json()["lead_id"]
    response = await api.patch(f"/v1/leads/{lead_id}", json={"contact": {"phone": "call me maybe"}})
    assert response.json()["changed"] == {}
    assert response.json()["warnings"][0]["field"] == "contact.phone"


async def test_a_repeat_with_higher_intent_upgrades_the_lead(api, engine) -> None:
    person = email()
    first = await api.post("/v1/leads", json={"contact": {"email": person}, "intent": {"type": "ebook download"}})
    assert first.json()["tier"] == "C"
    demo = await api.post("/v1/leads", json={"contact": {"email": person}, "intent": {"type": "Demo Request"}})
    assert demo.status_code == 200
    assert demo.json() == {"lead_id": first.json()["lead_id"], "status": "duplicate", "upgraded": True, "tier": "A"}
    events = await stored_events(engine, "intake", first.json()["lead_id"])
    assert [e.type for e in events] == ["lead.received", "lead.merged", "lead.updated"]
    update = events[2].data
    assert update["reason"] == "upgraded" and update["tier"] == "A" and update["previous_tier"] == "C"
    # PATCH's shape: a change per dotted field (it was the whole intent object, old and new), and the tier.
    assert update["changed"] == {"intent.type": {"old": "content_download", "new": "demo_request"},
                                 "tier": {"old": "C", "new": "A"}}
    patched = await api.patch(f"/v1/leads/{first.json()['lead_id']}", json={"intent": {"type": "newsletter"}})
    assert patched.json()["changed"] == {"intent.type": {"old": "demo_request", "new": "newsletter"},
                                         "tier": {"old": "A", "new": "C"}}

    lower = await api.post("/v1/leads", json={"contact": {"email": person}, "intent": {"type": "newsletter"}})
    assert lower.json() == {"lead_id": first.json()["lead_id"], "status": "duplicate"}
    assert [e.type for e in await stored_events(engine, "intake", first.json()["lead_id"])][-1] == "lead.merged"


async def test_an_opt_out_makes_the_lead_not_contactable(api, engine) -> None:
    lead_id = (await api.post("/v1/leads", json={"contact": {"email": email()}})).json()["lead_id"]
    opt_out = {"type": "opt_out", "external_id": "crm-optout-1", "reason": "asked by email"}
    first = await api.post(f"/v1/leads/{lead_id}/activities", json=opt_out)
    again = await api.post(f"/v1/leads/{lead_id}/activities", json=opt_out)
    assert first.status_code == 202 and again.json() == first.json()
    events = await stored_events(engine, "intake", lead_id)
    assert [e.type for e in events] == ["lead.received", "activity.recorded", "lead.updated"]
    assert events[1].data["type"] == "opt_out" and events[1].data["reason"] == "asked by email"
    assert events[2].data["reason"] == "opted_out" and events[2].data["contactable"] is False


async def test_leads_on_the_suppression_list_are_accepted_but_not_contactable(api, engine) -> None:
    response = await api.post("/v1/leads", json={"contact": {"email": "ceo@donotcall.example"}})
    assert response.status_code == 201
    [event] = await stored_events(engine, "intake", response.json()["lead_id"])
    assert event.data["contactable"] is False and event.data["suppressed"] is True


async def test_concurrent_submissions_share_commits_without_mixing_up_answers(api, engine) -> None:
    import asyncio

    same = email()
    bodies = [{"contact": {"email": email()}} for _ in range(20)] + [{"contact": {"email": same}}] * 5
    responses = await asyncio.gather(*(api.post("/v1/leads", json=b) for b in bodies))
    assert [r.status_code for r in responses[:20]] == [201] * 20
    assert len({r.json()["lead_id"] for r in responses[:20]}) == 20
    repeated = [r.json() for r in responses[20:]]
    assert sorted(r["status"] for r in repeated) == ["accepted"] + ["duplicate"] * 4
    assert len({r["lead_id"] for r in repeated}) == 1
    for response in responses[:20]:  # every answer is backed by its own committed event
        [event] = await stored_events(engine, "intake", response.json()["lead_id"])
        assert event.type == "lead.received"


async def test_a_batch_dedupes_and_upgrades_like_single_posts(api, engine) -> None:
    known, repeated, switchboard = email(), email(), "+44 20 7946 0123"
    first = (await api.post("/v1/leads", json={"contact": {"email": known}, "intent": {"type": "newsletter"}})).json()
    leads = [
        {"contact": {"email": repeated, "phone": switchboard, "first_name": "Ada"}},
        {"contact": {"email": email(), "phone": switchboard, "first_name": "Bob"}},  # a colleague
        {"contact": {"email": repeated.upper()}, "intent": {"type": "Book a demo"}},  # Ada again, keener
        {"contact": {"email": known}, "intent": {"type": "Demo Request"}},  # the earlier lead, keener
    ]
    results = (await api.post("/v1/leads:batch", json={"leads": leads})).json()["results"]
    assert [r["status"] for r in results] == ["accepted", "accepted", "duplicate", "duplicate"]
    assert results[1]["lead_id"] != results[0]["lead_id"]
    assert results[2]["lead_id"] == results[0]["lead_id"] and results[2]["upgraded"] is True
    assert results[3] == {"index": 3, "lead_id": first["lead_id"], "status": "duplicate", "upgraded": True,
                          "tier": "A"}
    ada = [e.type for e in await stored_events(engine, "intake", results[0]["lead_id"])]
    assert ada == ["lead.received", "lead.merged", "lead.updated"]


async def test_a_source_key_patches_only_its_own_sources_leads(app, engine, api) -> None:
    """Any source key could PATCH any lead: rewrite another source's lead's contact, and read its
    old email in the answer's `changed`. Another source's key now gets 403 (nothing changes); the
    submitting source and admin keys still can."""
    mine = email()
    lead_id = (await api.post("/v1/leads", json={"contact": {"email": mine}})).json()["lead_id"]
    async with await client_for(app, engine, f"other-{uuid.uuid4().hex[:6]}") as other:
        refused = await other.patch(f"/v1/leads/{lead_id}", json={"contact": {"email": "attacker@evil.example"}})
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json" and mine not in refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["Authorization"]
    own = await api.patch(f"/v1/leads/{lead_id}", json={"company": {"name": "Acme"}})
    assert own.status_code == 200 and own.json()["changed"] == {"company.name": {"old": None, "new": "Acme"}}
    async with engine.begin() as conn:
        admin_key = await create_key(conn, f"ops-{uuid.uuid4().hex[:6]}", "admin")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake",
                                 headers={"Authorization": f"Bearer {admin_key}"}) as admin:
        fixed = await admin.patch(f"/v1/leads/{lead_id}", json={"company": {"name": "Acme GmbH"}})
    assert fixed.status_code == 200, fixed.text


async def test_a_patch_finds_the_lead_by_the_senders_own_id_as_activities_do(app, engine, api) -> None:
    """A CRM that knows only its record's id (the lead's external_id) could log touches by it but
    its PATCH got 404. A source key finds only its own source's leads by it."""
    external_id = f"crm-{uuid.uuid4().hex[:8]}"
    lead_id = (await api.post("/v1/leads", json={"contact": {"email": email()}, "external_id": external_id,
                                                 "intent": {"type": "ebook"}})).json()["lead_id"]
    patched = await api.patch(f"/v1/leads/{external_id}", json={"intent": {"type": "trial"}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["lead_id"] == lead_id and patched.json()["tier"] == "B"
    assert [e.type for e in await stored_events(engine, "intake", lead_id)] == ["lead.received", "lead.updated"]
    async with await client_for(app, engine, f"other-{uuid.uuid4().hex[:6]}") as other:
        assert (await other.patch(f"/v1/leads/{external_id}", json={"company": {"name": "X"}})).status_code == 404
