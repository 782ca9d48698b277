"""Intake's tables are a projection of its event store: realistic traffic through the real app and
handlers on real Postgres, then a rebuild from the store matches the live tables; a corrupted row is
reported; `leadsla replay intake` restores deleted rows. Runs in a database of its own, so that no
other test's rows (or retention) stand between the store and the tables."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError

from services.intake.adapters import PostgresIntakeStore
from services.intake.bootstrap import bootstrap
from services.intake.handlers import RawPosition, expire_pending, park_activity
from services.intake.projection import PROJECTION
from services.intake.tables import leads
from shared.auth import create_key
from shared.clock import ManualClock
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig
from shared.db import deadletters
from shared.events import CloudEvent, deterministic_id
from shared.http import create_app
from shared.replay import rebuild
from shared.runtime import ServiceContext, wire
from shared.settings import Settings
from shared.uow import UnitOfWork
from tests.integration.own_database import fresh_database
from tests.support import eventually

CONFIG = """
tiers:
  default: C
  rules: [{tier: A, when: {intent: [demo_request]}}]
dedupe: {window: 30d, match_on: [email, phone]}
disposition_reasons:
  disqualified: [no_budget, student]
intake:
  activity_wait: 60s
"""
NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
async def database(postgres_server_url: str):
    """A database of this module's own, migrated to head: (url, engine)."""
    async with fresh_database(postgres_server_url, "leadsla_intake_replay") as own:
        yield own.url, own.engine


def email() -> str:
    return f"{uuid.uuid4().hex[:8]}@example.com"


def activity_event(ref: str, **data) -> CloudEvent:
    return CloudEvent(id=str(uuid.uuid4()), source="crm", type="activity", subject=ref, time=NOW,
                      data={"lead_id": ref, **data})


