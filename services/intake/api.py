"""HTTP entrypoints: turn requests into service-layer calls, nothing more."""

import hashlib
import json
import math
import time
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError

from shared import metrics
from shared.auth import Principal
from shared.config import named_sources
from shared.db import is_deadlock
from shared.eventstore import retry_on_conflict
from shared.http import DirectRoute, ProblemError, not_found, require_key
from shared.ratelimit import KeyLimiter
from shared.runtime import ServiceContext
from shared.text import loads_json

from . import openapi
from .adapters import PostgresIntakeStore
from .domain import ActivityIn, activity_zone, given_source, intent_vocabulary
from .groupcommit import GroupCommitter
from .handlers import (
    FUTURE_TOLERANCE,
    Accepted,
    LeadRequest,
    OtherSourcesLead,
    RejectedActivity,
    UnknownLead,
    count,
    record_activity,
    submit_leads,
    update_lead,
)
from .normalize import Refused, Submission, read_submission

MAX_BATCH = 500
MAX_IDEMPOTENCY_KEY = 200


class RateLimiter:
    """One token bucket per key, sized by the key's source settings (in this process)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._keys = KeyLimiter()

    def wait(self, principal: Principal) -> float:
        limit = self._ctx.config.config.intake.source(principal.name).rate_limit
        assert limit is not None
        return self._keys.wait(principal.key_id, time.monotonic(), limit.rate, limit.burst)


def _parse_body(raw: bytes, content_type: str | None = None) -> Any:
    """The body's JSON. A body in a declared charset other than UTF-8 (older form tools send
    ISO-8859-1 and say so) is read in it rather than refused. A form post's fields
    (application/x-www-form-urlencoded: an HTML form posting straight here, a form tool's "send as
    form data" webhook) are read as the JSON object they stand for."""
    charset = _declared_charset(content_type)
    if (content_type or "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            return _form_fields(raw.decode(charset or "utf-8"))
        except LookupError:
            raise Refused([{"field": "(body)", "message": f"is in an unknown charset {charset!r}"}]) from None
        except (UnicodeDecodeError, ValueError):
            raise Refused([{"field": "(body)", "message": "is not form data"}]) from None
    try:
        return loads_json(raw.decode(charset) if charset else raw)
    except LookupError:
        raise Refused([{"field": "(body)", "message": f"is in an unknown charset {charset!r}"}]) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        message = "is not JSON" if not isinstance(exc, RecursionError) else "is nested too deeply"
        raise Refused([{"field": "(body)", "message": message}]) from None


def _form_fields(text: str) -> dict[str, Any]:
    """Form fields as an object: PHP-style brackets nest ('contact[email]'), '[]' and repeated
    names make lists; a `data.json` field holding an object (Unbounce) is that object, with the
    fields beside it."""
    body: dict[str, Any] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=1000):
        head, *rest = name.split("[")
        path = [head, *(part.rstrip("]") for part in rest)] if head and all(p.endswith("]") for p in rest) else [name]
        listed = path[-1] == "" and len(path) > 1
        path = path[:-1] if listed else path
        target = body
        for part in path[:-1]:
            if not isinstance(target.get(part, {}), dict):  # 'a=1&a[b]=2': the flat name is kept as sent
                target, path = body, [name]
                break
            target = target.setdefault(part, {})
        key = path[-1]
        if key in target:
            kept = target[key]
            target[key] = [*kept, value] if isinstance(kept, list) else [kept, value]
        else:
            target[key] = [value] if listed else value
    wrapped = body.get("data.json")
    if isinstance(wrapped, str):
        try:
            inner = loads_json(wrapped)
        except (json.JSONDecodeError, RecursionError):
            inner = None
        if isinstance(inner, dict):
            # Unbounce posts page_id, page_name, page_url and variant beside it (kept, as unknown
            # fields are); its data.xml says the same again.
            return {**{k: v for k, v in body.items() if k not in ("data.json", "data.xml")}, **inner}
    return body


def _item_key(key: str, item: Any) -> str:
    """A batch item's idempotency key: the request's key and the item itself, not its position. A
    client that sends again only the items that failed, corrected, under the same key (as clients
    retry) gets each item matched with itself: by position, the corrected lead took the key of the
    lead first sent there and was answered "duplicate" of it, and lost."""
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{key}#{hashlib.sha256(canonical.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


async def _json_body(request: Request) -> Any:
    return _parse_body(await request.body(), request.headers.get("content-type"))


def _declared_charset(content_type: str | None) -> str | None:
    """The Content-Type's charset when it is not UTF-8 (JSON's own, read without a decode)."""
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            return None if charset in ("", "utf-8", "utf8") else charset
    return None


def _refusal(exc: Refused, source: str) -> ProblemError:
    metrics.leads_rejected.labels(source, "invalid").inc()
    return ProblemError(422, "Lead cannot be acted on", str(exc), exc.errors)


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["intake"])
    limiter = RateLimiter(ctx)
    group = GroupCommitter(ctx.uow, lambda: ctx.config.config, ctx.clock.now)
    authenticate = require_key("source")
    bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="A source or admin key")

    async def sender(request: Request) -> Principal:
        """A valid key within its rate limit; refusals counted by reason."""
        try:
            principal = await authenticate(request)
        except ProblemError as exc:
            if exc.status == 401:
                metrics.leads_rejected.labels("unknown", "unauthorized").inc()
            raise
        wait = limiter.wait(principal)
        if wait > 0:
            metrics.leads_rejected.labels(principal.name, "rate_limited").inc()
            seconds = max(1, math.ceil(wait))
            raise ProblemError(429, "Too many requests",
                               f"This key may send {limiter_rate(ctx, principal)}; retry in {seconds}s.",
                               [{"field": "Authorization", "message": "is over its rate limit"}],
                               headers={"Retry-After": str(seconds)})
        return principal

    async def sender_dependency(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        return await sender(request)

    sender_dependency.key_role = "source"  # type: ignore[attr-defined]  # shared.http checks it first
    Sender = Annotated[Principal, Depends(sender_dependency)]

    def idempotency_key(request: Request) -> str | None:
        key = request.headers.get("idempotency-key")
        if key is not None and (not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY):
            raise ProblemError(400, "Invalid Idempotency-Key",
                               f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters.",
                               [{"field": "Idempotency-Key", "message": "1 to 200 characters"}])
        return key.strip() if key else None

    def source_of(principal: Principal, body: Any) -> str:
        """The source a lead counts under. A source key is bound to its source; an admin key (an
        operator or an integration sending for several sources) submits for the body's `source`."""
        named = body.get("source") if principal.is_admin and isinstance(body, dict) else None
        return given_source(named) or principal.name

    def label(principal: Principal, source: str) -> str:
        """The source as a metric label: the key's own name for a source the configuration does not
        name (labels stay bounded whatever an admin body says)."""
        return source if source == principal.name or source in named_sources(ctx.config.config) else principal.name

    def read(body: Any, source: str, *, partial: bool = False) -> Submission:
        config = ctx.config.config.intake
        return read_submission(body, config.source(source), intent_vocabulary(ctx.config.config), partial=partial)

    # The two submission routes are `DirectRoute`s that call `sender` themselves: FastAPI's
    # dependency solving cost more than the key check itself. Their OpenAPI security is declared.
    async def post_lead(request: Request) -> JSONResponse:
        principal = await sender(request)
        key = idempotency_key(request)
        source = principal.name
        try:
            body = await _json_body(request)
            source = source_of(principal, body)
            submission = read(body, source)
        except Refused as exc:
            raise _refusal(exc, label(principal, source)) from None
        result = await group.submit(submission, source=source, idempotency_key=key)
        count(result, label(principal, source))
        return JSONResponse(result.body(), status_code=201 if result.status == "accepted" else 200)

    router.add_api_route("/v1/leads", post_lead, methods=["POST"], status_code=201,
                         openapi_extra=openapi.with_bearer(openapi.POST_LEAD), route_class_override=DirectRoute)

    async def post_batch(request: Request) -> JSONResponse:
        principal = await sender(request)
        key = idempotency_key(request)
        try:
            body = await _json_body(request)
        except Refused as exc:
            raise _refusal(exc, principal.name) from None
        items = body.get("leads") if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) > MAX_BATCH:
            metrics.leads_rejected.labels(principal.name, "invalid").inc()
            raise ProblemError(422, "Invalid batch", f"Send {{\"leads\": [...]}} with up to {MAX_BATCH} leads.",
                               [{"field": "leads", "message": f"a list of at most {MAX_BATCH} leads"}])
        results: list[dict[str, Any] | None] = [None] * len(items)
        valid: list[tuple[int, Submission]] = []
        sources = [source_of(principal, item) for item in items]
        for index, item in enumerate(items):
            try:
                valid.append((index, read(item, sources[index])))
            except Refused as exc:
                metrics.leads_rejected.labels(label(principal, sources[index]), "invalid").inc()
                results[index] = {"index": index, "status": "invalid", "errors": exc.errors}
        requests = [LeadRequest(sub, sources[index], _item_key(key, items[index]) if key else None)
                    for index, sub in valid]

        async def submit() -> list[Accepted]:
            async with ctx.uow() as uow:
                accepted = await submit_leads(uow, PostgresIntakeStore(uow.conn), ctx.config.config, requests,
                                              now=ctx.clock.now())
                await uow.commit()
            return accepted

        accepted: list[Accepted] = []
        for attempt in range(3):
            try:
                accepted = await retry_on_conflict(submit)
                break
            except DBAPIError as exc:  # two batches locking the same people in opposite orders
                if not is_deadlock(exc) or attempt == 2:
                    raise
        for (index, _), result in zip(valid, accepted, strict=True):
            count(result, label(principal, sources[index]))
            results[index] = {"index": index, **result.body()}
        return JSONResponse({"results": results})

    router.add_api_route("/v1/leads:batch", post_batch, methods=["POST"], status_code=200,
                         openapi_extra=openapi.with_bearer(openapi.POST_BATCH), route_class_override=DirectRoute)

    @router.patch("/v1/leads/{lead_id}", openapi_extra=openapi.PATCH_LEAD)
    async def patch_lead(lead_id: str, request: Request, principal: Sender) -> JSONResponse:
        try:
            patch = read(await _json_body(request), principal.name, partial=True)
        except Refused as exc:
            raise ProblemError(422, "Invalid update", str(exc), exc.errors) from None
        async def update() -> tuple[str, str, dict[str, Any]]:
            async with ctx.uow() as uow:
                store = PostgresIntakeStore(uow.conn)
                source = None if principal.is_admin else principal.name
                # The lead by its id, else by the sender's own id for it, as activities find it
                # (a source key: among its own source's leads only).
                resolved = await store.resolve(lead_id, source) or lead_id
                tier, changed = await update_lead(uow, store, ctx.config.config, resolved, patch,
                                                  now=ctx.clock.now(), source=source)
                await uow.commit()
            return resolved, tier, changed

        try:
            resolved, tier, changed = await retry_on_conflict(update)
        except UnknownLead:
            raise not_found("lead_id", "Unknown lead", f"No lead {lead_id!r}.") from None
        except OtherSourcesLead:
            # Any source key could rewrite (and, in the answer's old values, read) any lead's contact.
            raise ProblemError(403, "Forbidden", "A source key may change only the leads its source submitted; "
                               "use an admin key.", [{"field": "Authorization",
                                                     "message": "is the key of another source"}]) from None
        return JSONResponse({"lead_id": resolved, "tier": tier, "changed": changed, "warnings": patch.warnings})

    @router.post("/v1/leads/{lead_id}/activities", status_code=202, openapi_extra=openapi.POST_ACTIVITY)
    async def post_activity(lead_id: str, activity: ActivityIn, principal: Sender, request: Request) -> JSONResponse:
        key = idempotency_key(request)  # the activity's id on the sender's side when the body has none
        if activity.external_id is None and key:
            activity = activity.model_copy(update={"external_id": key})
        zone = activity_zone(ctx.config.config, principal.name)
        warnings = activity.warnings(zone, latest=ctx.clock.now() + FUTURE_TOLERANCE)
        activity = activity.dated(zone)

        async def record() -> tuple[str, str]:
            async with ctx.uow() as uow:
                store = PostgresIntakeStore(uow.conn)
                # The lead by its id, else by the sender's own id for it (its external_id), as on
                # Kafka: a CRM that knows only its record's id. A source key finds its source's leads.
                resolved = await store.resolve(lead_id, None if principal.is_admin else principal.name) or lead_id
                activity_id = await record_activity(uow, store, ctx.config.config, resolved, activity,
                                                    now=ctx.clock.now())
                await uow.commit()
            return activity_id, resolved

        try:
            activity_id, resolved = await retry_on_conflict(record)
        except UnknownLead:
            raise not_found("lead_id", "Unknown lead", f"No lead {lead_id!r}.") from None
        except RejectedActivity as exc:
            raise ProblemError(422, "Invalid activity", str(exc),
                               [{"field": exc.field, "message": str(exc)}]) from None
        return JSONResponse({"activity_id": activity_id, "lead_id": resolved, "warnings": warnings}, status_code=202)

    return router


def limiter_rate(ctx: ServiceContext, principal: Principal) -> str:
    limit = ctx.config.config.intake.source(principal.name).rate_limit
    assert limit is not None
    return f"{limit.rate:g} requests a second (bursts of {limit.burst})"
