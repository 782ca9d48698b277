"""Postgres stopped, or frozen (its processes SIGSTOPped: connections stay open and nothing
answers), under load: write endpoints answer 503 problem+json with Retry-After (never 500, never
a hang), /readyz says the database is unreachable, consumers wait instead of dead-lettering good
records, and everything recovers by itself when Postgres is back. Runs against a Postgres server
of its own, so stopping or freezing it disturbs no other test."""
from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text

from leadsla.devstack import EmbeddedPostgres
from services.intake.bootstrap import bootstrap as intake_bootstrap
from services.router.bootstrap import bootstrap as router_bootstrap
from shared.auth import create_key
from shared.config import parse_config
from shared.config_store import ConfigHolder, VersionedConfig
from shared.consumer import EventConsumer
from shared.db import database_outage, deadletters, make_engine
from shared.events import TOPIC_INTAKE
from shared.eventstore import EVENTS
from shared.http import create_app, database_check
from shared.migrate import upgrade
from shared.outbox import OutboxRelay
from shared.runtime import ServiceContext, ServiceSpec, service_engine, wire
from shared.settings import Settings
from tests.support import create_topic, eventually, published_events, start_group_at_end

CONFIG = """
tiers:
  default: C
  rules: [{tier: A, when: {intent: [demo_request]}}]
owners: [{id: ann}]
teams: [{id: sales, members: [ann]}]
routing:
  rules: [{id: everyone, team: sales}]
"""


def lead(email: str | None = None) -> dict:
    return {"contact": {"email": email or f"{uuid.uuid4().hex[:10]}@example.com"}, "intent": {"type": "demo_request"}}


@pytest.fixture
async def own_postgres(tmp_path: Path):
    """A Postgres server of the test's own, migrated; stopped at the end."""
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    engine = make_engine(url)
    await upgrade(engine)
    await engine.dispose()
    yield server, url
    server.stop()


def service_context(name: str, url: str, producer, kafka_bootstrap: str, clock, **settings) -> ServiceContext:
    """A service's context as `leadsla serve` builds it (its engine with the statement timeout)."""
    settings = Settings(database_url=url, kafka_bootstrap=kafka_bootstrap, **settings)
    engine = service_engine(name, settings)
    return ServiceContext(name=name, settings=settings, engine=engine, producer=producer, clock=clock,
                          config=ConfigHolder(engine, VersionedConfig(1, parse_config(CONFIG))),
                          relay_wakeup=asyncio.Event())


@dataclass
class IntakeUnderTest:
    """Intake in-process as `leadsla serve` wires it, with a source key, and a topic of the test's
    own for its raw-topic consumer; `decoded` tells that the consumer has a record in hand."""

    ctx: ServiceContext
    spec: ServiceSpec
    app: FastAPI
    key: str
    topic: str
    decoded: asyncio.Event

    def raw_consumer(self, group: str, kafka_bootstrap: str, clock) -> EventConsumer:
        real = self.spec.subscriptions[0]

        def decode(record):
            self.decoded.set()
            return real.decode(record)

        return EventConsumer(replace(real, group=group, topics=(self.topic,), decode=decode), service="intake",
                             bootstrap=kafka_bootstrap, engine=self.ctx.engine, relay_wakeup=self.ctx.relay_wakeup,
                             clock=clock, projection=self.spec.projection)


async def intake_under_test(url: str, producer, kafka_bootstrap: str, clock) -> IntakeUnderTest:
    ctx = service_context("intake", url, producer, kafka_bootstrap, clock, retry_after_seconds=7)
    async with ctx.engine.begin() as conn:
        key = await create_key(conn, "webform", "source")
    spec = wire(ctx, intake_bootstrap)
    return IntakeUnderTest(ctx, spec, create_app(ctx, spec.routers, spec.on_invalid_request), key,
                           await create_topic(kafka_bootstrap, partitions=1), asyncio.Event())


async def test_a_database_outage_gives_503s_and_waits_then_recovers_losing_nothing(
    own_postgres, producer, kafka_bootstrap, clock
) -> None:
    server, url = own_postgres
    intake = await intake_under_test(url, producer, kafka_bootstrap, clock)
    engine, key, app, topic, decoded = intake.ctx.engine, intake.key, intake.app, intake.topic, intake.decoded
    consumer = intake.raw_consumer(f"outage-{uuid.uuid4().hex[:6]}", kafka_bootstrap, clock)
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
            assert r.json()["status"] == 503 and r.json()["errors"] == []  # the shape every problem has
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
    await engine.dispose()


