"""Intake's raw Kafka input on the real broker and Postgres: CloudEvents in binary and
structured mode, and activities that arrive before their lead."""
from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from services.intake.bootstrap import bootstrap
from services.intake.tables import leads, pending_activities
from shared.consumer import EventConsumer
from shared.db import deadletters
from shared.events import CloudEvent, deterministic_id
from shared.eventstore import EVENTS
from tests.support import create_topic, eventually, stored_events

CONFIG = """
tiers:
  default: C
  rules: [{tier: A, when: {intent: [demo_request]}}]
intake:
  activity_wait: 60s
  sources: {webform: {}, chat: {}}
"""


@pytest.fixture
async def intake(make_ctx, engine, kafka_bootstrap, clock):
    """Intake's two raw-topic handlers consuming fresh topics of this test, plus its loops."""
    ctx = make_ctx("intake", CONFIG)
    spec = bootstrap(ctx)
    submissions, activities = (await create_topic(kafka_bootstrap, 1), await create_topic(kafka_bootstrap, 1))
    stop = asyncio.Event()
    tasks = []
    for sub, topic in zip(spec.subscriptions, (submissions, activities), strict=True):
        consumer = EventConsumer(
            replace(sub, group=f"{sub.group}-{uuid.uuid4().hex[:6]}", topics=(topic,)),
            service="intake", bootstrap=kafka_bootstrap, engine=engine, relay_wakeup=ctx.relay_wakeup,
            clock=clock, projection=spec.projection)
        tasks.append(asyncio.create_task(consumer.run(stop)))
    tasks += [asyncio.create_task(loop(stop)) for loop in spec.loops]
    yield submissions, activities
    stop.set()
    await asyncio.gather(*tasks)


async def lead_with_external_id(engine, external_id: str) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(select(leads.c.lead_id).where(leads.c.external_id == external_id))


async def parked(engine, ref: str) -> int:
    async with engine.connect() as conn:
        rows = await conn.execute(select(pending_activities.c.id).where(pending_activities.c.lead_ref == ref))
        return len(rows.all())


async def test_an_activity_before_its_lead_waits_for_it(intake, engine, producer) -> None:
    submissions, activities = intake
    ref = f"crm-{uuid.uuid4().hex[:8]}"
    call = {"lead_id": ref, "type": "call", "external_id": f"{ref}-call", "outcome": "connected", "actor": "al",
            "duration_seconds": 95}  # a field of the CRM's own is kept, not a reason to refuse the touch
    await producer.send_and_wait(activities, json.dumps(call).encode(), key=ref.encode())
    await eventually(lambda: parked(engine, ref), what="the activity parked for its lead", timeout=120)

    lead = {"external_id": ref, "contact": {"email": f"{ref}@example.com"}, "intent": {"type": "Demo Request"}}
    await producer.send_and_wait(submissions, json.dumps(lead).encode())
    lead_id = await eventually(lambda: lead_with_external_id(engine, ref), what="the lead", timeout=120)
    events = await eventually(lambda: _events_when(engine, lead_id, 2), what="lead and activity events")
    assert [e.type for e in events] == ["lead.received", "activity.recorded"]
    assert events[1].data["type"] == "call" and events[1].data["outcome"] == "connected"
    assert events[1].data["attributes"] == {"duration_seconds": 95}
    assert await parked(engine, ref) == 0


async def test_a_touch_naming_its_lead_by_a_numeric_crm_id_is_recorded_on_that_lead(intake, engine, producer) -> None:
    """HubSpot numbers its records: `lead_id: 5101` (the lead's numeric external_id) and a numeric
    engagement id were dead-lettered ("an activity needs lead_id"), the touch lost."""
    submissions, activities = intake
    crm_id = int(uuid.uuid4().int % 10**12)
    lead = {"external_id": crm_id, "contact": {"email": f"{crm_id}@example.com"}}
    await producer.send_and_wait(submissions, json.dumps(lead).encode())
    lead_id = await eventually(lambda: lead_with_external_id(engine, str(crm_id)), what="the lead", timeout=120)
    touch = {"lead_id": crm_id, "type": "CALL", "external_id": crm_id + 1, "actor": 51234, "outcome": "Answered"}
    for _ in range(2):  # resent by the CRM: recorded once, by its numeric id
        await producer.send_and_wait(activities, json.dumps(touch).encode(), key=str(crm_id).encode())
    events = await eventually(lambda: _events_when(engine, lead_id, 2), what="the touch", timeout=120)
    assert events[1].data["actor"] == "51234" and events[1].data["outcome"] == "connected"
    await producer.send_and_wait(activities, json.dumps({**touch, "external_id": crm_id + 2}).encode(),
                                 key=str(crm_id).encode())
    events = await eventually(lambda: _events_when(engine, lead_id, 3), what="the next touch", timeout=120)
    assert [e.type for e in events] == ["lead.received", "activity.recorded", "activity.recorded"]
    assert events[2].data["activity_id"] != events[1].data["activity_id"]  # not the resend twice


