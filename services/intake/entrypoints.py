"""Intake's entrypoints besides its HTTP routes (api.py): the consumers of the two raw input
topics, and the loop that dead-letters activities whose lead never came."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime, timedelta

import structlog
from aiokafka import ConsumerRecord
from fastapi import Request
from pydantic import ValidationError

from shared import metrics
from shared.aio import run_loop
from shared.config import Config, named_sources
from shared.consumer import Subscription, record_position
from shared.events import (
    TOPIC_ACTIVITIES_RAW,
    TOPIC_SUBMISSIONS_RAW,
    BadEvent,
    CloudEvent,
    Received,
    WireModel,
    describe_validation_error,
    deterministic_id,
)
from shared.http import MAX_BODY_BYTES
from shared.runtime import ServiceContext
from shared.supervisor import Loop
from shared.text import loads_json
from shared.uow import UnitOfWork

from .adapters import PostgresIntakeStore, forget_beats, record_beat
from .domain import given_source, intent_vocabulary, raw_topics_taken_in
from .handlers import (
    BARE,
    EXPIRE_BATCH,
    LeadRequest,
    RawPosition,
    RawTouch,
    RejectedActivity,
    count,
    expire_pending,
    named_source,
    raw_activity,
    record_touches,
    submit_leads,
)
from .normalize import Refused, clean_text, read_submission

log = structlog.get_logger()

# Runs of heartbeats are kept a day (the SLA clock reads the last two), pruned every ten minutes.
BEATS_KEPT = timedelta(days=1)
BEATS_FORGET_EVERY = 600.0

RAW_SOURCE_PREFIX = "kafka:"
MAX_RAW_RECORD_BYTES = MAX_BODY_BYTES
RAW_POSITION = "intakerawrecord"  # extension attribute: [topic, partition, offset, key, value base64]


def decode_raw(record: ConsumerRecord) -> CloudEvent:
    """Raw topics carry the bare JSON body of the matching HTTP endpoint, or a CloudEvent in
    the Kafka binding's structured mode (`time` optional) or binary mode (`ce_*` headers, the
    record value is the data). Where the record came from rides along as extension attributes,
    so an activity parked for its lead can still be dead-lettered with its bytes."""
    size = len(record.value or b"")
    if size > MAX_RAW_RECORD_BYTES:
        # The same limit as HTTP bodies: a lead this size is not a form submission, and its events
        # would not fit the broker. The dead letter keeps it whole in Postgres.
        raise BadEvent(f"too large: {size} bytes, the limit is {MAX_RAW_RECORD_BYTES} (as for HTTP bodies)")
    try:
        body = loads_json(record.value or b"")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadEvent("expected a JSON object")
    key = record.key.decode(errors="replace") if record.key else None
    received = datetime.fromtimestamp(record.timestamp / 1000, UTC)
    raw = {RAW_POSITION: [record.topic, record.partition, record.offset, key,
                          base64.b64encode(record.value or b"").decode()]}
    headers = {k.lower(): (v or b"").decode(errors="replace") for k, v in (record.headers or ())}
    if "ce_id" in headers:  # binary mode
        ce = {k[3:]: v for k, v in headers.items() if k.startswith("ce_")}
        try:
            return CloudEvent(
                id=ce["id"], source=ce.get("source") or RAW_SOURCE_PREFIX + record.topic,
                type=ce.get("type") or "raw", subject=ce.get("subject") or key,
                time=ce.get("time") or received, data=body, **raw,
            )
        except ValidationError as exc:
            raise BadEvent("not a CloudEvent: " + describe_validation_error(exc)) from None
    if "specversion" in body:  # structured mode
        if "data_base64" in body and "data" not in body:  # the JSON format's binary data (RFC 4648 base64)
            body = {**body, "data": _data_from_base64(body.pop("data_base64"))}
        if not isinstance(body.get("data", {}), dict):
            raise BadEvent("a CloudEvent on a raw topic needs a JSON object as its data")
        try:  # the record's key names the lead when the event has no subject (as in binary mode)
            return CloudEvent.model_validate({"time": received, "subject": key, **body, **raw})
        except ValidationError as exc:
            raise BadEvent("not a CloudEvent: " + describe_validation_error(exc)) from None
    return CloudEvent(
        id=deterministic_id("raw", record_position(record)),
        source=RAW_SOURCE_PREFIX + record.topic,
        type="raw",
        subject=key,
        time=received,
        data=body,
        **raw,
        **{BARE: True},
    )


def _data_from_base64(encoded: object) -> object:
    """A structured CloudEvent's `data_base64`: the data's bytes, which on a raw topic must be the
    JSON body of the matching HTTP endpoint."""
    try:
        return loads_json(base64.b64decode(str(encoded), validate=True))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadEvent("data_base64 is not base64-encoded JSON") from None


class RawSubmission(WireModel):
    """A record of the raw submissions topic: whatever its type, a body intake reads leniently
    (`normalize.read_submission`), so it is taken as it is here."""


class RawActivity(WireModel):
    """A record of the raw activities topic, read by `ActivityIn` in the handler."""


def raw_position(event: CloudEvent) -> RawPosition:
    topic, partition, offset, key, original = (event.model_extra or {})[RAW_POSITION]
    return RawPosition(topic, partition, offset, key, base64.b64decode(original))


def without_raw(event: CloudEvent) -> CloudEvent:
    """The event as its sender meant it (what is kept while an activity waits), with whether it
    was a bare body (`BARE`): the activity is read from it again when its lead comes."""
    extra = {k: v for k, v in (event.model_extra or {}).items() if k != RAW_POSITION}
    return CloudEvent.model_validate({**event.model_dump(exclude=set(event.model_extra or {})), **extra})


def _source_of(event: CloudEvent, ctx: ServiceContext) -> str:
    """A raw record's lead source (Kafka has no keys): a source the configuration names, given as
    the CloudEvent's `source` or the body's (`named_source`); else the body's `source`, as an
    admin key's body gives it over HTTP (a webinar tool's "webinar" reads so in reports, not as
    "kafka"); else "kafka"."""
    body = event.data if isinstance(event.data, dict) else {}
    return named_source(event, ctx.config.config) or given_source(body.get("source")) or "kafka"


def _label(source: str, named: frozenset[str]) -> str:
    """A raw record's source as a metric label: only one the configuration names (`named_sources`),
    else "kafka" (labels stay bounded whatever producers send)."""
    return source if source in named else "kafka"


def raw_touch(event: CloudEvent, config: Config, now: datetime) -> RawTouch:
    """A raw record's activity, read as its HTTP twin would be; raises `BadEvent`."""
    ref = event.data.get("lead_id") or event.subject
    # Read as a submission's external id is (a NUL in it failed the lookup: a handler error;
    # a CRM's numeric record id, HubSpot's, is its text).
    if isinstance(ref, int) and not isinstance(ref, bool):
        ref = str(ref)
    ref = clean_text(ref) if isinstance(ref, str) else None
    if not ref:
        raise BadEvent("an activity needs lead_id (in the body or as the CloudEvent subject)")
    named = named_source(event, config)
    try:
        activity = raw_activity(event, config, named, now)
    except ValidationError as exc:
        raise BadEvent("invalid activity: " + describe_validation_error(exc)) from None
    return RawTouch(ref, named, activity, without_raw(event), raw_position(event))


