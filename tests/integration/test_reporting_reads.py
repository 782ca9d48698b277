"""Reporting's read side as an operator meets it, on the real broker and Postgres: a lead's events
are published to the topics the other services write, reporting's own consumer projects them, and
the HTTP reads (reports, the board, the lead list) are checked against what the SLA clock holds."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.reporting.bootstrap import bootstrap
from services.reporting.replay import rebuild
from services.reporting.tables import sla_timers, timeline
from shared.auth import create_key
from shared.clock import ManualClock
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig
from shared.consumer import EventConsumer
from shared.events import TOPIC_INTAKE, TOPIC_ROUTING, TOPIC_SLA, CloudEvent, utc_iso
from shared.http import create_app
from shared.runtime import ServiceContext
from shared.settings import Settings
from tests.integration.own_database import OwnDatabase, own_database  # noqa: F401 - a fixture
from tests.support import eventually

CONFIG = """
owners: [{id: alice}, {id: bob}]
teams: [{id: sdr, members: [alice, bob]}]
routing: {rules: [{id: inbound, team: sdr}]}
sla_policies:
  - {id: fast, filter: {tiers: [A]}, metrics: {first_response: {target: 5m}, qualification: {target: 7d}}}
"""
# A day of its own, so the reports' periods hold only this module's leads whatever else the
# broker's topics carry (the consumer reads them from the start); far past any other module's
# scenario, so this module's open timers never come before theirs on a board (nearest due first).
NOW = datetime(2090, 1, 1, 12, 0, tzinfo=UTC) + timedelta(days=random.randrange(1, 3000))


@dataclass
class Reporting:
    client: httpx.AsyncClient
    engine: AsyncEngine
    producer: AIOKafkaProducer

    async def publish(self, *events: tuple[str, CloudEvent]) -> None:
        for topic, event in events:
            await self.producer.send_and_wait(topic, event.to_bytes(), key=event.subject.encode())
        ids = [event.id for _, event in events]

        async def projected() -> bool:
            async with self.engine.connect() as conn:
                return await conn.scalar(
                    select(func.count()).where(timeline.c.event_id.in_(ids))
                ) == len(ids)

        await eventually(projected, timeout=60, what="the events in reporting's timeline")


@pytest.fixture(scope="module")
async def reporting(
    own_database: OwnDatabase,  # noqa: F811
    producer,
    kafka_bootstrap,
) -> AsyncIterator[Reporting]:
    engine = own_database.engine
    clock = ManualClock(NOW + timedelta(minutes=1))
    ctx = ServiceContext(
        name="reporting",
        settings=Settings(database_url=own_database.url, kafka_bootstrap=kafka_bootstrap),
        engine=engine,
        producer=producer,
        clock=clock,
        config=ConfigHolder(engine, VersionedConfig(1, parse_config(CONFIG))),
        relay_wakeup=asyncio.Event(),
    )
    spec = bootstrap(ctx)
    [sub] = spec.subscriptions
    consumer = EventConsumer(
        replace(sub, group=f"reporting-reads-{uuid.uuid4().hex[:6]}"),
        service="reporting",
        bootstrap=kafka_bootstrap,
        engine=engine,
        relay_wakeup=ctx.relay_wakeup,
        clock=clock,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    async with engine.begin() as conn:
        key = await create_key(conn, "reporting-reads", "admin")
    transport = httpx.ASGITransport(app=create_app(ctx, spec.routers))
    try:
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://reporting",
            headers={"Authorization": f"Bearer {key}"},
        ) as client:
            yield Reporting(client, engine, producer)
    finally:
        stop.set()
        await running


def event(type_: str, lead_id: str, at: datetime, service: str, **data: Any) -> CloudEvent:
    return CloudEvent(
        id=str(uuid.uuid4()),
        source=f"leadsla/{service}",
        type=type_,
        subject=lead_id,
        time=at,
        data={"lead_id": lead_id, **data},
    )


def received(lead_id: str, at: datetime) -> tuple[str, CloudEvent]:
    return TOPIC_INTAKE, event(
        "lead.received",
        lead_id,
        at,
        "intake",
        source="website",
        tier="A",
        received_at=utc_iso(at),
        contact={"email": f"{lead_id}@example.com"},
        company={},
        intent={"type": "demo_request"},
        consent={},
        contactable=True,
    )


def assigned(lead_id: str, at: datetime, owner: str) -> tuple[str, CloudEvent]:
    return TOPIC_ROUTING, event(
        "lead.assigned",
        lead_id,
        at,
        "router",
        owner_id=owner,
        team_id="sdr",
        rule_id="inbound",
        method="round_robin",
        reason="rule_match",
        assignment_no=1,
        candidates=[],
        assigned_at=utc_iso(at),
        tier="A",
        source="website",
    )


def reassigned(lead_id: str, at: datetime, old: str, new: str) -> tuple[str, CloudEvent]:
    return TOPIC_ROUTING, event(
        "lead.reassigned",
        lead_id,
        at,
        "router",
        from_owner_id=old,
        to_owner_id=new,
        reason="territory",
        assignment_no=2,
    )


def sla_started(
    lead_id: str, at: datetime, metric: str, owner: str | None, target: timedelta
) -> tuple[str, CloudEvent]:
    return TOPIC_SLA, event(
        "sla.started",
        lead_id,
        at,
        "sla_clock",
        sla_id=str(uuid.uuid4()),
        metric=metric,
        policy_id="fast",
        policy_version=1,
        owner_id=owner,
        tier="A",
        started_at=utc_iso(at),
        due_at=utc_iso(at + target),
    )


def timer_fields(data: dict) -> dict:
    """What every sla.* event of a timer repeats of its sla.started."""
    return {k: data[k] for k in ("sla_id", "metric", "policy_id", "policy_version", "owner_id", "tier", "started_at",
                                 "due_at")}


def sla_met(started: CloudEvent, at: datetime) -> tuple[str, CloudEvent]:
    d = started.data
    return TOPIC_SLA, event(
        "sla.met",
        d["lead_id"],
        at,
        "sla_clock",
        **timer_fields(d),
        met_at=utc_iso(at),
    )


def window(t: datetime) -> dict[str, str]:
    """An hour either side of `t`: each test starts its leads on a day of its own."""
    return {"from": utc_iso(t - timedelta(hours=1)), "to": utc_iso(t + timedelta(hours=1))}


async def report_rows(r: Reporting, metric: str, t: datetime) -> dict[str, dict]:
    """The SLA report per owner (the owner column the board shows too) for timers started near `t`."""
    response = await r.client.get(
        "/v1/reports/sla", params={"group_by": "owner", "metric": metric, **window(t)}
    )
    assert response.status_code == 200, response.text
    return {row["owner"]: row for row in response.json()["rows"]}


async def test_open_timers_follow_the_lead_to_its_new_owner(reporting: Reporting) -> None:
    """The SLA clock hands a lead's running timers to the owner it is reassigned to (no sla.*
    event says so); the board and the per-owner report must not keep chasing the old owner."""
    lead_id = f"moved-{uuid.uuid4().hex[:8]}"
    t = NOW + timedelta(days=1)
    _, first = first_response = sla_started(
        lead_id, t + timedelta(seconds=1), "first_response", "alice", timedelta(minutes=5)
    )
    qualification = sla_started(
        lead_id, t + timedelta(seconds=1), "qualification", "alice", timedelta(days=7)
    )
    await reporting.publish(
        received(lead_id, t),
        assigned(lead_id, t, "alice"),
        first_response,
        qualification,
        sla_met(first, t + timedelta(seconds=30)),
    )
    await reporting.publish(reassigned(lead_id, t + timedelta(seconds=40), "alice", "bob"))

    # A timer judged before the reassignment stays its old owner's; the open one is bob's now.
    first_rows = await report_rows(reporting, "first_response", t)
    assert first_rows["alice"]["met"] == 1 and "bob" not in first_rows
    qualification_rows = await report_rows(reporting, "qualification", t)
    assert "alice" not in qualification_rows
    assert qualification_rows["bob"]["open"] == 1

    # The rebuild folds the same way: replay --verify finds nothing to correct.
    verified = await rebuild(reporting.engine, parse_config(CONFIG), verify=True)
    assert not verified.differences


async def test_an_sla_event_emitted_before_the_reassignment_keeps_the_new_owner(
    reporting: Reporting,
) -> None:
    """leads.sla and leads.routing are read independently: a warning the clock sent while alice
    held the lead may be projected after the reassignment, and must not hand the timer back."""
    lead_id = f"late-{uuid.uuid4().hex[:8]}"
    t = NOW + timedelta(days=2)
    topic, started = sla_started(
        lead_id, t + timedelta(seconds=1), "qualification", "alice", timedelta(days=7)
    )
    await reporting.publish(received(lead_id, t), assigned(lead_id, t, "alice"), (topic, started))
    await reporting.publish(reassigned(lead_id, t + timedelta(seconds=40), "alice", "bob"))
    warning = event(
        "sla.warning",
        lead_id,
        t + timedelta(seconds=20),
        "sla_clock",
        percent=50,
        **timer_fields(started.data),
    )
    await reporting.publish((TOPIC_SLA, warning))

    rows = await report_rows(reporting, "qualification", t)
    assert "alice" not in rows and rows["bob"]["open"] == 1


@pytest.mark.parametrize("status", ["open", "ASSIGNED", "closed"])
async def test_lead_list_refuses_a_status_no_lead_can_have_naming_the_parameter(
    reporting: Reporting, status: str
) -> None:
    """A typo in a filter reads as "no such leads" unless it is refused."""
    response = await reporting.client.get("/v1/leads", params={"status": status})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == ["status"]


async def test_lead_list_takes_every_status_a_lead_can_have(reporting: Reporting) -> None:
    for status in ("received", "queued", "assigned", "responded", "nurture", "dispositioned", "opted_out"):
        response = await reporting.client.get("/v1/leads", params={"status": status})
        assert response.status_code == 200, response.text
        assert all(lead["status"] == status for lead in response.json()["leads"])


async def test_a_filter_left_empty_is_no_filter(reporting: Reporting) -> None:
    """httpx sends a parameter given as None as `name=`, and so does an HTML form left blank: an
    integrator's client that passes every filter, set or not, reads what it would without them."""
    lead_id = f"empty-{uuid.uuid4().hex[:8]}"
    t = NOW + timedelta(days=4)
    await reporting.publish(received(lead_id, t), assigned(lead_id, t, "alice"))
    blank = dict.fromkeys(("status", "owner_id", "team_id", "tier", "source", "breached", "cursor"))
    plain = await reporting.client.get("/v1/leads", params=window(t))
    response = await reporting.client.get("/v1/leads", params={**blank, **window(t)})
    assert response.status_code == 200, response.text
    assert [lead["lead_id"] for lead in response.json()["leads"]] == [lead_id]
    assert response.json() == plain.json()
    no_period = await reporting.client.get("/v1/leads", params={"from": None, "to": None})
    assert no_period.status_code == 200, no_period.text
    report = await reporting.client.get(
        "/v1/reports/sla", params={"from": None, "to": None, "group_by": "owner", "metric": None}
    )
    assert report.status_code == 200, report.text
    assert {row["metric"] for row in report.json()["rows"]} == {"first_response"}


