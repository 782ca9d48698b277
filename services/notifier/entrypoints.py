"""The notifier's entrypoints: the consumer of lead, routing, SLA and its own events; the loops
that fire escalation steps, deliver and prune; the HTTP routes for CRM event subscriptions
(admin) and a lead's notifications."""
from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import timedelta
from typing import Any

import httpx
import structlog
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.aio import run_loop
from shared.config import is_http_url
from shared.consumer import Subscription, bind
from shared.events import (
    TOPIC_INTAKE,
    TOPIC_NOTIFICATIONS,
    TOPIC_ROUTING,
    TOPIC_SLA,
    CloudEvent,
    utc_iso,
)
from shared.eventstore import retry_on_conflict
from shared.http import ProblemError, not_found, require_key
from shared.runtime import ServiceContext
from shared.supervisor import Loop
from shared.text import storable
from shared.uow import UnitOfWork

from .channels import Senders
from .delivery import PRUNE_AT_ONCE, Deliverer, prune_delivered
from .domain import (
    SubscriptionCreated,
    SubscriptionDeleted,
    SubscriptionRedelivered,
    invalid_event_type,
)
from .handlers import HANDLERS, NotifierDeps, describe, fan_out, on_run, record
from .tables import deliveries, subscription_deliveries, subscriptions


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000)
    event_types: list[str] = Field(min_length=1, max_length=100)
    secret: str | None = Field(default=None, min_length=16, max_length=200)

    @field_validator("url", "secret")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return storable(value)  # else the insert fails: a 500


def _check(body: SubscriptionIn) -> None:
    errors = []
    if not is_http_url(body.url):
        errors.append({"field": "url", "message": "must be an http:// or https:// URL with a host, "
                                                  "like https://crm.example.com/leadsla"})
    for i, pattern in enumerate(body.event_types):
        why = invalid_event_type(pattern)
        if why:
            errors.append({"field": f"event_types.{i}", "message": why})
    if errors:
        raise ProblemError(422, "Invalid request", "The request has invalid fields.", errors)


