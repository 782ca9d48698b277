"""Composition root of reporting: one projector over every topic, and the query API."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from leadsla.shared.consumer import Subscription
from leadsla.shared.events import (
    TOPIC_INTAKE,
    TOPIC_NOTIFICATIONS,
    TOPIC_ROUTING,
    TOPIC_SLA,
    CloudEvent,
)
from leadsla.shared.http import ProblemError, require_key
from leadsla.shared.runtime import ServiceContext, ServiceSpec
from leadsla.shared.uow import UnitOfWork

from .projections import project
from .views import lead_with_timeline

PROJECTED_TOPICS = (TOPIC_INTAKE, TOPIC_ROUTING, TOPIC_SLA, TOPIC_NOTIFICATIONS)


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    async def on_event(event: CloudEvent, uow: UnitOfWork) -> None:
        await project(uow, event)

    api = APIRouter()

    # Admin only: the lead's record carries personal data (name, email, phone).
    @api.get("/v1/leads/{lead_id}", dependencies=[Depends(require_key("admin"))])
    async def get_lead(lead_id: str) -> dict[str, Any]:
        async with ctx.engine.connect() as conn:
            found = await lead_with_timeline(conn, lead_id)
        if found is None:
            raise ProblemError(404, "Unknown lead", f"No lead {lead_id!r} in the read model (yet).")
        return found

    return ServiceSpec(subscriptions=[Subscription("reporting", PROJECTED_TOPICS, on_event)], routers=[api])