@pytest.fixture(scope="module")
async def traffic(database):
    """Every kind of request intake takes, through the app (HTTP) and the raw-topic handlers."""
    url, engine = database
    clock = ManualClock(NOW)
    ctx = ServiceContext(name="intake", settings=Settings(database_url=url), engine=engine, producer=None,
                         clock=clock, config=ConfigHolder(engine, VersionedConfig(1, parse_config(CONFIG))),
                         relay_wakeup=asyncio.Event())
    spec = wire(ctx, bootstrap)
    async with engine.begin() as conn:
        key = await create_key(conn, "webform", "source")
    app = create_app(ctx, spec.routers, spec.on_invalid_request)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake",
                                 headers={"Authorization": f"Bearer {key}"}) as api:
        async def post(body, **headers):
            response = await api.post("/v1/leads", json=body, headers=headers)
            assert response.status_code in (200, 201), response.text
            return response.json()

        # New leads, concurrent (group commit), some with keys and national phones.
        bodies = [{"contact": {"email": email(), "phone": f"(415) 555-01{i:02d}", "country": "US"},
                   "company": {"name": "Acme", "size": 120}, "intent": {"type": "Demo Request"}, "utm_source": "ads"}
                  for i in range(12)]
        firsts = await asyncio.gather(*(post(b, **({"Idempotency-Key": f"k-{i}"} if i % 2 else {}))
                                        for i, b in enumerate(bodies)))
        assert {f["status"] for f in firsts} == {"accepted"}
        assert (await post(bodies[1], **{"Idempotency-Key": "k-1"}))["status"] == "duplicate"  # replayed key
        # A repeat by email with a higher intent upgrades; a lower one merges only.
        person = email()
        low = await post({"contact": {"email": person}, "intent": {"type": "ebook download"}})
        assert (await post({"contact": {"email": person}, "intent": {"type": "demo_request"}},
                           **{"Idempotency-Key": "up-1"}))["upgraded"] is True
        await post({"contact": {"email": person}, "intent": {"type": "newsletter"}})
        # The same external id again, under a new key: the key now answers with the first lead.
        crm = await post({"external_id": "crm-1", "contact": {"email": email()}})
        assert (await post({"external_id": "crm-1", "contact": {"email": email()}},
                           **{"Idempotency-Key": "crm-again"}))["lead_id"] == crm["lead_id"]
        # A colleague on the same switchboard is a lead of their own; an unreadable phone is kept as sent.
        await post({"contact": {"email": email(), "phone": "(415) 555-0100", "first_name": "Other"}})
        await post({"contact": {"email": email(), "phone": "n/a"}, "company": {"country": "Deutschland"}})
        # A batch with a repeat inside it.
        repeat = email()
        batch = await api.post("/v1/leads:batch", headers={"Idempotency-Key": "b-1"}, json={"leads": [
            {"contact": {"email": email()}}, {"contact": {"email": repeat}}, {"contact": {"email": repeat}},
            {"contact": {"email": email()}, "intent": {"type": "demo_request"}}, {"nothing": True}]})
        assert [r["status"] for r in batch.json()["results"]] == ["accepted", "accepted", "duplicate", "accepted",
                                                                   "invalid"]
        # PATCH: corrections, an attribute, consent; then nothing to change.
        patched = firsts[0]["lead_id"]
        response = await api.patch(f"/v1/leads/{patched}", json={
            "contact": {"phone": "+44 20 7946 0958", "country": "GB"}, "crm_stage": "MQL", "score": "42"})
        assert response.status_code == 200 and response.json()["changed"], response.text
        response = await api.patch(f"/v1/leads/{low['lead_id']}", json={"consent": {"contact": False}})
        assert response.status_code == 200, response.text
        # Activities: a call, a disposition, an opt-out, and a repeat of the call.
        touched = firsts[2]["lead_id"]
        for body in ({"type": "call", "external_id": "c-1", "outcome": "Connected"},
                     {"type": "disposition", "disposition": {"status": "disqualified", "reason": "student"}},
                     {"type": "opt_out", "reason": "asked"}, {"type": "call", "external_id": "c-1"}):
            response = await api.post(f"/v1/leads/{touched}/activities", json=body)
            assert response.status_code == 202, response.text

    # Activities read from Kafka before their lead: one released when it comes, one expires, one waits.
    position = iter(range(100))

    async def park(ref: str, **data) -> None:
        async with ctx.uow() as uow:
            event = activity_event(ref, **data)
            await park_activity(uow, ctx.config.config, ref, event,
                                RawPosition("leads.activities.raw", 0, next(position), ref, event.to_bytes()),
                                clock.now())
            await uow.commit()

    await park("crm-late", type="call", external_id="late-1")
    await park("crm-late", type="meeting", outcome="booked")
    await park("crm-never", type="note")
    await park("crm-merged", type="call", external_id="merged-1")
    clock.advance(timedelta(seconds=30))
    async with api_client(ctx, app, key) as api:
        released = await api.post("/v1/leads", json={"external_id": "crm-late", "contact": {"email": email()}})
        assert released.status_code == 201
        # A repeat of a known person under an external id of its own: merged, and the touch held for it released.
        merged = await api.post("/v1/leads", json={"external_id": "crm-merged", "contact": {"email": person}})
        assert merged.json() == {"lead_id": low["lead_id"], "status": "duplicate"}
        touched = await api.post("/v1/leads/crm-merged/activities", json={"type": "email"})
        assert touched.status_code == 202 and touched.json()["lead_id"] == low["lead_id"]
    clock.advance(timedelta(seconds=45))  # crm-never's wait is over
    await park("crm-waiting", type="sms")
    async with ctx.uow() as uow:
        assert await expire_pending(uow, PostgresIntakeStore(uow.conn), clock.now()) == ["leads.activities.raw"]
        await uow.commit()
    async with engine.connect() as conn:
        counts = {t.name: await conn.scalar(select(func.count()).select_from(t)) for t in PROJECTION.tables}
        kept = await conn.scalar(select(deadletters.c.original).where(deadletters.c.id == deterministic_id(
            "deadletter", "pending", "leads.activities.raw", "0", "2")))  # crm-never's touch, kept whole
        assert kept is not None and json.loads(kept)["data"]["type"] == "note"
    assert counts["leads"] >= 20 and counts["idempotency_keys"] >= 8 and counts["activities"] >= 7
    assert counts["merged_external_ids"] == 1
    assert counts["pending_activities"] == 1
    return engine