async def test_timers_started_while_the_lead_was_queued_take_the_owner_it_is_assigned_to(
    reporting: Reporting,
) -> None:
    """Nobody eligible: the clock starts on the queued lead with no owner, and the lead's first
    assignment hands the running timers to that owner (the board's owner column)."""
    lead_id = f"queued-{uuid.uuid4().hex[:8]}"
    t = NOW + timedelta(days=3)
    started = sla_started(
        lead_id, t + timedelta(seconds=1), "first_response", None, timedelta(minutes=5)
    )
    await reporting.publish(received(lead_id, t), started)
    await reporting.publish(assigned(lead_id, t + timedelta(minutes=2), "bob"))
    rows = await report_rows(reporting, "first_response", t)
    assert None not in rows and rows["bob"]["open"] == 1


@pytest.mark.parametrize(
    "field,value", [("from", "0001-01-01T00:00:00+01:00"), ("to", "9999-12-31T23:59:59-14:00")]
)
@pytest.mark.parametrize("path", ["/v1/leads", "/v1/reports/sla", "/v1/reports/breaches"])
async def test_a_period_edge_with_no_instant_in_utc_is_a_problem_naming_it(
    reporting: Reporting, path: str, field: str, value: str
) -> None:
    """Valid ISO 8601, but its offset takes it outside the years 1 to 9999 in UTC: a 500 before."""
    response = await reporting.client.get(path, params={field: value})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