def consumers_and_loops(ctx: ServiceContext) -> tuple[list[Subscription], list[Loop]]:
    def lead_request(event: CloudEvent) -> LeadRequest:
        """A raw record's submission, read as its HTTP twin would be; raises `Refused`."""
        source = _source_of(event, ctx)
        submission = read_submission(event.data, ctx.config.config.intake.source(source),
                                     intent_vocabulary(ctx.config.config))
        bare = bool((event.model_extra or {}).get(BARE))
        if not bare:
            submission.attributes.setdefault("ce_source", event.source)
        # A CloudEvent's own id (ce_id) is the producer's idempotency key for the submission.
        return LeadRequest(submission, source, None if bare else event.id, cause=event)

    async def submit(uow: UnitOfWork, requests: list[LeadRequest]) -> None:
        results = await submit_leads(uow, PostgresIntakeStore(uow.conn), ctx.config.config, requests,
                                     now=ctx.clock.now())

        def counted() -> None:
            named = named_sources(ctx.config.config)  # once a batch, not once a lead
            for request, result in zip(requests, results, strict=True):
                count(result, _label(request.source, named))

        uow.after_commit(counted)

    async def on_submission(uow: UnitOfWork, received: Received[RawSubmission]) -> None:
        try:
            request = lead_request(received.envelope)
        except Refused as exc:
            source = _label(_source_of(received.envelope, ctx), named_sources(ctx.config.config))
            metrics.leads_rejected.labels(source, "invalid").inc()
            raise BadEvent(f"invalid submission: {exc}") from None
        await submit(uow, [request])

    async def on_submissions(uow: UnitOfWork, batch: list[Received[RawSubmission]]) -> None:
        """A fetched batch's submissions in one go (`submit_leads`, as a group commit does). A
        refused one fails the run: the consumer reruns the batch a record at a time
        (`on_submission`), which counts and dead-letters it alone."""
        try:
            requests = [lead_request(received.envelope) for received in batch]
        except Refused as exc:
            raise BadEvent(f"invalid submission: {exc}") from None
        await submit(uow, requests)

    async def on_activities(uow: UnitOfWork, batch: list[Received[RawActivity]]) -> None:
        """A fetched batch's touches in one go (`record_touches`). A refused one fails the run:
        the consumer reruns the batch a record at a time, which dead-letters it alone."""
        config, now = ctx.config.config, ctx.clock.now()
        touches = [raw_touch(received.envelope, config, now) for received in batch]
        try:
            await record_touches(uow, PostgresIntakeStore(uow.conn), config, touches, now=now)
        except RejectedActivity as exc:
            raise BadEvent(f"invalid activity: {exc.field}: {exc}") from None

    async def on_activity(uow: UnitOfWork, received: Received[RawActivity]) -> None:
        await on_activities(uow, [received])

    async def expire_loop(stop: asyncio.Event) -> None:
        """Dead-letter activities whose lead did not arrive within `intake.activity_wait`."""

        def every() -> float:
            return min(30.0, ctx.config.config.intake.activity_wait / 10)

        async def expire_round() -> float:
            async with ctx.uow() as uow:
                topics = await expire_pending(uow, PostgresIntakeStore(uow.conn), ctx.clock.now())
                await uow.commit()
            for topic in topics:
                metrics.deadletter.labels(topic, "unknown_lead").inc()
            return 0 if len(topics) == EXPIRE_BATCH else every()  # a full batch: more are due

        await run_loop("intake.expire", expire_round, stop, idle=every())

    async def beat_loop(stop: asyncio.Event) -> None:
        """Say, every `intake_beat_seconds`, that intake can accept, and has taken in what was
        handed to it on the raw topics (`raw_topics_taken_in`). A run of beats is one row; after a
        silence (the database away, the process stalled, a backlog on a raw topic) a new row
        starts, so the rows show when intake could not accept and the SLA clock waits for senders'
        retries (sla_clock's `intake_outage`)."""
        settings = ctx.settings
        gap = timedelta(seconds=settings.intake_outage_gap_seconds)
        interval_id: str | None = None
        last_forget = 0.0

        async def beat_round() -> float:
            nonlocal interval_id, last_forget
            if not raw_topics_taken_in([c.caught_up_at for c in ctx.consumers], time.monotonic(), gap.total_seconds()):
                return settings.intake_beat_seconds  # silent until the raw topics' backlog is handled
            async with ctx.engine.begin() as conn:
                interval_id = await record_beat(conn, interval_id, gap)
                if time.monotonic() - last_forget > BEATS_FORGET_EVERY:
                    await forget_beats(conn, BEATS_KEPT)
                    last_forget = time.monotonic()
            return settings.intake_beat_seconds

        await run_loop("intake.beat", beat_round, stop, idle=settings.intake_beat_seconds)

    return [
        # Raw topics carry the senders' own types: every record is of the topic's one kind.
        Subscription("intake.submissions", (TOPIC_SUBMISSIONS_RAW,), {RawSubmission: on_submission}, decode_raw,
                     payload_of=lambda _: RawSubmission, batched={RawSubmission: on_submissions}),
        Subscription("intake.activities", (TOPIC_ACTIVITIES_RAW,), {RawActivity: on_activity}, decode_raw,
                     payload_of=lambda _: RawActivity, batched={RawActivity: on_activities}),
    ], [expire_loop, beat_loop]


def count_rejection(request: Request, errors: list[dict[str, str]]) -> None:
    principal = getattr(request.state, "principal", None)
    if principal is not None and request.url.path.endswith("/activities"):
        metrics.leads_rejected.labels(principal.name, "invalid_activity").inc()