async def test_a_structured_cloudevent_touch_keyed_by_its_lead_needs_no_subject(intake, engine, producer) -> None:
    """The contract keys records by lead_id: a structured CloudEvent without `subject` was dead-lettered
    ("an activity needs lead_id"), while the same body bare or in binary mode was recorded."""
    submissions, activities = intake
    ref = f"crm-{uuid.uuid4().hex[:8]}"
    await producer.send_and_wait(submissions, json.dumps({"external_id": ref, "contact": {"email": f"{ref}@x.com"}}).encode())
    lead_id = await eventually(lambda: lead_with_external_id(engine, ref), what="the lead", timeout=120)
    touch = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "crm/x", "type": "com.crm.activity",
             "data": {"type": "call", "actor": "al", "outcome": "connected"}}
    await producer.send_and_wait(activities, json.dumps(touch).encode(), key=lead_id.encode())
    events = await eventually(lambda: _events_when(engine, lead_id, 2), what="the touch", timeout=120)
    assert events[1].type == "activity.recorded" and events[1].data["outcome"] == "connected"


async def test_an_activity_by_external_id_goes_to_its_own_source_s_lead(intake, engine, producer) -> None:
    """External ids are unique per source only: a CRM's touch that names its source (the
    CloudEvent's `source`) lands on that source's lead, never on another source's lead with the
    same id; while only the other one exists, it waits for its own."""
    submissions, activities = intake
    ref = f"crm-{uuid.uuid4().hex[:8]}"

    async def submit(source: str) -> str:
        lead = {"source": source, "external_id": ref, "contact": {"email": f"{ref}@{source}.example"}}
        await producer.send_and_wait(submissions, json.dumps(lead).encode())

        async def of_source() -> str | None:
            async with engine.connect() as conn:
                return await conn.scalar(select(leads.c.lead_id).where(leads.c.external_id == ref,
                                                                       leads.c.source == source))

        return await eventually(of_source, what=f"the {source} lead", timeout=120)

    chat_lead = await submit("chat")
    touch = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "webform", "type": "crm.activity",
             "subject": ref, "data": {"type": "call", "outcome": "connected", "actor": "al"}}
    await producer.send_and_wait(activities, json.dumps(touch).encode(), key=ref.encode())
    await eventually(lambda: parked(engine, ref), what="the touch waiting for the webform lead", timeout=120)
    webform_lead = await submit("webform")
    events = await eventually(lambda: _events_when(engine, webform_lead, 2), what="the touch", timeout=120)
    assert [e.type for e in events] == ["lead.received", "activity.recorded"]
    assert [e.type for e in await stored_events(engine, "intake", chat_lead)] == ["lead.received"]
    assert await parked(engine, ref) == 0


async def test_an_activity_for_a_merged_repeat_s_external_id_goes_to_the_surviving_lead(
        intake, engine, producer) -> None:
    """A CRM made its record from the person's second form fill, which intake merged into the
    first lead: a touch held for that record's id is released to the lead when the merge
    happens, and a later one finds the lead at once. Both were held, then dead-lettered."""
    submissions, activities = intake
    first, second = f"crm-{uuid.uuid4().hex[:8]}", f"crm-{uuid.uuid4().hex[:8]}"
    email = f"{first}@example.com"

    def touch(external_id: str) -> bytes:
        return json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "webform",
                           "type": "crm.activity", "subject": second,
                           "data": {"type": "call", "outcome": "connected", "external_id": external_id}}).encode()

    await producer.send_and_wait(submissions, json.dumps({"source": "webform", "external_id": first,
                                                          "contact": {"email": email}}).encode())
    lead_id = await eventually(lambda: lead_with_external_id(engine, first), what="the first lead", timeout=120)
    await producer.send_and_wait(activities, touch("early"), key=second.encode())
    await eventually(lambda: parked(engine, second), what="the touch waiting for its lead", timeout=120)
    await producer.send_and_wait(submissions, json.dumps({"source": "webform", "external_id": second,
                                                          "contact": {"email": email.upper()}}).encode())
    events = await eventually(lambda: _events_when(engine, lead_id, 3), what="the merge and the touch", timeout=120)
    assert [e.type for e in events] == ["lead.received", "lead.merged", "activity.recorded"]
    assert await parked(engine, second) == 0
    await producer.send_and_wait(activities, touch("late"), key=second.encode())
    events = await eventually(lambda: _events_when(engine, lead_id, 4), what="the later touch", timeout=120)
    assert events[3].type == "activity.recorded" and await parked(engine, second) == 0
    assert await lead_with_external_id(engine, second) is None


