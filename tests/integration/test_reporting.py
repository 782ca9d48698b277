"""Reporting on the real broker and Postgres: a scenario's events are published to the topics,
reporting's own consumer projects them, and every report is checked against a recomputation
from those same events (JSON and CSV)."""
from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from leadsla.devstack import free_port
from services.reporting.bootstrap import bootstrap
from services.reporting.entrypoints import measure_overdue
from services.reporting.projections import project
from services.reporting.replay import rebuild
from services.reporting.tables import lead_state, sla_timers, timeline
from shared import metrics
from shared.auth import create_key
from shared.clock import ManualClock
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig, apply_config
from shared.consumer import EventConsumer
from shared.events import CloudEvent, utc_iso
from shared.http import create_app
from shared.runtime import ServiceContext
from shared.settings import Settings
from tests.integration import reporting_scenario as scenario
from tests.integration.own_database import OwnDatabase, own_database  # noqa: F401 - a fixture
from tests.support import eventually

from .board_dom import BoardDom

GROUPS = ("tier", "owner", "team", "source", "policy", "week")


@dataclass
class Projected:
    scenario: scenario.Scenario
    client: httpx.AsyncClient
    ctx: ServiceContext

    def window(self) -> dict[str, str]:
        # Generous end: breaches and dispositions of the last leads come a day after they arrive.
        return {"from": utc_iso(self.scenario.start), "to": utc_iso(self.scenario.end + timedelta(days=3))}


@pytest.fixture(scope="module")
def engine(own_database: OwnDatabase) -> AsyncEngine:  # noqa: F811
    """A database of this module's own: its read models are folded on the scenario's calendars
    and rebuilt whole, and a later test's replay on other calendars would differ from them."""
    return own_database.engine


@pytest.fixture(scope="module")
def database_url(own_database: OwnDatabase) -> str:  # noqa: F811
    return own_database.url


