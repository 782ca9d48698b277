"""Postgres stopped under load: write endpoints answer 503 problem+json with Retry-After (never
500), /readyz says the database is unreachable, consumers wait instead of dead-lettering good
records, and everything recovers by itself when Postgres is back. Runs against a Postgres server
of its own, so stopping it disturbs no other test."""
from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from leadsla.devstack import EmbeddedPostgres
from services.intake.bootstrap import bootstrap as intake_bootstrap
from shared.auth import create_key
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig
from shared.consumer import EventConsumer
from shared.db import database_outage, deadletters, make_engine
from shared.eventstore import EVENTS
from shared.http import create_app
from shared.migrate import upgrade
from shared.runtime import ServiceContext, wire
from shared.settings import Settings
from tests.support import create_topic, eventually

CONFIG = """
tiers:
  default: C
  rules: [{tier: A, when: {intent: [demo_request]}}]
"""


def lead(email: str | None = None) -> dict:
    return {"contact": {"email": email or f"{uuid.uuid4().hex[:10]}@example.com"}, "intent": {"type": "demo_request"}}


@pytest.fixture
async def own_postgres(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    engine = make_engine(url)
    await upgrade(engine)
    yield server, engine
    await engine.dispose()
    server.stop()


async def test_a_database_outage_gives_503s_and_waits_then_recovers_losing_nothing(
    own_postgres, producer, kafka_bootstrap, clock
) -> None:
    server, engine = own_postgres
    async with engine.begin() as conn:
        key = await create_key(conn, "webform", "source")
    settings = Settings(database_url="postgresql://unused", kafka_bootstrap=kafka_bootstrap, retry_after_seconds=7)
    ctx = ServiceContext(name="intake", settings=settings, engine=engine, producer=producer, clock=clock,
                         config=ConfigHolder(engine, VersionedConfig(1, parse_config(CONFIG))),
                         relay_wakeup=asyncio.Event())
    spec = wire(ctx, intake_bootstrap)
    app = create_app(ctx, spec.routers, spec.on_invalid_request)

    # A consumer on a topic of the test's own; `decoded` tells that it has the record in hand.
    topic = await create_topic(kafka_bootstrap, partitions=1)
    decoded = asyncio.Event()
    real = spec.subscriptions[0]

    def decode(record):
        decoded.set()
        return real.decode(record)

    consumer = EventConsumer(replace(real, group=f"outage-{uuid.uuid4().hex[:6]}", topics=(topic,), decode=decode),
                             service="intake", bootstrap=kafka_bootstrap, engine=engine,
                             relay_wakeup=ctx.relay_wakeup, clock=clock, projection=spec.projection)
    stop = asyncio.Event()
    consuming = asyncio.create_task(consumer.run(stop))
    await eventually(consumer.ready.is_set, what="the consumer to join")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake",
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        assert (await client.post("/v1/leads", json=lead())).status_code == 201

        server.stop()
        database_outage.up()
        kafka_email = f"{uuid.uuid4().hex[:10]}@example.com"
        await producer.send_and_wait(topic, json.dumps(lead(kafka_email)).encode())
        await eventually(lambda: decoded.is_set() and database_outage.down_since is not None,
                         what="the consumer to meet the outage")

        responses = await asyncio.gather(*(client.post("/v1/leads", json=lead()) for _ in range(20)))
        assert {r.status_code for r in responses} == {503}
        for r in responses:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["retry-after"] == "7"
            assert r.json()["status"] == 503
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("unreachable")

        server.start()
        async def database_ready() -> bool:
            return (await client.get("/readyz")).json()["checks"]["database"] == "ok"

        await eventually(database_ready, what="the database check to recover")
        accepted = await eventually(
            lambda: _status_of(client.post("/v1/leads", json=lead())), what="a 201 after the outage")
        assert accepted == 201

        async def kafka_lead_arrived() -> bool:
            t = EVENTS["intake"]
            async with engine.connect() as conn:
                return bool(await conn.scalar(select(func.count()).select_from(t).where(
                    t.c.event_type == "lead.received", t.c.payload.like(f'%"{kafka_email}"%'.encode()))))

        await eventually(kafka_lead_arrived, what="the record consumed during the outage to become a lead")
    stop.set()
    await consuming
    async with engine.connect() as conn:
        letters = await conn.scalar(select(func.count()).select_from(deadletters).where(deadletters.c.topic == topic))
    assert letters == 0


async def _status_of(request) -> int | None:
    response = await request
    return response.status_code if response.status_code != 503 else None


async def test_no_free_database_connection_is_a_503_not_a_500(database_url, producer, kafka_bootstrap, clock) -> None:
    """Found by the long chaos run: right after Postgres came back, requests queued for a pooled
    connection past the pool timeout (sqlalchemy's TimeoutError) and got 500s with a traceback."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from shared.settings import database_url_for_asyncpg

    engine = create_async_engine(database_url_for_asyncpg(database_url), pool_size=1, max_overflow=0,
                                 pool_timeout=0.2)
    async with engine.begin() as conn:
        key = await create_key(conn, "webform", "source")
    settings = Settings(database_url="postgresql://unused", kafka_bootstrap=kafka_bootstrap, retry_after_seconds=3)
    ctx = ServiceContext(name="intake", settings=settings, engine=engine, producer=producer, clock=clock,
                         config=ConfigHolder(engine, VersionedConfig(1, parse_config(CONFIG))),
                         relay_wakeup=asyncio.Event())
    spec = wire(ctx, intake_bootstrap)
    app = create_app(ctx, spec.routers, spec.on_invalid_request)
    try:
        async with engine.connect() as held, httpx.AsyncClient(  # the pool's only connection, taken
                transport=httpx.ASGITransport(app=app), base_url="http://intake",
                headers={"Authorization": f"Bearer {key}"}) as client:
            await held.execute(text("SELECT 1"))
            response = await client.post("/v1/leads", json=lead())
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "3"
        assert response.headers["content-type"] == "application/problem+json"
    finally:
        await engine.dispose()