async def test_an_activity_whose_lead_never_comes_is_dead_lettered_after_the_wait(
    intake, engine, producer, clock
) -> None:
    _, activities = intake
    ref = f"ghost-{uuid.uuid4().hex[:8]}"
    value = json.dumps({"lead_id": ref, "type": "email"}).encode()
    await producer.send_and_wait(activities, value, key=ref.encode())
    await eventually(lambda: parked(engine, ref), what="the activity parked", timeout=120)
    clock.advance(timedelta(seconds=61))

    async def letter() -> CloudEvent | None:
        async with engine.connect() as conn:
            rows = await conn.execute(select(EVENTS["intake"].c.payload).where(
                EVENTS["intake"].c.key == ref, EVENTS["intake"].c.event_type == "deadletter"))
            found = [CloudEvent.from_bytes(r.payload) for r in rows]
        return found[0] if found else None

    dead = await eventually(letter, what="the dead letter", timeout=120)
    assert dead.data["topic"] == activities and base64.b64decode(dead.data["original_bytes_b64"]) == value
    assert dead.data["error"].startswith("unknown_lead")
    assert await parked(engine, ref) == 0


async def test_a_held_activity_with_a_nul_or_a_lone_surrogate_is_released_or_dead_lettered(
        intake, engine, producer, clock) -> None:
    """Found by fuzzing: text Postgres cannot store (NUL, a lone surrogate; both valid JSON
    escapes) in a touch that waits for its lead. It is held, then recorded when the lead comes
    or dead-lettered with its bytes when the wait runs out: never a handler error or a stuck
    partition."""
    submissions, activities = intake
    comes, never = f"crm-{uuid.uuid4().hex[:8]}", f"ghost-{uuid.uuid4().hex[:8]}"
    sent = {}
    for ref in (comes, never):
        # The lead's id too, as the CRM sent it on the lead (whose external id is read cleaned).
        touch = {"lead_id": ref + "\x00", "type": "call", "note": "a\x00b \ud800 c", "crm": {"k\x00": "\udfff"}}
        sent[ref] = json.dumps(touch).encode()  # JSON escapes: \u0000, \ud800
        await producer.send_and_wait(activities, sent[ref], key=ref.encode())
    for ref in (comes, never):
        await eventually(lambda ref=ref: parked(engine, ref), what="the touch held for its lead", timeout=120)

    lead = {"external_id": comes + "\x00", "contact": {"email": f"{comes}@example.com"}}
    await producer.send_and_wait(submissions, json.dumps(lead).encode())
    lead_id = await eventually(lambda: lead_with_external_id(engine, comes), what="the lead", timeout=120)
    events = await eventually(lambda: _events_when(engine, lead_id, 2), what="the touch", timeout=120)
    assert [e.type for e in events] == ["lead.received", "activity.recorded"]
    assert events[1].data["attributes"] == {"note": "ab ? c", "crm": {"k": "?"}} and await parked(engine, comes) == 0

    clock.advance(timedelta(seconds=61))

    async def letters() -> list[CloudEvent] | None:
        async with engine.connect() as conn:
            rows = await conn.execute(select(EVENTS["intake"].c.payload).where(
                EVENTS["intake"].c.event_type == "deadletter", EVENTS["intake"].c.key.in_([comes, never])))
            found = [CloudEvent.from_bytes(r.payload) for r in rows]
        return found or None

    [dead] = await eventually(letters, what="the dead letter", timeout=120)
    assert dead.data["error"].startswith("unknown_lead") and dead.data["topic"] == activities
    assert base64.b64decode(dead.data["original_bytes_b64"]) == sent[never]
    assert await parked(engine, never) == 0


