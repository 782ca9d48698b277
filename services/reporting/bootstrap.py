"""Composition root of reporting: one projector over every topic, the query API, and the
overdue-timer gauge."""
from __future__ import annotations

from shared.consumer import Subscription
from shared.events import (
    TOPIC_INTAKE,
    TOPIC_NOTIFICATIONS,
    TOPIC_ROUTING,
    TOPIC_SLA,
    CloudEvent,
)
from shared.runtime import ServiceContext, ServiceSpec
from shared.uow import UnitOfWork

from .entrypoints import overdue_loop, routes
from .projections import project

PROJECTED_TOPICS = (TOPIC_INTAKE, TOPIC_ROUTING, TOPIC_SLA, TOPIC_NOTIFICATIONS)


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    async def on_event(event: CloudEvent, uow: UnitOfWork) -> None:
        await project(uow.conn, event, ctx.config.config)

    return ServiceSpec(subscriptions=[Subscription("reporting", PROJECTED_TOPICS, on_event)],
                       loops=[overdue_loop(ctx)], routers=[routes(ctx)])
