"""Composition root of intake: HTTP routes plus consumers of the two raw input topics."""
from __future__ import annotations

import json
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from fastapi import Request
from pydantic import ValidationError

from leadsla.shared import metrics
from leadsla.shared.consumer import Subscription, record_position
from leadsla.shared.events import (
    TOPIC_ACTIVITIES_RAW,
    TOPIC_SUBMISSIONS_RAW,
    BadEvent,
    CloudEvent,
    describe_validation_error,
    deterministic_id,
)
from leadsla.shared.runtime import ServiceContext, ServiceSpec
from leadsla.shared.uow import UnitOfWork

from .api import build_router
from .domain import ActivityIn
from .handlers import RejectedActivity, UnknownLead, count, record_activity, submit_lead
from .normalize import Refused, read_submission

RAW_SOURCE_PREFIX = "kafka:"


def decode_raw(record: ConsumerRecord) -> CloudEvent:
    """Raw topics carry a CloudEvent or the bare JSON body of the matching HTTP endpoint."""
    try:
        body = json.loads(record.value or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadEvent("expected a JSON object")
    if "specversion" in body:
        return CloudEvent.from_bytes(record.value)
    return CloudEvent(
        id=deterministic_id("raw", record_position(record)),
        source=RAW_SOURCE_PREFIX + record.topic,
        type="raw",
        subject=record.key.decode(errors="replace") if record.key else None,
        time=datetime.fromtimestamp(record.timestamp / 1000, UTC),
        data=body,
    )


def _source_of(event: CloudEvent, ctx: ServiceContext) -> str:
    """The source a raw record counts under (Kafka has no keys): the CloudEvent's `source`, else
    the body's `source`, when it names a configured intake source; else "kafka". Metric labels
    stay bounded whatever producers send."""
    configured = ctx.config.config.intake.sources
    body_source = event.data.get("source")
    for name in (event.source, body_source):
        if isinstance(name, str) and name in configured:
            return name
    return "kafka"


def bootstrap(ctx: ServiceContext) -> ServiceSpec:
    async def on_submission(event: CloudEvent, uow: UnitOfWork) -> None:
        source = _source_of(event, ctx)
        intake = ctx.config.config.intake
        try:
            submission = read_submission(event.data, intake.source(source), intake.intent_aliases)
        except Refused as exc:
            metrics.leads_rejected.labels(source, "invalid").inc()
            raise BadEvent(f"invalid submission: {exc}") from None
        if not event.source.startswith(RAW_SOURCE_PREFIX):
            submission.attributes.setdefault("ce_source", event.source)
        # A CloudEvent's own id is the producer's idempotency key for the submission.
        key = None if event.source.startswith(RAW_SOURCE_PREFIX) else event.id
        result = await submit_lead(uow, ctx.config.config, submission, source=source, now=ctx.clock.now(),
                                   idempotency_key=key, cause=event)
        count(result, source)

    async def on_activity(event: CloudEvent, uow: UnitOfWork) -> None:
        data = dict(event.data)
        lead_id = data.pop("lead_id", None) or event.subject
        if not lead_id:
            raise BadEvent("an activity needs lead_id (in the body or as the CloudEvent subject)")
        try:
            activity = ActivityIn.model_validate(data)
        except ValidationError as exc:
            raise BadEvent("invalid activity: " + describe_validation_error(exc)) from None
        try:
            await record_activity(uow, ctx.config.config, lead_id, activity, now=ctx.clock.now(), cause=event)
        except UnknownLead:
            raise BadEvent(f"unknown lead {lead_id!r}") from None
        except RejectedActivity as exc:
            raise BadEvent(f"invalid activity: {exc.field}: {exc}") from None

    def count_rejection(request: Request, errors: list[dict[str, str]]) -> None:
        principal = getattr(request.state, "principal", None)
        if principal is not None and request.url.path.endswith("/activities"):
            metrics.leads_rejected.labels(principal.name, "invalid_activity").inc()

    return ServiceSpec(
        subscriptions=[
            Subscription("intake.submissions", (TOPIC_SUBMISSIONS_RAW,), on_submission, decode_raw),
            Subscription("intake.activities", (TOPIC_ACTIVITIES_RAW,), on_activity, decode_raw),
        ],
        routers=[build_router(ctx)],
        on_invalid_request=count_rejection,
    )