async def test_cloudevents_in_binary_and_structured_mode_are_accepted_once(intake, engine, producer) -> None:
    submissions, _ = intake
    binary_ref, structured_ref = f"bin-{uuid.uuid4().hex[:8]}", f"str-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"external_id": binary_ref, "contact": {"email": f"{binary_ref}@example.com"}}).encode()
    ce_id = str(uuid.uuid4())
    headers = [("ce_specversion", b"1.0"), ("ce_id", ce_id.encode()), ("ce_source", b"https://forms.example/x"),
               ("ce_type", b"com.example.lead"), ("content-type", b"application/json")]
    await producer.send_and_wait(submissions, body, headers=headers)
    # The same event again with another body: ce_id is the idempotency key, so nothing new.
    retry = json.dumps({"external_id": binary_ref + "-retry", "contact": {"email": "other@example.com"}}).encode()
    await producer.send_and_wait(submissions, retry, headers=headers)
    structured = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "chat-widget", "type": "lead",
                  "data": {"external_id": structured_ref,  # no `time`
                           "contact": {"phone": "+14155552671", "email": f"{structured_ref}@example.com"}}}
    await producer.send_and_wait(submissions, json.dumps(structured).encode())
    # The JSON format's other way to carry data: base64 in data_base64 (a producer with bytes in hand).
    encoded_ref = f"b64-{uuid.uuid4().hex[:8]}"
    encoded = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "ads", "type": "lead",
               "datacontenttype": "application/json", "data_base64": base64.b64encode(json.dumps(
                   {"external_id": encoded_ref, "contact": {"email": f"{encoded_ref}@example.com"}}).encode()).decode()}
    await producer.send_and_wait(submissions, json.dumps(encoded).encode())

    assert await eventually(lambda: lead_with_external_id(engine, encoded_ref), what="data_base64 lead", timeout=120)
    structured_lead = await eventually(lambda: lead_with_external_id(engine, structured_ref), what="structured", timeout=120)
    binary_lead = await eventually(lambda: lead_with_external_id(engine, binary_ref), what="binary lead")
    [received] = await stored_events(engine, "intake", binary_lead)
    assert received.data["attributes"]["ce_source"] == "https://forms.example/x"
    # The sender's CloudEvent started the chain: the contract's correlationid is its id.
    assert received.causationid == ce_id and received.correlationid == ce_id
    assert await lead_with_external_id(engine, binary_ref + "-retry") is None
    [other] = await stored_events(engine, "intake", structured_lead)
    assert other.data["contact"]["phone"] == "+14155552671"
    assert other.correlationid == other.causationid == structured["id"]


async def _events_when(engine, lead_id: str, count: int) -> list[CloudEvent] | None:
    events = await stored_events(engine, "intake", lead_id)
    return events if len(events) >= count else None


def _rejected() -> float:
    return REGISTRY.get_sample_value("leadsla_leads_rejected_total", {"source": "kafka", "reason": "invalid"}) or 0


async def test_a_fetched_batch_is_taken_together_and_a_refused_record_is_dead_lettered_alone(
        intake, engine, producer) -> None:
    """Records sent at once arrive in one fetch: the good ones are accepted together (a repeat
    within the batch is recognised as one), the refused one is dead-lettered with its bytes."""
    submissions, _ = intake
    ref = uuid.uuid4().hex[:8]
    first = {"external_id": f"first-{ref}", "contact": {"email": f"{ref}@example.com"}}
    refused = json.dumps({"external_id": f"refused-{ref}", "contact": {"first_name": "No way to reach"}}).encode()
    repeat = {"external_id": f"repeat-{ref}", "contact": {"email": f"{ref}@example.com"}, "intent": "demo request"}
    last = {"external_id": f"last-{ref}", "contact": {"phone": "+14155552671", "email": f"last-{ref}@example.com"}}
    before = _rejected()
    sent = [await producer.send(submissions, value) for value in
            (json.dumps(first).encode(), refused, json.dumps(repeat).encode(), json.dumps(last).encode())]
    await asyncio.gather(*sent)

    await eventually(lambda: lead_with_external_id(engine, f"last-{ref}"), what="the last lead", timeout=120)
    lead_id = await lead_with_external_id(engine, f"first-{ref}")
    assert lead_id is not None and await lead_with_external_id(engine, f"repeat-{ref}") is None
    types = [e.type for e in await stored_events(engine, "intake", lead_id)]
    assert types == ["lead.received", "lead.merged", "lead.updated"]  # the repeat raised the tier

    async def letter():
        async with engine.connect() as conn:
            return (await conn.execute(select(deadletters).where(deadletters.c.topic == submissions))).first()

    row = await eventually(letter, what="the refused record's dead letter")
    assert row.original == refused and "invalid submission" in row.error
    assert _rejected() == before + 1