def updated(
    lead_id: str, at: datetime, reason: str, changed: dict, **data: Any
) -> tuple[str, CloudEvent]:
    return TOPIC_INTAKE, event(
        "lead.updated",
        lead_id,
        at,
        "intake",
        changed=changed,
        tier="A",
        previous_tier="A",
        reason=reason,
        **data,
    )


async def test_a_lead_reads_as_its_updates_left_it(reporting: Reporting) -> None:
    """A PATCH's correction and an opt-out change the lead's facts: GET /v1/leads/{id} showed
    them as first received (an opted-out lead still contactable, with its consent to contact)."""
    lead_id = f"updated-{uuid.uuid4().hex[:8]}"
    t = NOW + timedelta(days=5)
    await reporting.publish(
        received(lead_id, t),
        updated(
            lead_id,
            t + timedelta(minutes=1),
            "patched",
            {
                "contact.phone": {"old": None, "new": "+442079460000"},
                "company.size": {"old": None, "new": "1000+"},
                "intent.type": {"old": "demo_request", "new": "contact_sales"},
            },
            missing_fields=[],
        ),
        updated(
            lead_id,
            t + timedelta(minutes=2),
            "opted_out",
            {
                "contactable": {"old": True, "new": False},
                "consent.contact": {"old": None, "new": False},
            },
            contactable=False,
        ),
    )
    found = (await reporting.client.get(f"/v1/leads/{lead_id}")).json()
    profile = found["lead"]["profile"]
    assert profile["contact"] == {"email": f"{lead_id}@example.com", "phone": "+442079460000"}
    assert profile["company"] == {"size": "1000+"}
    assert profile["intent"] == {"type": "contact_sales"}
    assert profile["consent"] == {"contact": False} and profile["contactable"] is False
    assert profile["missing_fields"] == []
    # The timeline keeps what was received.
    [first] = [e for e in found["timeline"] if e["type"] == "lead.received"]
    assert first["data"]["contact"] == {"email": f"{lead_id}@example.com"}

    verified = await rebuild(reporting.engine, parse_config(CONFIG), verify=True)
    assert not verified.differences