@pytest.fixture(scope="module")
async def projected(engine, producer, database_url, kafka_bootstrap) -> AsyncIterator[Projected]:
    s = scenario.build(seed=uuid.uuid4().int % 10_000)
    clock = ManualClock(s.start + timedelta(days=6, hours=12))
    ctx = ServiceContext(name="reporting", settings=Settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap),
                         engine=engine, producer=producer, clock=clock,
                         config=ConfigHolder(engine, VersionedConfig(1, parse_config(scenario.CONFIG))),
                         relay_wakeup=asyncio.Event())
    spec = bootstrap(ctx)
    [sub] = spec.subscriptions
    # Its own group, so it reads the topics from the start, whatever other tests consumed.
    consumer = EventConsumer(replace(sub, group=f"reporting-test-{uuid.uuid4().hex[:6]}"),
                             service="reporting", bootstrap=kafka_bootstrap, engine=engine,
                             relay_wakeup=ctx.relay_wakeup, clock=clock)
    for topic, event in s.events:
        await producer.send_and_wait(topic, event.to_bytes(), key=event.subject.encode())
    topic, again = s.events[5]  # at-least-once delivery: the same event twice changes nothing
    await producer.send_and_wait(topic, again.to_bytes(), key=again.subject.encode())
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    ids = [e.id for _, e in s.events]

    async def all_projected() -> bool:
        async with engine.connect() as conn:
            return await conn.scalar(select(func.count()).where(timeline.c.event_id.in_(ids))) == len(ids)

    async with engine.begin() as conn:
        key = await create_key(conn, "reporting-test", "admin")
    transport = httpx.ASGITransport(app=create_app(ctx, spec.routers))
    try:
        await eventually(all_projected, timeout=90, what="every scenario event in the timeline")
        async with httpx.AsyncClient(transport=transport, base_url="http://reporting",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            yield Projected(s, client, ctx)
    finally:
        stop.set()
        await running


def by_group(rows: list[dict], group: str) -> list[dict]:
    return sorted(rows, key=lambda r: (r[group] is None, str(r[group]), r.get("metric", ""),
                                       str(r.get("status")), str(r.get("reason")), str(r.get("root_cause"))))


def assert_rows_match(actual: list[dict], expected: list[dict], group: str) -> None:
    actual, expected = by_group(actual, group), by_group(expected, group)
    assert [r[group] for r in actual] == [r[group] for r in expected]
    for got, want in zip(actual, expected, strict=True):
        for column, value in want.items():
            assert got[column] == (pytest.approx(value, abs=0.002) if isinstance(value, float) else value), \
                f"{group}={want[group]} {column}: got {got[column]}, recomputed {value}"


async def get_report(p: Projected, name: str, **params: str) -> list[dict]:
    response = await p.client.get(f"/v1/reports/{name}", params={**p.window(), **params})
    assert response.status_code == 200, response.text
    return response.json()["rows"]


async def test_an_event_delivered_again_after_its_batch_is_folded_once_without_processed_ids(
        projected: Projected, producer, engine) -> None:
    """Reporting keeps no processed ids (its timeline is keyed by event id): an event redelivered
    in a later batch, after its first batch committed, is kept and folded once all the same."""
    s = projected.scenario
    topic, again = s.events[5]
    async with engine.connect() as conn:
        before = (await conn.execute(select(lead_state).where(lead_state.c.lead_id == again.subject))).one()
    # A marker after it on the same partition (same key; a lead of its own): once the marker is
    # in, so is the redelivery.
    marker = again.model_copy(update={"id": str(uuid.uuid4()), "type": "test.marker", "subject": str(uuid.uuid4())})
    await producer.send_and_wait(topic, again.to_bytes(), key=again.subject.encode())
    await producer.send_and_wait(topic, marker.to_bytes(), key=again.subject.encode())

    async def marker_kept() -> bool:
        async with engine.connect() as conn:
            return await conn.scalar(select(func.count()).where(timeline.c.event_id == marker.id)) == 1
    await eventually(marker_kept, timeout=60, what="the marker in the timeline")
    async with engine.connect() as conn:
        kept = await conn.scalar(select(func.count()).where(timeline.c.event_id == again.id))
        after = (await conn.execute(select(lead_state).where(lead_state.c.lead_id == again.subject))).one()
        tracked = await conn.scalar(text("SELECT count(*) FROM reporting.processed_events "
                                         "WHERE consumer LIKE 'reporting-test-%'"))
    assert kept == 1 and after == before and tracked == 0


@pytest.mark.parametrize("group_by", GROUPS)
async def test_sla_report_matches_a_recomputation_from_the_events(projected: Projected, group_by: str) -> None:
    rows = await get_report(projected, "sla", group_by=group_by)
    assert_rows_match(rows, scenario.expected_sla(projected.scenario, group_by), group_by)


async def test_sla_report_counts_late_answers_in_time_to_first_response(projected: Projected) -> None:
    rows = await get_report(projected, "sla", group_by="policy", metric="first_response")
    [row] = [r for r in rows if r["policy"] == "office"]
    # Business time on the office calendar is never more than wall time, and here often less.
    assert row["ttfr_business_p90_seconds"] <= row["ttfr_p90_seconds"]
    assert row["breached"] > 0 and row["ttfr_p90_seconds"] > 3600  # the late answers are in


async def test_each_follow_up_of_a_cadence_counts_though_the_clock_keeps_its_sla_id(projected: Projected) -> None:
    """The SLA clock starts a next_action cadence's next follow-up under the same sla_id: the first
    follow-up's met must not hide the second's breach, in the report or on the lead."""
    rows = await get_report(projected, "sla", group_by="policy", metric="next_action")
    [row] = [r for r in rows if r["policy"] == "fast"]
    assert (row["started"], row["met"], row["breached"], row["open"]) == (2, 1, 1, 0)
    lead = (await projected.client.get(f"/v1/leads/rep-{seed_of(projected)}-cadence")).json()["lead"]
    assert lead["sla"]["next_action"]["state"] == "breached" and lead["breached"] is True


async def test_a_timer_that_replaced_a_cancelled_one_breaches_the_lead(projected: Projected) -> None:
    """A policy change cancels the lead's first_response timer and starts another: the lead shows
    the new timer's breach, and the breached filter of the lead list finds it."""
    lead_id = f"rep-{seed_of(projected)}-upgraded"
    lead = (await projected.client.get(f"/v1/leads/{lead_id}")).json()["lead"]
    assert lead["sla"]["first_response"]["state"] == "breached" and lead["breached"] is True
    received = lead["received_at"]
    listed = await projected.client.get("/v1/leads", params={"breached": "true", "from": received, "limit": 500})
    assert lead_id in [item["lead_id"] for item in listed.json()["leads"]]


async def test_timer_states_read_as_the_sla_clock_names_them(projected: Projected) -> None:
    """The lead list and the lead view called a running timer `open` where the SLA clock's endpoint
    (and the contract) says `running`."""
    listed = (await projected.client.get("/v1/leads", params={"limit": 500, **projected.window()})).json()["leads"]
    states = {state for lead in listed for state in lead["sla"].values()}
    assert "running" in states and states <= {"running", "paused", "met", "breached", "cancelled"}
    running = next(lead["lead_id"] for lead in listed if "running" in lead["sla"].values())
    shown = (await projected.client.get(f"/v1/leads/{running}")).json()["lead"]["sla"]
    assert "running" in {entry["state"] for entry in shown.values()}


def seed_of(p: Projected) -> str:
    return p.scenario.lead_ids[0].split("-")[1]


@pytest.mark.parametrize("group_by", ["tier", "owner", "team", "source", "week"])
async def test_routing_report_matches_a_recomputation_from_the_events(projected: Projected, group_by: str) -> None:
    rows = await get_report(projected, "routing", group_by=group_by)
    assert_rows_match(rows, scenario.expected_routing(projected.scenario, group_by), group_by)


async def test_dispositions_report_counts_by_status_and_reason(projected: Projected) -> None:
    rows = await get_report(projected, "dispositions", group_by="tier")
    assert rows == scenario.expected_dispositions(projected.scenario)


async def test_breaches_report_splits_by_root_cause(projected: Projected) -> None:
    rows = await get_report(projected, "breaches", group_by="tier")
    assert_rows_match(rows, scenario.expected_breaches(projected.scenario), "tier")


@pytest.mark.parametrize("name", ["sla", "routing", "dispositions", "breaches"])
async def test_each_report_is_also_csv_with_the_same_columns_and_a_header(projected: Projected, name: str) -> None:
    params = {**projected.window(), "group_by": "tier"}
    as_json = (await projected.client.get(f"/v1/reports/{name}", params=params)).json()["rows"]
    response = await projected.client.get(f"/v1/reports/{name}", params=params, headers={"Accept": "text/csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(response.text))
    assert reader.fieldnames == list(as_json[0])
    parsed = list(reader)
    assert len(parsed) == len(as_json) > 0
    for got, want in zip(parsed, as_json, strict=True):
        assert got == {k: "" if v is None else str(v) for k, v in want.items()}


@pytest.mark.parametrize(("accept", "csv_wanted"), [
    ("text/csv", True),
    ("text/csv, application/json;q=0.5", True),
    ("application/json, text/csv;q=0.1", False),  # JSON preferred: a CSV fallback only
    ("text/csv;q=0", False),  # RFC 9110: q=0 means "not acceptable"
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),  # a browser
    ("*/*", False),
])
async def test_csv_is_chosen_by_the_accept_headers_weights(projected: Projected, accept: str,
                                                           csv_wanted: bool) -> None:
    response = await projected.client.get("/v1/reports/sla", params={"group_by": "tier"}, headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv" if csv_wanted else "application/json")


@pytest.mark.parametrize("name", ["sla", "routing", "dispositions", "breaches"])
async def test_a_report_says_it_varies_by_accept_so_no_cache_serves_csv_for_json(projected: Projected,
                                                                                  name: str) -> None:
    """One URL, two representations chosen by Accept (RFC 9110 12.5.5): without `Vary: Accept` a
    browser or proxy cache may hand a dashboard the CSV a spreadsheet asked for, or the reverse."""
    for accept in ("application/json", "text/csv"):
        response = await projected.client.get(f"/v1/reports/{name}", params={"group_by": "tier"},
                                              headers={"Accept": accept})
        assert response.status_code == 200
        assert "accept" in {v.strip().lower() for v in response.headers.get("vary", "").split(",")}, accept


async def test_an_empty_period_is_an_empty_report_and_its_csv_still_has_the_header(projected: Projected) -> None:
    params = {"from": "1999-01-01T00:00:00Z", "to": "1999-01-02T00:00:00Z", "group_by": "owner"}
    assert (await projected.client.get("/v1/reports/sla", params=params)).json() == {"rows": []}
    csv_text = (await projected.client.get("/v1/reports/sla", params=params, headers={"Accept": "text/csv"})).text
    assert csv_text.splitlines() == [",".join(["owner", "metric", "started", "met", "breached", "open", "cancelled",
                                               "compliance", "ttfr_p50_seconds", "ttfr_p90_seconds",
                                               "ttfr_business_p50_seconds", "ttfr_business_p90_seconds"])]


async def test_bad_report_parameters_are_problems_naming_the_field(projected: Projected) -> None:
    bad = await projected.client.get("/v1/reports/sla", params={"group_by": "planet"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert "group_by" in bad.text
    backwards = await projected.client.get("/v1/reports/sla", params={"from": "2031-01-02", "to": "2031-01-01"})
    assert backwards.status_code == 422 and "to" in {e["field"] for e in backwards.json()["errors"]}


async def test_reports_need_an_admin_key(projected: Projected, engine) -> None:
    async with engine.begin() as conn:
        source_key = await create_key(conn, "webform", "source")
    response = await projected.client.get("/v1/reports/sla", headers={"Authorization": f"Bearer {source_key}"})
    assert response.status_code == 403
    assert (await projected.client.get("/v1/reports/sla", headers={"Authorization": ""})).status_code == 401


async def test_an_unknown_event_type_is_kept_in_the_timeline(projected: Projected) -> None:
    lead_id = projected.scenario.lead_ids[0]
    found = (await projected.client.get(f"/v1/leads/{lead_id}")).json()
    assert "lead.frobnicated" in [e["type"] for e in found["timeline"]]
    assert found["lead"]["tier"] == "A" and found["lead"]["status"] == "dispositioned"




# ---- the lead list ------------------------------------------------------------------------------


async def all_pages(p: Projected, **params: str) -> list[dict]:
    leads, cursor, pages = [], None, 0
    while True:
        response = await p.client.get("/v1/leads", params={**p.window(), "limit": "7", **params,
                                                           **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["leads"]) <= 7
        leads += body["leads"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return leads
        assert pages < 20, "the cursor never ends"


async def test_lead_list_pages_through_every_lead_newest_first_exactly_once(projected: Projected) -> None:
    leads = await all_pages(projected)
    assert sorted(lead["lead_id"] for lead in leads) == sorted(projected.scenario.lead_ids)
    received = [lead["received_at"] for lead in leads]
    assert received == sorted(received, reverse=True)
    assert "contact" not in leads[0] and "profile" not in leads[0]  # the list carries no personal data


async def test_a_page_stays_stable_when_a_newer_lead_arrives(projected: Projected) -> None:
    # Past the window the reports use, so no other test sees this lead.
    window = {"from": utc_iso(projected.scenario.start), "to": utc_iso(projected.scenario.end + timedelta(days=5))}
    first = (await projected.client.get("/v1/leads", params={**window, "limit": "5"})).json()
    # A lead received after every other one lands on top; the cursor still continues where page one ended.
    newest = projected.scenario.end + timedelta(days=4)
    async with projected.ctx.engine.begin() as conn:
        await project(conn, [CloudEvent(id=str(uuid.uuid4()), source="test", type="lead.received",
                                        subject=f"late-{uuid.uuid4().hex[:6]}", time=newest,
                                        data={"source": "web", "tier": "C", "received_at": utc_iso(newest)})],
                      None)
    second = (await projected.client.get("/v1/leads", params={**window, "limit": "5",
                                                              "cursor": first["next_cursor"]})).json()
    assert second["leads"][0]["received_at"] < first["leads"][-1]["received_at"]
    top = (await projected.client.get("/v1/leads", params={**window, "limit": "1"})).json()["leads"][0]
    assert top["received_at"] == utc_iso(newest)


@pytest.mark.parametrize("field,value", [("tier", "B"), ("source", "chat"), ("owner_id", "carol"),
                                         ("team_id", "sdr"), ("status", "dispositioned"), ("breached", "true"),
                                         ("breached", "false")])
async def test_lead_list_filters(projected: Projected, field: str, value: str) -> None:
    leads = [lead for lead in await all_pages(projected, **{field: value})
             if lead["lead_id"] in projected.scenario.lead_ids]
    assert leads, f"no lead with {field}={value}"
    expected = value == "true" if field == "breached" else value
    assert all(lead[field] == expected for lead in leads)
    everyone = [lead for lead in await all_pages(projected) if lead["lead_id"] in projected.scenario.lead_ids]
    assert len(leads) == sum(1 for lead in everyone if lead[field] == expected)


async def test_lead_list_refuses_a_forged_cursor_naming_the_field(projected: Projected) -> None:
    response = await projected.client.get("/v1/leads", params={"cursor": "not-a-cursor"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "cursor"
    assert (await projected.client.get("/v1/leads", params={"limit": "0"})).status_code == 422


# ---- the board, in a real browser ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where the screenshot goes; CI can collect this directory.
OUTPUT_DIR = Path(os.environ.get("LEADSLA_TEST_OUTPUT_DIR", Path(__file__).parents[2] / "test-output"))


@pytest.fixture
async def served_board(projected: Projected) -> AsyncIterator[str]:
    """The reporting app on a real port, for a real browser."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(projected.ctx, bootstrap(projected.ctx).routers),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="the board's HTTP server")
    try:
        yield f"http://127.0.0.1:{port}/board"
    finally:
        server.should_exit = True
        await serving


async def chromium(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
        f"--user-data-dir={OUTPUT_DIR / 'chromium-profile'}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
async def test_the_board_renders_in_chromium_with_timers_breaches_and_compliance(
    projected: Projected, served_board: str
) -> None:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    now = projected.ctx.clock.now()
    dom = await chromium("--dump-dom", served_board)
    page = BoardDom.parse(dom)

    _, timers, _ = scenario.facts(projected.scenario)
    ours = set(projected.scenario.lead_ids)
    open_rows = page.rows["open-timers"]
    shown_open = [cells[0] for cells in open_rows if cells[0] in ours]
    expected_open = sorted((t for t in timers.values() if t["state"] == "open"),
                           key=lambda t: (t["due"], t["lead"]))
    assert shown_open == [t["lead"] for t in expected_open]  # nearest to breach first
    overdue = {t["lead"] for t in expected_open if t["due"] < now}
    assert overdue and {cells[0] for cells in open_rows if "overdue" in cells[5]} & ours == overdue

    today = [t["lead"] for t in timers.values()
             if t["state"] == "breached" and t["breached_at"].date() == now.date()]
    shown_breaches = {cells[0] for cells in page.rows["breaches-today"]} & ours
    assert today and shown_breaches == set(today)

    assert {"A", "B", "C"} <= set(page.bars)
    assert all("%" in value for value in page.bars.values())
    assert page.refresh_seconds and int(page.refresh_seconds) > 0  # auto-refresh

    shot = OUTPUT_DIR / "board.png"
    shot.unlink(missing_ok=True)
    await chromium(f"--screenshot={shot}", "--window-size=1280,1000", served_board)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


async def test_the_board_needs_no_key_and_shows_no_contact_data(projected: Projected) -> None:
    response = await projected.client.get("/board", headers={"Authorization": ""})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "@example.com" not in response.text


# ---- replay ---------------------------------------------------------------------------------------


async def every_report(p: Projected) -> dict:
    reports: dict = {}
    for group in GROUPS:
        for name in ("sla", "routing", "dispositions", "breaches"):
            reports[(name, group)] = await get_report(p, name, group_by=group)
    reports["leads"] = await all_pages(p)
    return reports


async def test_replay_rebuilds_the_read_models_and_every_report_is_identical(projected: Projected) -> None:
    before = await every_report(projected)
    result = await rebuild(projected.ctx.engine, projected.ctx.config.config)
    assert result.events >= len({e.id for _, e in projected.scenario.events}) and result.differences == {}
    assert await every_report(projected) == before
    assert before[("sla", "tier")] and before["leads"]  # not two empty reports agreeing


async def test_replay_verify_finds_a_damaged_row_and_changes_nothing_until_rebuilt(projected: Projected) -> None:
    damaged = projected.scenario.lead_ids[3]
    async with projected.ctx.engine.begin() as conn:
        await conn.execute(update(lead_state).where(lead_state.c.lead_id == damaged).values(tier="Z"))
    verified = await rebuild(projected.ctx.engine, projected.ctx.config.config, verify=True)
    assert verified.differences == {"reporting.leads": 2}  # the live row, and its rebuilt twin
    # Named, with what a replay would change: the lead and the column, live -> rebuilt.
    [example] = verified.examples["reporting.leads"]
    assert example.startswith(f"lead_id={damaged}: ") and "tier 'Z' -> " in example, example
    assert (await projected.client.get(f"/v1/leads/{damaged}")).json()["lead"]["tier"] == "Z"  # rolled back

    await rebuild(projected.ctx.engine, projected.ctx.config.config)
    assert (await projected.client.get(f"/v1/leads/{damaged}")).json()["lead"]["tier"] != "Z"
    assert (await rebuild(projected.ctx.engine, projected.ctx.config.config, verify=True)).differences == {}


async def test_the_replay_command_reports_events_per_second_and_exits_1_on_a_difference(
    projected: Projected, database_url: str
) -> None:
    async with projected.ctx.engine.begin() as conn:
        await apply_config(conn, scenario.CONFIG)  # replay measures business time on the active calendars
    env = {**os.environ, "LEADSLA_DATABASE_URL": database_url}
    leadsla = str(Path(sys.executable).parent / "leadsla")

    async def run(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(leadsla, "replay", "reporting", *args, env=env,
                                                       stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
        return process.returncode, out.decode()

    code, out = await run()
    assert code == 0 and "events/s" in out, out
    code, out = await run("--verify")
    assert code == 0 and "match" in out, out
    async with projected.ctx.engine.begin() as conn:
        await conn.execute(update(lead_state).where(lead_state.c.lead_id == projected.scenario.lead_ids[4])
                           .values(status="lost"))
    code, out = await run("--verify")
    assert code == 1 and "reporting.leads" in out, out
    assert f"lead_id={projected.scenario.lead_ids[4]}: status 'lost' -> " in out, out  # which row, what changes
    assert (await run())[0] == 0 and (await run("--verify"))[0] == 0


async def test_the_replay_command_restores_deleted_rows(projected: Projected, database_url: str) -> None:
    async with projected.ctx.engine.begin() as conn:
        await apply_config(conn, scenario.CONFIG)
    before = await every_report(projected)
    gone = projected.scenario.lead_ids[:5]
    async with projected.ctx.engine.begin() as conn:
        await conn.execute(delete(sla_timers).where(sla_timers.c.lead_id.in_(gone)))
        await conn.execute(delete(lead_state).where(lead_state.c.lead_id.in_(gone)))
    assert (await projected.client.get(f"/v1/leads/{gone[0]}")).status_code == 404
    leadsla = str(Path(sys.executable).parent / "leadsla")
    process = await asyncio.create_subprocess_exec(leadsla, "replay", "reporting",
                                                   env={**os.environ, "LEADSLA_DATABASE_URL": database_url},
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, out.decode()
    assert (await projected.client.get(f"/v1/leads/{gone[0]}")).status_code == 200
    assert await every_report(projected) == before


# ---- the overdue-timer gauge -------------------------------------------------------------------


def overdue_gauge() -> dict[tuple[str, str], float]:
    [family] = metrics.sla_overdue_timers.collect()
    return {(s.labels["metric"], s.labels["tier"]): s.value for s in family.samples}


async def test_open_timers_past_their_deadline_show_on_the_overdue_gauge(projected: Projected) -> None:
    """What a stopped SLA clock looks like: timers still open after their deadline."""
    now = projected.ctx.clock.now()
    # Before the scenario nothing of it is overdue: whatever shows then belongs to other tests.
    await measure_overdue(dataclasses.replace(projected.ctx, clock=ManualClock(projected.scenario.start)))
    baseline = overdue_gauge()
    await measure_overdue(projected.ctx)
    _, timers, _ = scenario.facts(projected.scenario)
    expected: dict[tuple[str, str], int] = {}
    for t in timers.values():
        if t["state"] == "open" and t["due"] < now - timedelta(minutes=1):
            expected[("first_response", t["tier"])] = expected.get(("first_response", t["tier"]), 0) + 1
    assert expected
    measured = overdue_gauge()
    keys = set(measured) | set(expected)
    assert {k: measured.get(k, 0) - baseline.get(k, 0) for k in keys} == {k: expected.get(k, 0) for k in keys}
    assert "leadsla_sla_overdue_timers" in metrics.exposition("reporting").decode()
    assert "leadsla_sla_overdue_timers" not in metrics.exposition("sla_clock").decode()