async def test_a_record_with_an_integer_too_long_for_python_is_a_lead_not_a_dead_letter(
        intake, engine, producer) -> None:
    submissions, _ = intake
    ref = uuid.uuid4().hex[:8]
    record = json.dumps({"external_id": f"big-{ref}", "contact": {"email": f"{ref}@example.com"},
                         "score": "DIGITS"}).replace('"DIGITS"', "9" * 5000)
    await (await producer.send(submissions, record.encode()))
    lead_id = await eventually(lambda: lead_with_external_id(engine, f"big-{ref}"), what="the lead", timeout=120)
    [event] = await stored_events(engine, "intake", lead_id)
    assert event.data["attributes"]["score"] == "9" * 5000


def _received(source: str) -> float:
    return REGISTRY.get_sample_value("leadsla_leads_received_total", {"source": source, "tier": "C"}) or 0


async def test_a_record_s_lead_takes_the_source_its_body_names_as_over_http(intake, engine, producer) -> None:
    """A webinar tool publishing {"source": "webinar", ...} on the raw topic: its lead's source is
    "webinar" (as an admin key's body over HTTP), so reports by source show it; the metric label
    stays "kafka" for a source the configuration does not name. Without a source: "kafka"."""
    submissions, _ = intake
    ref = uuid.uuid4().hex[:8]
    counted = _received("kafka")
    await (await producer.send(submissions, json.dumps({"source": "webinar", "external_id": f"w-{ref}",
                                                        "contact": {"email": f"w-{ref}@example.com"}}).encode()))
    await (await producer.send(submissions, json.dumps({"external_id": f"n-{ref}",
                                                        "contact": {"email": f"n-{ref}@example.com"}}).encode()))
    named = await eventually(lambda: lead_with_external_id(engine, f"w-{ref}"), what="the webinar lead", timeout=120)
    unnamed = await eventually(lambda: lead_with_external_id(engine, f"n-{ref}"), what="the other lead", timeout=120)
    assert (await stored_events(engine, "intake", named))[0].data["source"] == "webinar"
    assert (await stored_events(engine, "intake", unnamed))[0].data["source"] == "kafka"
    await eventually(lambda: _received("kafka") == counted + 2, what="both counted under kafka")
    assert _received("webinar") == 0


async def test_a_batch_body_on_the_submissions_topic_is_dead_lettered_saying_so(intake, engine, producer) -> None:
    """`{"leads": [...]}` is the body of POST /v1/leads:batch, not of POST /v1/leads: its dead
    letter says so, where it said the lead had no email or phone (an operator went looking for
    a lead without contact data, in a record holding several contactable ones)."""
    submissions, _ = intake
    ref = uuid.uuid4().hex[:8]
    batch = json.dumps({"leads": [{"contact": {"email": f"{ref}-{i}@example.com"}} for i in range(2)]}).encode()
    await (await producer.send(submissions, batch, key=ref.encode()))

    async def letter():
        async with engine.connect() as conn:
            return (await conn.execute(select(deadletters).where(deadletters.c.topic == submissions,
                                                                 deadletters.c.key == ref))).first()

    row = await eventually(letter, what="the batch's dead letter", timeout=120)
    assert row.original == batch
    assert "leads: a batch" in row.error and "one lead per record" in row.error, row.error


