"""Composition root of reporting: one projector over every topic, the query API, and the
overdue-timer gauge."""
from __future__ import annotations

from datetime import timedelta

from shared.consumer import Subscription, bind
from shared.events import TOPIC_INTAKE, TOPIC_NOTIFICATIONS, TOPIC_ROUTING, TOPIC_SLA, CloudEvent
from shared.runtime import ServiceContext, ServiceSpec
from shared.uow import UnitOfWork

from .entrypoints import overdue_loop, routes
from .projections import BATCHED, ReportingDeps, project

PROJECTED_TOPICS = (TOPIC_INTAKE, TOPIC_ROUTING, TOPIC_SLA, TOPIC_NOTIFICATIONS)


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    def deps() -> ReportingDeps:
        return ReportingDeps(ctx.config.config, timedelta(seconds=ctx.settings.sla_touch_skew_seconds))

    async def unknown_type(uow: UnitOfWork, event: CloudEvent) -> None:
        await project(uow.conn, [event], ctx.config.config)  # kept in the timeline; the fold skips it

    return ServiceSpec(
        # The timeline is keyed by event id: an event is folded at most once without a processed id.
        subscriptions=[Subscription("reporting", PROJECTED_TOPICS, {}, otherwise=unknown_type,
                                    batched=bind(BATCHED, deps), records_processed=False)],
        loops=[overdue_loop(ctx)], routers=[routes(ctx)])