async def waiting_for_a_lock(conn) -> bool:
    waiting = await conn.scalar(text("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE wait_event_type = 'Lock' AND datname = current_database()"))
    await conn.rollback()
    return bool(waiting)


def api_client(ctx, app, key):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake",
                             headers={"Authorization": f"Bearer {key}"})


async def test_a_rebuild_from_the_store_matches_the_live_tables_after_realistic_traffic(traffic) -> None:
    result = await rebuild(traffic, PROJECTION, verify=True)
    assert result.events > 40
    assert result.differences == {}, result.examples


async def test_verify_reports_a_corrupted_row(traffic) -> None:
    engine = traffic
    async with engine.begin() as conn:
        lead_id, tier = (await conn.execute(select(leads.c.lead_id, leads.c.tier).limit(1))).one()
        await conn.execute(update(leads).where(leads.c.lead_id == lead_id).values(tier="Z"))
    try:
        result = await rebuild(engine, PROJECTION, verify=True)
        assert result.differences == {"leads": 2}  # the live row and the rebuilt one
        assert any("'Z'" in example for example in result.examples["leads"])
    finally:
        async with engine.begin() as conn:
            await conn.execute(update(leads).where(leads.c.lead_id == lead_id).values(tier=tier))
    assert (await rebuild(engine, PROJECTION, verify=True)).differences == {}