async def test_bad_touches_on_the_raw_topic_are_dead_lettered_with_their_bytes_and_field_and_the_rest_flow(
        intake, engine, producer) -> None:
    """A CRM's bad records (not JSON, a type nobody reads, a disposition status not configured)
    go to leads.deadletter, each with its bytes and a reason naming the field; the touch behind
    them is recorded."""
    submissions, activities = intake
    ref = f"crm-{uuid.uuid4().hex[:8]}"
    await producer.send_and_wait(submissions, json.dumps({"external_id": ref,
                                                          "contact": {"email": f"{ref}@example.com"}}).encode())
    lead_id = await eventually(lambda: lead_with_external_id(engine, ref), what="the lead", timeout=120)
    bad = [b"{not json", json.dumps({"lead_id": ref, "type": "fax"}).encode(),
           json.dumps({"lead_id": ref, "type": "disposition", "disposition": {"status": "won"}}).encode()]
    for value in [*bad, json.dumps({"lead_id": ref, "type": "call", "outcome": "connected"}).encode()]:
        await producer.send_and_wait(activities, value, key=ref.encode())
    events = await eventually(lambda: _events_when(engine, lead_id, 2), what="the good touch", timeout=120)
    assert [e.type for e in events] == ["lead.received", "activity.recorded"]

    async def letters() -> list[CloudEvent] | None:
        async with engine.connect() as conn:
            rows = await conn.execute(select(EVENTS["intake"].c.payload).where(
                EVENTS["intake"].c.key == ref, EVENTS["intake"].c.event_type == "deadletter"))
            found = [CloudEvent.from_bytes(r.payload) for r in rows]
        return found if len(found) == len(bad) else None

    dead = sorted(await eventually(letters, what="the dead letters", timeout=120), key=lambda e: e.data["offset"])
    assert [base64.b64decode(d.data["original_bytes_b64"]) for d in dead] == bad
    assert "not JSON" in dead[0].data["error"] and "type" in dead[1].data["error"]
    assert "disposition.status" in dead[2].data["error"] and all(d.data["topic"] == activities for d in dead)


async def test_a_touch_on_kafka_without_its_own_time_is_dated_by_its_cloudevent_time(intake, engine, producer, clock) -> None:
    """CloudEvents' `time` is when the occurrence happened: a CRM's call sent as a CloudEvent with
    no occurred_at in its data was dated when intake got to it (behind a backlog, after the deadline)."""
    submissions, activities = intake
    ref = f"crm-{uuid.uuid4().hex[:8]}"
    await producer.send_and_wait(submissions, json.dumps({"external_id": ref, "contact": {"email": f"{ref}@x.com"}}).encode())
    lead_id = await eventually(lambda: lead_with_external_id(engine, ref), what="the lead", timeout=120)
    called = clock.now() - timedelta(minutes=3)
    touch = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "crm/x", "type": "com.crm.activity",
             "time": called.isoformat(), "data": {"type": "call", "actor": "al", "outcome": "connected"}}
    await producer.send_and_wait(activities, json.dumps(touch).encode(), key=lead_id.encode())
    events = await eventually(lambda: _events_when(engine, lead_id, 2), what="the touch", timeout=120)
    assert datetime.fromisoformat(events[1].data["occurred_at"]) == called
    # Its ce_id is its idempotency key, as an Idempotency-Key over HTTP is (the same id, the same
    # touch), and its ce_source is kept.
    assert events[1].data["activity_id"] == deterministic_id("activity", lead_id, touch["id"])
    assert events[1].data["attributes"] == {"ce_source": "crm/x"}


async def test_a_cloudevent_touch_that_waited_for_its_lead_keeps_its_time_id_and_source(
        intake, engine, producer, clock) -> None:
    """Found by an acceptance sweep: a touch held for its lead was read again from its body alone
    when the lead came, so a call made hours before (the CloudEvent's `time`) was dated when the
    lead arrived, an instant first response; its ce_id and ce_source were lost too."""
    submissions, activities = intake
    ref = f"crm-{uuid.uuid4().hex[:8]}"
    called = clock.now() - timedelta(hours=2)
    touch = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "crm/x", "type": "com.crm.activity",
             "subject": ref, "time": called.isoformat(), "data": {"type": "call", "actor": "al", "outcome": "connected"}}
    await producer.send_and_wait(activities, json.dumps(touch).encode(), key=ref.encode())
    await eventually(lambda: parked(engine, ref), what="the touch held for its lead", timeout=120)
    lead = {"external_id": ref, "contact": {"email": f"{ref}@example.com"}}
    await producer.send_and_wait(submissions, json.dumps(lead).encode())
    lead_id = await eventually(lambda: lead_with_external_id(engine, ref), what="the lead", timeout=120)
    events = await eventually(lambda: _events_when(engine, lead_id, 2), what="the released touch", timeout=120)
    assert events[1].type == "activity.recorded"
    assert datetime.fromisoformat(events[1].data["occurred_at"]) == called
    assert events[1].data["activity_id"] == deterministic_id("activity", lead_id, touch["id"])
    assert events[1].data["attributes"] == {"ce_source": "crm/x"}