async def test_each_timeline_entry_names_the_submission_that_started_its_chain(
    reporting: Reporting,
) -> None:
    """The envelope's correlationid is kept with each event; the timeline showed causation only, so
    an integrator could not tie a lead's events to the submission they came from."""
    lead_id = f"chain-{uuid.uuid4().hex[:8]}"
    t = NOW + timedelta(days=6)
    topic, first = received(lead_id, t)
    first = first.model_copy(update={"correlationid": first.id})
    _, then = assigned(lead_id, t + timedelta(seconds=1), "alice")  # two topics: ordered by time
    then = then.model_copy(update={"correlationid": first.id, "causationid": first.id})
    await reporting.publish((topic, first), (TOPIC_ROUTING, then))
    found = (await reporting.client.get(f"/v1/leads/{lead_id}")).json()
    assert [(e["type"], e["correlation_id"]) for e in found["timeline"]] == [
        ("lead.received", first.id),
        ("lead.assigned", first.id),
    ]


def with_data(published: tuple[str, CloudEvent], **data: Any) -> tuple[str, CloudEvent]:
    topic, e = published
    return topic, e.model_copy(update={"data": {**e.data, **data}})


def touched(lead_id: str, at: datetime, actor: str, type_: str = "email") -> tuple[str, CloudEvent]:
    return TOPIC_INTAKE, event("activity.recorded", lead_id, at, "intake", activity_id=str(uuid.uuid4()),
                               type=type_, actor=actor, occurred_at=utc_iso(at))


async def test_a_lead_upgraded_to_another_tier_counts_its_first_response_once(reporting: Reporting) -> None:
    """A tier change cancels the first_response timer (policy_changed) and starts its successor
    from the same clock start. The answer meets the successor; the cancelled timer must not count
    it again in the old tier's (and the week's) time to first response."""
    lead_id = f"upgraded-{uuid.uuid4().hex[:8]}"
    t = NOW + timedelta(days=7)
    old = with_data(sla_started(lead_id, t, "first_response", "alice", timedelta(days=1)), tier="C",
                    policy_id="day")
    cancelled = TOPIC_SLA, event("sla.cancelled", lead_id, t + timedelta(seconds=5), "sla_clock",
                                 **timer_fields(old[1].data), reason="policy_changed")
    new = with_data(sla_started(lead_id, t + timedelta(seconds=5), "first_response", "alice",
                                timedelta(minutes=5)), started_at=utc_iso(t), due_at=utc_iso(t + timedelta(minutes=5)))
    answer = t + timedelta(minutes=2)
    await reporting.publish(received(lead_id, t), assigned(lead_id, t, "alice"), old, cancelled, new,
                            touched(lead_id, answer, "alice"), sla_met(new[1], answer))

    by_tier = {row["tier"]: row for row in (await reporting.client.get(
        "/v1/reports/sla", params={"group_by": "tier", **window(t)})).json()["rows"]}
    assert (by_tier["C"]["cancelled"], by_tier["C"]["ttfr_p50_seconds"], by_tier["C"]["ttfr_p90_seconds"]) \
        == (1, None, None)
    assert (by_tier["A"]["met"], by_tier["A"]["ttfr_p50_seconds"]) == (1, 120.0)
    [week] = (await reporting.client.get("/v1/reports/sla", params={"group_by": "week", **window(t)})).json()["rows"]
    # One answer in the week: p50 and p90 of one value, not of the same value twice.
    assert (week["started"], week["cancelled"], week["met"]) == (2, 1, 1)
    async with reporting.engine.connect() as conn:
        answers = await conn.scalar(select(func.count()).select_from(sla_timers).where(
            sla_timers.c.lead_id == lead_id, sla_timers.c.ttfr_seconds.is_not(None)))
    assert answers == 1