async def test_a_frozen_database_gives_503s_in_bounded_time_and_everything_recovers(
    own_postgres, producer, kafka_bootstrap, clock
) -> None:
    """Postgres frozen (SIGSTOP): the connections stay open and nothing answers. Without a
    statement timeout a request waited for as long as the freeze lasted."""
    server, url = own_postgres
    intake = await intake_under_test(url, producer, kafka_bootstrap, clock)
    router = service_context("router", url, producer, kafka_bootstrap, clock)
    router_spec = wire(router, router_bootstrap)
    key, app, topic, decoded = intake.key, intake.app, intake.topic, intake.decoded

    # Intake's relay and its raw-topic consumer (on a topic of the test's own), and the router's
    # consumer of leads.intake, from the topic's end: everything that must carry on by itself.
    routing_group = f"router-frozen-{uuid.uuid4().hex[:6]}"
    await start_group_at_end(kafka_bootstrap, routing_group, TOPIC_INTAKE)
    consumers = [
        intake.raw_consumer(f"frozen-{uuid.uuid4().hex[:6]}", kafka_bootstrap, clock),
        EventConsumer(replace(router_spec.subscriptions[0], group=routing_group), service="router",
                      bootstrap=kafka_bootstrap, engine=router.engine, relay_wakeup=router.relay_wakeup,
                      clock=clock, projection=router_spec.projection),
    ]
    relay = OutboxRelay(intake.ctx.engine, "intake", producer, intake.ctx.relay_wakeup)
    stop = asyncio.Event()
    running = [asyncio.create_task(c.run(stop)) for c in consumers] + [asyncio.create_task(relay.run(stop))]

    async def routed(lead_id: str) -> bool:
        return "lead.assigned" in [e.type for e in await published_events(router.engine, "router", lead_id)]

    async def lead_of(email: str) -> str | None:
        t = EVENTS["intake"]
        async with intake.ctx.engine.connect() as conn:
            return await conn.scalar(select(t.c.key).where(
                t.c.event_type == "lead.received", t.c.payload.like(f'%"{email}"%'.encode())))

    try:
        for consumer in consumers:
            await eventually(consumer.ready.is_set, what="the consumers to join")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            first = await client.post("/v1/leads", json=lead())
            assert first.status_code == 201
            await eventually(lambda: routed(first.json()["lead_id"]), what="a lead routed before the freeze")

            kafka_email = f"{uuid.uuid4().hex[:10]}@example.com"
            refused = [lead() for _ in range(8)]
            # Open connections in the pool, as a service under traffic has: the requests get
            # connections to a server that does not answer (a new one meets the connect timeout).
            await _open_pooled_connections(intake.ctx.engine, 5)
            with server.frozen():
                database_outage.up()
                await producer.send_and_wait(topic, json.dumps(lead(kafka_email)).encode())
                await eventually(decoded.is_set, what="the consumer to take the record")
                # Bounded by a generous deadline: before the statement timeout these never came back.
                responses = await asyncio.wait_for(
                    asyncio.gather(*(client.post("/v1/leads", json=body) for body in refused)), 60)
                assert {r.status_code for r in responses} == {503}, [r.text for r in responses]
                for r in responses:
                    assert r.headers["content-type"] == "application/problem+json"
                    assert r.headers["retry-after"] == "7"
                ready = await asyncio.wait_for(client.get("/readyz"), 30)
                assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("unreachable")
                assert database_outage.down_since is not None

            accepted = await eventually(lambda: _status_of(client.post("/v1/leads", json=lead())),
                                        what="a 201 after the freeze")
            assert accepted == 201
            retried = await client.post("/v1/leads", json=refused[0])  # a sender retrying after Retry-After
            assert retried.status_code == 201 and retried.json()["status"] == "accepted"
            await eventually(lambda: routed(retried.json()["lead_id"]), what="the retried lead routed")
            kafka_lead = await eventually(lambda: lead_of(kafka_email), what="the record taken during the freeze")
            await eventually(lambda: routed(kafka_lead), what="the record taken during the freeze routed")
        # Nothing of the refused requests was written (the retried one was "accepted", not a duplicate).
        for body in refused[1:]:
            assert await lead_of(body["contact"]["email"]) is None
    finally:
        stop.set()
        await asyncio.gather(*running)
        async with intake.ctx.engine.connect() as conn:
            letters = await conn.scalar(select(func.count()).select_from(deadletters))
        await intake.ctx.engine.dispose()
        await router.engine.dispose()
    assert letters == 0


async def _open_pooled_connections(engine, count: int) -> None:
    """`count` connections opened at once and given back: the pool keeps them open."""
    async with contextlib.AsyncExitStack() as held:
        for _ in range(count):
            conn = await held.enter_async_context(engine.connect())
            await conn.execute(text("SELECT 1"))


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


async def test_readiness_answers_within_its_bound_on_a_frozen_database(own_postgres) -> None:
    """An audit found /readyz taking 5 s, not 3, at the start of a freeze: the check gave up on
    its query, then waited for it to wind down: asyncpg cancels a query through a new connection,
    which a frozen server never accepts (the 5 s connect timeout). The check now answers at its own
    bound (1 s here, well inside the 3 s deadline; the old way took 6 s), and what it gave up on
    ends in the background."""
    server, url = own_postgres
    engine = make_engine(url, service="intake", statement_timeout=60)
    try:
        await _open_pooled_connections(engine, 2)
        assert await database_check(engine) is not None
        with server.frozen():
            with pytest.raises(TimeoutError, match="no answer within 1 s"):  # not the test's deadline
                await asyncio.wait_for(database_check(engine, 1.0), 3)
    finally:
        await engine.dispose()
