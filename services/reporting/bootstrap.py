"""Composition root of reporting: one projector over every topic, and the query API."""
from __future__ import annotations

from fastapi import APIRouter

from leadsla.shared.consumer import Subscription
from leadsla.shared.events import (
    TOPIC_INTAKE,
    TOPIC_NOTIFICATIONS,
    TOPIC_ROUTING,
    TOPIC_SLA,
    CloudEvent,
)
from leadsla.shared.runtime import ServiceContext, ServiceSpec
from leadsla.shared.uow import UnitOfWork

from .entrypoints import routes
from .projections import project

PROJECTED_TOPICS = (TOPIC_INTAKE, TOPIC_ROUTING, TOPIC_SLA, TOPIC_NOTIFICATIONS)


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    async def on_event(event: CloudEvent, uow: UnitOfWork) -> None:
        await project(uow.conn, event, ctx.config.config)

    api: APIRouter = routes(ctx)
    return ServiceSpec(subscriptions=[Subscription("reporting", PROJECTED_TOPICS, on_event)], routers=[api])