async def test_touches_sent_at_once_are_taken_together_and_a_refused_one_is_dead_lettered_alone(
        intake, engine, producer) -> None:
    """A CRM's sync arrives in one fetch: touches of two leads, a repeat, one for a lead not here
    yet, one refused. The good ones are recorded once each on their leads, the early one is held,
    the refused one is dead-lettered with its bytes."""
    submissions, activities = intake
    first, second, early = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("crm", "crm", "later"))
    for ref in (first, second):
        await producer.send_and_wait(submissions, json.dumps({"external_id": ref,
                                                              "contact": {"email": f"{ref}@example.com"}}).encode())
    first_id = await eventually(lambda: lead_with_external_id(engine, first), what="the first lead", timeout=120)
    second_id = await eventually(lambda: lead_with_external_id(engine, second), what="the second lead", timeout=120)

    def touch(ref: str, external_id: str, **more) -> bytes:
        return json.dumps({"lead_id": ref, "type": "call", "external_id": external_id, **more}).encode()

    refused = touch(first, "c-2", type="disposition", disposition={"status": "won"})
    sent = [await producer.send(activities, value, key=b"one-partition", partition=0) for value in (
        touch(first, "c-1"), refused, touch(second, "c-1"), touch(first, "c-1"), touch(early, "c-1"),
        touch(first, "c-3", outcome="connected"))]
    await asyncio.gather(*sent)

    recorded = await eventually(lambda: _events_when(engine, first_id, 3), what="the first lead's touches", timeout=120)
    assert [e.data["activity_id"] for e in recorded[1:]] == [
        deterministic_id("activity", first_id, "c-1"), deterministic_id("activity", first_id, "c-3")]
    assert [e.type for e in await _events_when(engine, second_id, 2)] == ["lead.received", "activity.recorded"]
    assert await parked(engine, early) == 1

    async def letter():
        async with engine.connect() as conn:
            return (await conn.execute(select(deadletters).where(deadletters.c.topic == activities,
                                                                 deadletters.c.original == refused))).first()

    row = await eventually(letter, what="the refused touch's dead letter")
    assert "disposition.status" in row.error
    assert len(await stored_events(engine, "intake", first_id)) == 3  # nothing more came of the repeat


async def test_a_touch_resent_before_its_lead_comes_is_held_once_and_recorded_once(intake, engine, producer) -> None:
    """A CRM resending its sync while the lead is on its way: each copy was held (and would each
    have been a dead letter had the lead never come)."""
    submissions, activities = intake
    ref = f"crm-{uuid.uuid4().hex[:8]}"
    call = json.dumps({"lead_id": ref, "type": "call", "external_id": f"{ref}-call"}).encode()
    await asyncio.gather(*[await producer.send(activities, call, key=ref.encode()) for _ in range(2)])
    await producer.send_and_wait(activities, call, key=ref.encode())
    # Behind the copies on their partition: once it is held, every copy has been read.
    note = json.dumps({"lead_id": ref, "type": "note", "external_id": f"{ref}-note"}).encode()
    await producer.send_and_wait(activities, note, key=ref.encode())
    await eventually(lambda: _at_least(parked(engine, ref), 2), what="the call and the note held", timeout=120)
    assert await parked(engine, ref) == 2

    await producer.send_and_wait(submissions, json.dumps({"external_id": ref, "contact": {"email": f"{ref}@example.com"}}).encode())
    lead_id = await eventually(lambda: lead_with_external_id(engine, ref), what="the lead", timeout=120)
    events = await eventually(lambda: _events_when(engine, lead_id, 3), what="the lead and its touches")
    assert [(e.type, e.data.get("type")) for e in events] == [
        ("lead.received", None), ("activity.recorded", "call"), ("activity.recorded", "note")]
    assert await parked(engine, ref) == 0


async def _at_least(count, n: int) -> bool:
    return await count >= n