async def test_leadsla_replay_restores_deleted_rows(traffic, database) -> None:
    url, engine = database
    tables = PROJECTION.tables
    async with engine.connect() as conn:
        before = {t.name: await conn.scalar(select(func.count()).select_from(t)) for t in tables}
    async with engine.begin() as conn:
        for table in tables:
            await conn.execute(delete(table))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "leadsla.cli", "replay", "intake", cwd=ROOT,
        env={**os.environ, "LEADSLA_DATABASE_URL": url, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, output.decode()
    assert "rebuilt intake from" in output.decode()
    async with engine.connect() as conn:
        after = {t.name: await conn.scalar(select(func.count()).select_from(t)) for t in tables}
    assert after == before
    assert (await rebuild(engine, PROJECTION, verify=True)).differences == {}


async def test_an_opt_out_and_a_patch_on_one_lead_at_once_keep_both(traffic) -> None:
    """Two writers of one lead: the patch waits for the opt-out's lock on the lead, then decides
    from the state the opt-out left (it used to decide from the state before, conflict on the
    lead's stream at commit and need a retry), and both changes are kept."""
    from services.intake.domain import ActivityIn
    from services.intake.handlers import record_activity, submit_lead, update_lead
    from services.intake.normalize import read_submission
    from shared.uow import UnitOfWork

    engine, config = traffic, parse_config(CONFIG)

    def read(body: dict, partial: bool = False):
        return read_submission(body, config.intake.source("webform"), {}, partial=partial)

    def unit() -> UnitOfWork:
        return UnitOfWork(engine, "intake", projection=PROJECTION)

    async with unit() as uow:
        accepted = await submit_lead(uow, PostgresIntakeStore(uow.conn), config, read({"contact": {"email": email()}}),
                                     source="webform", now=NOW)
        await uow.commit()
    lead_id = accepted.lead_id
    opting, patching = unit(), unit()
    async with opting, patching:
        await record_activity(opting, PostgresIntakeStore(opting.conn), config, lead_id,
                              ActivityIn(type="opt_out"), now=NOW)
        deciding = asyncio.create_task(update_lead(patching, PostgresIntakeStore(patching.conn), config, lead_id,
                                                   read({"company": {"name": "Acme"}}, partial=True), now=NOW))
        async with engine.connect() as conn:
            await eventually(lambda: waiting_for_a_lock(conn), what="the patch to wait for the lead's lock")
        await opting.commit()
        await deciding
        await patching.commit()  # no conflict: it read the lead after the opt-out
    async with engine.connect() as conn:
        record = await conn.scalar(select(leads.c.record).where(leads.c.lead_id == lead_id))
    assert record["contactable"] is False and record["company"]["name"] == "Acme"
    assert (await rebuild(engine, PROJECTION, verify=True)).differences == {}


async def locks_awaited(conn) -> int:
    waiting = await conn.scalar(text("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE wait_event_type = 'Lock' AND datname = current_database()"))
    await conn.rollback()
    return waiting


async def test_a_rebuild_while_intake_writes_keeps_what_was_committed_during_it(traffic) -> None:
    """`leadsla replay intake` with intake running: a patch that commits while the rebuilt
    tables are swapped in is in them afterwards, not deleted with the rows it changed."""
    from services.intake.handlers import submit_lead, update_lead
    from services.intake.normalize import read_submission
    from shared.eventstore import append_lock_key
    from shared.uow import UnitOfWork

    engine, config = traffic, parse_config(CONFIG)

    def read(body: dict, partial: bool = False):
        return read_submission(body, config.intake.source("webform"), {}, partial=partial)

    async with UnitOfWork(engine, "intake", projection=PROJECTION) as uow:
        accepted = await submit_lead(uow, PostgresIntakeStore(uow.conn), config, read({"contact": {"email": email()}}),
                                     source="webform", now=NOW)
        await uow.commit()

    async def patch() -> None:  # updates the lead's row, then waits for the store's append lock
        async with UnitOfWork(engine, "intake", projection=PROJECTION) as uow:
            await update_lead(uow, PostgresIntakeStore(uow.conn), config, accepted.lead_id,
                              read({"company": {"name": "Globex"}}, partial=True), now=NOW)
            await uow.commit()

    async with engine.connect() as committing, engine.connect() as watch:
        # Another of intake's commits holds the append lock: the patch waits behind it.
        await committing.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": append_lock_key("intake")})
        patching = asyncio.create_task(patch())
        await eventually(lambda: waiting_for_a_lock(watch), what="the patch to wait for the append lock")
        rebuilding = asyncio.create_task(rebuild(engine, PROJECTION, verify=False))

        async def both_waiting() -> bool:
            return await locks_awaited(watch) >= 2

        await eventually(both_waiting, what="the rebuild to wait too")
        await committing.commit()
        await patching
        await rebuilding
    async with engine.connect() as conn:
        record = await conn.scalar(select(leads.c.record).where(leads.c.lead_id == accepted.lead_id))
    assert record["company"]["name"] == "Globex"
    assert (await rebuild(engine, PROJECTION, verify=True)).differences == {}


async def test_a_rebuild_that_deadlocks_with_a_live_commit_swaps_again(traffic) -> None:
    """A commit that wrote a live row and then asks for the append lock the swap holds, while the
    swap waits to delete that row: Postgres ends one of the two. Once, when that was the rebuild,
    `leadsla replay` failed; now the swap runs again and the writer's commit goes through."""
    from services.intake.handlers import submit_lead
    from services.intake.normalize import read_submission
    from shared.eventstore import append_lock_key

    engine, config = traffic, parse_config(CONFIG)
    async with UnitOfWork(engine, "intake", projection=PROJECTION) as uow:
        accepted = await submit_lead(uow, PostgresIntakeStore(uow.conn), config, read_submission(
            {"contact": {"email": email()}}, config.intake.source("webform"), {}), source="webform", now=NOW)
        await uow.commit()

    async with engine.connect() as writer, engine.connect() as watch:
        # A live commit's first write (it changes nothing, so the store and the tables still agree).
        await writer.execute(update(leads).where(leads.c.lead_id == accepted.lead_id).values(record=leads.c.record))
        rebuilding = asyncio.create_task(rebuild(engine, PROJECTION, verify=False))
        await eventually(lambda: waiting_for_a_lock(watch), what="the swap to wait for the writer's row")
        try:  # the cycle closes; whichever Postgres ends, the other goes on
            await writer.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": append_lock_key("intake")})
        except DBAPIError:
            await writer.rollback()
        else:
            await writer.commit()
        result = await rebuilding
    assert result.events > 0
    assert (await rebuild(engine, PROJECTION, verify=True)).differences == {}