async def test_reports_by_team_count_a_lead_moved_to_another_team_where_its_owner_was(reporting: Reporting) -> None:
    """alice (sdr) met the first response, then the lead went to carol in team ae: the SLA report
    by team counted alice's met SLA for ae (the lead's team now), and the routing report by team
    counted the lead's routing (first owner alice's) for ae too, while by owner both said alice."""
    lead_id = f"moved-team-{uuid.uuid4().hex[:8]}"
    t = NOW + timedelta(days=8)
    first_response = sla_started(lead_id, t, "first_response", "alice", timedelta(minutes=5))
    qualification = sla_started(lead_id, t, "qualification", "alice", timedelta(days=7))
    answer = t + timedelta(minutes=1)
    await reporting.publish(received(lead_id, t), assigned(lead_id, t, "alice"), first_response, qualification,
                            touched(lead_id, answer, "alice"), sla_met(first_response[1], answer))
    await reporting.publish(with_data(reassigned(lead_id, t + timedelta(hours=1), "alice", "carol"), team_id="ae"))

    async def by_team(name: str, **params: str) -> dict:
        response = await reporting.client.get(f"/v1/reports/{name}", params={"group_by": "team", **window(t), **params})
        assert response.status_code == 200, response.text
        return {row["team"]: row for row in response.json()["rows"]}

    first = await by_team("sla")
    assert set(first) == {"sdr"} and (first["sdr"]["met"], first["sdr"]["ttfr_p50_seconds"]) == (1, 60.0)
    open_now = await by_team("sla", metric="qualification")  # the running timer moved with the lead
    assert set(open_now) == {"ae"} and open_now["ae"]["open"] == 1
    routing = await by_team("routing")
    assert set(routing) == {"sdr"} and (routing["sdr"]["touched_by_first_owner"], routing["sdr"]["reassigned"]) == (1, 1)
    # The lead list filters by the team that has the lead now.
    listed = (await reporting.client.get("/v1/leads", params={"team_id": "ae", **window(t)})).json()["leads"]
    assert [lead["lead_id"] for lead in listed] == [lead_id]
    verified = await rebuild(reporting.engine, parse_config(CONFIG), verify=True)
    assert not verified.differences


async def test_a_crm_finds_a_lead_by_its_own_record_id(reporting: Reporting) -> None:
    """A CRM that sends touches by its record's id (external_id) maps the lead's owner and SLA
    back to that record: the list names each lead's external_id and filters on it."""
    mine, other = f"crm-{uuid.uuid4().hex[:8]}", f"crm-{uuid.uuid4().hex[:8]}"
    record_id = f"hs-{uuid.uuid4().hex[:8]}"
    t = NOW + timedelta(days=23)
    topic, first = received(mine, t)
    first.data["external_id"] = record_id
    await reporting.publish((topic, first), received(other, t))
    found = (await reporting.client.get("/v1/leads", params={"external_id": record_id})).json()["leads"]
    assert [(lead["lead_id"], lead["external_id"]) for lead in found] == [(mine, record_id)]
    everyone = (await reporting.client.get("/v1/leads", params=window(t))).json()["leads"]
    assert {lead["lead_id"]: lead["external_id"] for lead in everyone if lead["lead_id"] in (mine, other)} == {
        mine: record_id, other: None}



async def test_a_crm_finds_a_lead_by_the_record_id_of_a_repeat_merged_into_it(reporting: Reporting) -> None:
    """The CRM's record came from the second form fill, merged into the first lead: its touches
    by that id reach the lead (intake resolves it), and so does the lookup (it found nothing),
    after a replay too."""
    lead_id, repeat_id = f"crm-{uuid.uuid4().hex[:8]}", f"hs-{uuid.uuid4().hex[:8]}"
    t = NOW + timedelta(days=24)
    merged = event("lead.merged", lead_id, t + timedelta(minutes=5), "intake", match_on="email", source="website",
                   duplicate_submission={"external_id": repeat_id, "contact": {"email": f"{lead_id}@example.com"}})
    await reporting.publish(received(lead_id, t), (TOPIC_INTAKE, merged))
    found = (await reporting.client.get("/v1/leads", params={"external_id": repeat_id})).json()["leads"]
    assert [lead["lead_id"] for lead in found] == [lead_id]
    assert not (await rebuild(reporting.engine, parse_config(CONFIG), verify=True)).differences