async def _existing(conn: AsyncConnection, subscription_id: str) -> None:
    found = await conn.scalar(select(subscriptions.c.id).where(
        subscriptions.c.id == subscription_id, subscriptions.c.deleted_at.is_(None)))
    if found is None:
        raise not_found("subscription_id", "Not found", f"No subscription {subscription_id}.")


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter()
    admin = [Depends(require_key("admin"))]

    @router.post("/v1/subscriptions", status_code=201, dependencies=admin)
    async def create_subscription(body: SubscriptionIn) -> dict[str, Any]:
        _check(body)
        sub_id = str(uuid.uuid4())
        secret = body.secret or "whsec_" + secrets.token_urlsafe(32)
        now = ctx.clock.now()
        async with ctx.uow() as uow:
            await record(uow, SubscriptionCreated(subscription_id=sub_id, url=body.url,
                                                  event_types=sorted(set(body.event_types)), secret=secret,
                                                  created_at=now), time=now, stream=sub_id)
            await uow.commit()
        # The only time the secret is shown: the receiver needs it to verify signatures.
        return {"id": sub_id, "secret": secret, "url": body.url, "event_types": sorted(set(body.event_types)),
                "created_at": utc_iso(now)}

    @router.get("/v1/subscriptions", dependencies=admin)
    async def list_subscriptions() -> dict[str, Any]:
        d = subscription_deliveries
        counts = (select(d.c.subscription_id, d.c.state, func.count().label("n"))
                  .group_by(d.c.subscription_id, d.c.state).subquery())
        async with ctx.engine.connect() as conn:
            rows = (await conn.execute(select(subscriptions).where(subscriptions.c.deleted_at.is_(None))
                                       .order_by(subscriptions.c.created_at))).all()
            tallies = (await conn.execute(select(counts))).all()
        by_sub: dict[str, dict[str, int]] = {}
        for t in tallies:
            by_sub.setdefault(t.subscription_id, {})[t.state] = t.n
        return {"subscriptions": [
            {"id": r.id, "url": r.url, "event_types": r.event_types, "created_at": utc_iso(r.created_at),
             "deliveries": {s: by_sub.get(r.id, {}).get(s, 0) for s in ("pending", "sent", "failed")}}
            for r in rows
        ]}

    @router.delete("/v1/subscriptions/{subscription_id}", status_code=204, dependencies=admin)
    async def delete_subscription(subscription_id: str) -> Response:
        async def command() -> None:
            now = ctx.clock.now()
            async with ctx.uow() as uow:
                await uow.load_version(subscription_id)  # deleted twice at once: one of them is a 404
                await _existing(uow.conn, subscription_id)
                await record(uow, SubscriptionDeleted(subscription_id=subscription_id, deleted_at=now), time=now,
                             stream=subscription_id)
                await uow.commit()

        await retry_on_conflict(command)
        return Response(status_code=204)

    @router.get("/v1/subscriptions/{subscription_id}/deliveries", dependencies=admin)
    async def subscription_deliveries_of(subscription_id: str, state: str = "failed",
                                         limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """What a subscriber missed (or has pending): the operator's dead-letter view of a CRM."""
        d = subscription_deliveries
        async with ctx.engine.connect() as conn:
            await _existing(conn, subscription_id)
            rows = (await conn.execute(select(d).where(d.c.subscription_id == subscription_id, d.c.state == state)
                                       .order_by(d.c.id).limit(limit))).all()
        return {"deliveries": [
            {"id": r.id, "event_id": r.event_id, "event_type": r.event_type, "lead_id": r.lead_id,
             "state": r.state, "attempts": r.attempts, "last_error": r.last_error,
             "created_at": utc_iso(r.created_at)} for r in rows]}

    @router.post("/v1/subscriptions/{subscription_id}/redeliver", status_code=202, dependencies=admin)
    async def redeliver(subscription_id: str) -> dict[str, Any]:
        """Once the CRM is fixed: its failed deliveries go again (same event ids, same keys)."""
        d = subscription_deliveries

        async def command() -> int:
            now = ctx.clock.now()
            async with ctx.uow() as uow:
                await uow.load_version(subscription_id)
                await _existing(uow.conn, subscription_id)
                failed = list((await uow.conn.execute(select(d.c.event_id).where(
                    d.c.subscription_id == subscription_id, d.c.state == "failed").with_for_update())).scalars())
                if failed:
                    await record(uow, SubscriptionRedelivered(subscription_id=subscription_id, event_ids=failed,
                                                              at=now), time=now, stream=subscription_id)
                await uow.commit()
            return len(failed)

        return {"requeued": await retry_on_conflict(command)}

    @router.get("/v1/leads/{lead_id}/notifications", dependencies=admin)
    async def lead_notifications(lead_id: str) -> dict[str, Any]:
        async with ctx.engine.connect() as conn:
            rows = (await conn.execute(select(deliveries).where(deliveries.c.lead_id == lead_id)
                                       .order_by(deliveries.c.next_attempt_at))).all()
        return {"lead_id": lead_id, "notifications": [describe(r) for r in rows]}

    return router


log = structlog.get_logger()
DELIVERY_POLL_SECONDS = 0.25
RETENTION_EVERY_SECONDS = 3600
TOPICS = (TOPIC_INTAKE, TOPIC_ROUTING, TOPIC_SLA, TOPIC_NOTIFICATIONS)


def consumers_and_loops(ctx: ServiceContext) -> tuple[Subscription, list[Loop]]:
    def deps() -> NotifierDeps:
        return NotifierDeps(ctx.config.config, ctx.clock.now())

    async def unknown_type(uow: UnitOfWork, event: CloudEvent) -> None:
        await fan_out(uow, event, ctx.clock.now())  # a subscription's "lead.*" wants a type added later too

    async def delivery_loop(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(follow_redirects=False) as client:
            deliverer = Deliverer(ctx.uow, lambda: ctx.config.config,
                                  Senders(client, ctx.engine, lambda: ctx.config.config), ctx.clock)

            async def delivery_round() -> float:
                return 0 if await deliverer.start_round() else DELIVERY_POLL_SECONDS

            # Database down: nothing is lost, leases expire and the round is tried after the backoff.
            await run_loop("notifier.delivery", delivery_round, stop, idle=DELIVERY_POLL_SECONDS,
                           backoff_first=DELIVERY_POLL_SECONDS)
            await deliverer.drain(timeout=10)

    async def retention_round() -> float:
        async with ctx.uow() as uow:
            keep = timedelta(seconds=ctx.config.config.notifier.keep_delivered)
            now = ctx.clock.now()
            pruned = await prune_delivered(uow, now - keep, now)
            await uow.commit()
        if pruned:
            log.info("notifier.pruned_deliveries", rows=pruned)
        return 0 if pruned >= PRUNE_AT_ONCE else RETENTION_EVERY_SECONDS  # a full piece: more is due

    async def retention_loop(stop: asyncio.Event) -> None:
        await run_loop("notifier.retention", retention_round, stop, idle=RETENTION_EVERY_SECONDS,
                       backoff_first=60, backoff_cap=RETENTION_EVERY_SECONDS)

    return (Subscription("notifier", TOPICS, bind(HANDLERS, deps), otherwise=unknown_type,
                         batched=bind(dict.fromkeys(HANDLERS, on_run), deps)),
            [delivery_loop, retention_loop])
