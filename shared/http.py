"""HTTP edges shared by all services: RFC 9457 problem+json errors naming fields, a 64 KiB body
limit, bearer-key auth, and the /healthz, /readyz, /metrics and /v1/config endpoints."""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .auth import Principal
from .config import shown
from .db import database_outage, is_database_unavailable
from .docs_pages import add_docs_pages
from .eventstore import ConcurrencyConflict
from .migrate import current_revision, head_revision
from .openapi import api_routes, document_problems, key_role
from .ratelimit import KeyLimiter
from .schemas import schema_router
from .tracing import TraceMiddleware

log = structlog.get_logger()

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .runtime import ServiceContext

T = TypeVar("T")

MAX_BODY_BYTES = 64 * 1024
# Endpoints allowed a larger body than MAX_BODY_BYTES.
PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.errors, self.headers = status, title, detail, errors, headers


def not_found(field: str, title: str, detail: str) -> ProblemError:
    """A 404 for an id that names nothing, naming the parameter (CONTRACT: every problem names a field)."""
    return ProblemError(404, title, detail, [{"field": field, "message": "names nothing here"}])


def conflict(field: str, detail: str) -> ProblemError:
    return ProblemError(409, "Conflict", detail, [{"field": field, "message": detail}])


# What a request without a route names: its path (404) or its method (405).
_ROUTING_FIELDS = {404: ("(path)", "is not a route here"), 405: ("(method)", "is not allowed on this route")}


def _auth_error(message: str) -> list[dict[str, str]]:
    """A refused key as a field-level error like any other: the field is the header."""
    return [{"field": "Authorization", "message": message}]


def problem_response(err: ProblemError, instance: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": err.title, "status": err.status}
    if err.detail:
        body["detail"] = err.detail
    if instance:
        body["instance"] = instance
    # Always there, empty when no field is to blame (a database outage's 503): one shape to parse.
    body["errors"] = err.errors or []
    return JSONResponse(body, status_code=err.status, media_type=PROBLEM_JSON, headers=err.headers)


def field_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Pydantic error list -> [{field: 'contact.email', message: ...}] without the 'body' prefix."""
    out = []
    for err in errors:
        if err.get("type") == "json_invalid":  # its loc is a character position, not a field
            where = err.get("loc", ())[-1:]
            detail = (err.get("ctx") or {}).get("error")
            out.append({"field": "(body)", "message": "is not valid JSON" + (f": {detail}" if detail else "")
                        + (f" (at character {where[0]})" if where and isinstance(where[0], int) else "")})
            continue
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        out.append({"field": ".".join(loc) or "(body)", "message": err["msg"].removeprefix("Value error, ")})
    return out


InvalidRequestHook = Callable[[Request, list[dict[str, str]]], None]


def install_error_handlers(app: FastAPI, on_invalid: InvalidRequestHook | None = None) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _refuse_fields(request, field_errors(exc.errors()))

    async def _refuse_fields(request: Request, errors: list[dict[str, str]]) -> JSONResponse:
        # FastAPI reads the body before it solves the route's dependencies: a body that is not
        # JSON was judged before the key was checked (a 422 where the caller without a key is owed 401).
        try:
            refused = await key_refusal(request)
        except Exception as db_error:  # the key check is a database read like any other
            return await _database_error(request, db_error)
        if refused is not None:
            return problem_response(refused, request.url.path)
        if on_invalid is not None:
            on_invalid(request, errors)
        return problem_response(
            ProblemError(422, "Invalid request", "The request has invalid fields.", errors), request.url.path
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's answer to a JSON body that is not UTF-8: not JSON, like any other (422).
            return await _refuse_fields(request, [{"field": "(body)", "message": "is not valid JSON (not UTF-8)"}])
        field, message = _ROUTING_FIELDS.get(exc.status_code, ("(request)", str(exc.detail)))
        return problem_response(
            ProblemError(exc.status_code, str(exc.detail), errors=[{"field": field, "message": message}],
                         headers=getattr(exc, "headers", None)), request.url.path
        )

    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        # No pooled connection came free in time (a burst right after an outage): the database
        # cannot serve this request now, which is a 503 like an outage, not a 500.
        busy = isinstance(exc, sa_exc.TimeoutError)
        if not busy and not is_database_unavailable(exc):
            log.error("http.unhandled_error", path=request.url.path, error=type(exc).__name__)
            return problem_response(ProblemError(500, "Internal error", "The request failed; nothing was stored."),
                                    request.url.path)
        # One log line per outage (OutageLog), not a traceback per request; nothing half-written,
        # since every write is one transaction that did not commit.
        if not busy:
            database_outage.down(exc)
        retry_after = str(getattr(request.app.state, "retry_after_seconds", 5))
        # A statement that got no answer may have been the commit, which a server that answers
        # again still carries out: the client is told so (a retried lead is recognised).
        detail = (_BUSY if busy else _NO_ANSWER if isinstance(exc, TimeoutError) else
                  "The database is unreachable; nothing was stored. Retry after the time in Retry-After.")
        return problem_response(
            ProblemError(503, "Service unavailable", detail, headers={"Retry-After": retry_after}),
            request.url.path)

    async def _conflict(request: Request, exc: Exception) -> JSONResponse:
        # A command that lost the race on its stream every time it was retried (many writers of
        # one lead at once): nothing was stored, and trying again is the answer.
        return problem_response(ProblemError(
            409, "Conflict", "The lead kept changing concurrently; nothing was stored. Retry.",
            [{"field": "(request)", "message": "lost a race with concurrent changes of the same lead"}],
            headers={"Retry-After": "1"}), request.url.path)

    app.add_exception_handler(ConcurrencyConflict, _conflict)
    # Registered by class (not as the catch-all 500 handler, which Starlette re-raises and logs).
    for error_class in (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError, asyncpg.PostgresError,
                        asyncpg.InterfaceError, TimeoutError):
        app.add_exception_handler(error_class, _database_error)


_BUSY = ("The database is busy: no connection came free in time; nothing was stored. Retry after the time "
         "in Retry-After.")
_NO_ANSWER = ("The database did not answer in time. Retry after the time in Retry-After: the request was not "
              "stored unless its commit had reached the database, and a lead sent again is recognised as the "
              "same lead (its Idempotency-Key, or its contact within the dedupe window).")

# Larger limits for the endpoints that take many items at once (exact path -> bytes). Exact: a
# suffix match gave any path ending in ":batch" (PATCH /v1/leads/x:batch, PUT /v1/owners/x:batch,
# any unknown path, with or without a key) the 5 MiB limit; and only on the service serving it.
BODY_LIMIT_OVERRIDES = {"/v1/leads:batch": 5 * 1024 * 1024}


NUL_REFUSAL = "leadsla.nul_refusal"


class NulRefusalMiddleware:
    """Postgres text cannot hold a NUL character: one in the path or the query reached the database
    and answered 500. An id with one names nothing (404); a query parameter with one is a 422
    naming it. (Bodies are the routes' own: their models refuse it per field.)

    The refusal is left in the scope for the key check (require_key) to answer once the key
    passed: without a key a caller gets its 401, not a judgement of what it sent. Every route
    that reads the database checks a key (test_security_routes); the few that do not (probes,
    schemas, the board) read no id or query value from the database."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = None
            if "\x00" in scope["path"]:
                refused = ProblemError(404, "Not found", "No resource has an id with a NUL character.",
                                       [{"field": "(path)", "message": "contains a NUL character"}])
            elif b"%00" in (query := scope.get("query_string", b"")) or b"\x00" in query:
                # Parsed only when a NUL may be there: every request of every service passes here.
                named = [name for name, value in QueryParams(query).multi_items() if "\x00" in name or "\x00" in value]
                if named:
                    refused = ProblemError(422, "Invalid request", "The request has invalid fields.",
                                           [{"field": name.replace("\x00", ""), "message": "contains a NUL character"}
                                            for name in dict.fromkeys(named)])
            if refused is not None:
                scope[NUL_REFUSAL] = refused
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413, whether they declare a Content-Length or arrive
    chunked: the body is read here, up to the limit, before the app sees it."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES,
                 overrides: dict[str, int] | None = None) -> None:
        self.app, self.limit = app, limit
        self.overrides = BODY_LIMIT_OVERRIDES if overrides is None else overrides

    def limit_for(self, path: str) -> int:
        return self.overrides.get(path, self.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, limit)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)  # their routes read no body: none is buffered here
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await self._too_large(scope, receive, send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        if scope["method"] == "POST" and scope.get("path") in ("/v1/leads", "/v1/leads:batch"):
            # The key is not checked yet, so the sender is unknown.
            metrics.leads_rejected.labels("unknown", "too_large").inc()
        # Field-level like every other problem (CONTRACT: problem+json with `errors`): the field is the body.
        response = problem_response(
            ProblemError(413, "Request body too large", f"Bodies are limited to {limit} bytes.",
                         [{"field": "(body)", "message": f"is over the limit of {limit} bytes"}]),
            instance=scope.get("path"),
        )
        await response(scope, receive, send)


class DirectRoute(APIRoute):
    """A route whose endpoint takes the request alone and answers a Response: called as it is,
    without FastAPI's dependency solving and response handling (the OpenAPI entry is the same),
    and reached straight from the middleware (DirectDispatch) rather than through the router."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


class DirectDispatch:
    """Requests for a `DirectRoute` (method and exact path) go straight to its endpoint. Below
    the app's own middleware, Starlette's exception middleware, FastAPI's exit stack and the
    router (which tries every route in turn) cost intake's POST /v1/leads a tenth of its CPU. An
    error the endpoint raises is answered by the app's exception handlers, as from the router;
    anything else (other methods, a trailing slash, a root path) takes the router."""

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], APIRoute],
                 handlers: Mapping[Any, Callable[..., Any]]) -> None:
        self.app, self.routes, self.handlers = app, routes, handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if route is None or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        scope.update(endpoint=route.endpoint, route=route, path_params={})
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        # As Starlette's ExceptionMiddleware looks one up; the catch-all (Exception, 500) is the
        # server error middleware's, above this one.
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if (handler := self.handlers.get(cls)) is not None:
                return handler
        return None


async def key_refusal(request: Request) -> ProblemError | None:
    """The refusal of the request's key by the route it reached (None: the key passes, or the
    route needs none)."""
    role = getattr(request.app.state, "key_roles", {}).get(request.scope.get("endpoint"))
    if role is None:
        return None
    try:
        await require_key(role)(request)
    except ProblemError as exc:
        return exc
    return None


def require_key(role: str = "source") -> Callable[[Request], Awaitable[Principal]]:
    """Dependency: a valid bearer key; `admin` routes also need an admin key."""

    async def dependency(request: Request) -> Principal:
        ctx: ServiceContext = request.app.state.ctx
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise ProblemError(401, "Unauthorized", "Send `Authorization: Bearer <key>`.",
                               _auth_error("needs `Bearer <key>`"), headers={"WWW-Authenticate": "Bearer"})
        presented = presented.strip()
        principal = await ctx.key_cache.verify(ctx.engine.connect, presented)
        if principal is None:
            raise ProblemError(401, "Unauthorized", "The key is unknown or revoked.",
                               _auth_error("is an unknown or revoked key"), headers={"WWW-Authenticate": "Bearer"})
        if role == "admin" and not principal.is_admin:
            raise ProblemError(403, "Forbidden", "This needs an admin key.", _auth_error("is not an admin key"))
        limiter: KeyLimiter | None = getattr(request.app.state, "key_limiter", None)
        rate, burst = ctx.settings.api_rate_limit_per_second, ctx.settings.api_rate_limit_burst
        if limiter is not None and (wait := limiter.wait(principal.key_id, time.monotonic(), rate, burst)) > 0:
            seconds = max(1, math.ceil(wait))
            raise ProblemError(429, "Too many requests",
                               f"This key may make {rate:g} requests a second here (bursts of {burst}); "
                               f"retry in {seconds}s.",
                               _auth_error("is over its rate limit"), headers={"Retry-After": str(seconds)})
        request.state.principal = principal
        # A NUL character in the path or query (NulRefusalMiddleware), answered once the key passed.
        if (refused := request.scope.get(NUL_REFUSAL)) is not None:
            raise refused
        return principal

    dependency.key_role = role  # type: ignore[attr-defined]  # read by shared.openapi to document it
    return dependency


def create_app(
    ctx: ServiceContext, routers: list[APIRouter], on_invalid: InvalidRequestHook | None = None, *,
    key_limits: bool = False,
) -> FastAPI:
    """The service's app. `key_limits`: every keyed request counts against its key's limit
    (`LEADSLA_API_RATE_LIMIT_PER_SECOND`; intake limits per source instead, in its routes)."""
    app = FastAPI(title=f"leadsla {ctx.name}", version="0.1.0", docs_url=None, redoc_url=None)
    add_docs_pages(app)  # pinned, integrity-checked scripts (shared.docs_pages)
    app.state.ctx = ctx
    if key_limits:
        app.state.key_limiter = KeyLimiter()
    app.state.retry_after_seconds = ctx.settings.retry_after_seconds
    # The larger limits apply only where the app serves that path (filled in once the routes are).
    body_limits: dict[str, int] = {}
    direct: dict[tuple[str, str], APIRoute] = {}
    app.add_middleware(DirectDispatch, routes=direct, handlers=app.exception_handlers)
    app.add_middleware(BodyLimitMiddleware, overrides=body_limits)
    app.add_middleware(NulRefusalMiddleware)
    app.add_middleware(TraceMiddleware)
    install_error_handlers(app, on_invalid)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": ctx.name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await readiness(ctx)
        ready = all(v == "ok" for v in checks.values())
        body: dict[str, Any] = {"ready": ready, "checks": checks}
        if ctx.relay is not None:
            health = ctx.relay.health
            # Parked rows wait for an operator (alert OutboxRowsParked); other leads flow, so the
            # service stays ready.
            body["outbox"] = {"pending": health.pending, "parked": health.parked,
                              "oldest_pending_seconds": round(health.oldest_pending_seconds, 1)}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return PlainTextResponse(metrics.exposition(ctx.name), media_type=CONTENT_TYPE_LATEST)

    served = {getattr(route, "path", None) for router in routers for route in router.routes}
    if "/v1/config" not in served:  # else the service's own (the router lays its owners' runtime changes over it)
        @app.get("/v1/config", dependencies=[Depends(require_key("admin"))])
        async def effective_config() -> dict[str, Any]:
            return {"version": ctx.config.version, "config": shown(ctx.config.config)}

    app.include_router(schema_router())
    for router in routers:
        app.include_router(router)
    body_limits.update({path: limit for path, limit in BODY_LIMIT_OVERRIDES.items() if path in served})
    routes = api_routes(app.routes)
    direct.update({(method, route.path): route for route in routes if isinstance(route, DirectRoute)
                   for method in route.methods})
    # Which key each endpoint checks, for key_refusal (a request refused before its dependencies run).
    app.state.key_roles = {route.endpoint: role for route in routes if (role := key_role(route.dependant))}
    document_problems(app)
    return app


# Checks given up on by a probe, finishing in the background (the loop keeps only weak references).
_ABANDONED: set[asyncio.Task[Any]] = set()


async def within(seconds: float, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, or TimeoutError after `seconds`, without waiting for it to wind down:
    asyncpg cancels a query through a new connection, which a frozen Postgres never accepts (the
    connect timeout, 5 s), so `asyncio.wait_for` answered a probe in 5 s instead of its 3. The
    abandoned work is cancelled and ends by itself in the background."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        return task.result()
    task.cancel()
    _ABANDONED.add(task)
    task.add_done_callback(_forget)
    raise TimeoutError(f"no answer within {seconds:g} s")


def _forget(task: asyncio.Task[Any]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: its error is the probe's timeout, already reported


async def database_check(engine: AsyncEngine, seconds: float = 3.0) -> str | None:
    """The database's migration revision, within `seconds` (see `within`)."""
    async def revision() -> str | None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            return await current_revision(conn)

    return await within(seconds, revision())


async def readiness(ctx: ServiceContext) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        current = await database_check(ctx.engine)
        database_outage.up()
        checks["database"] = "ok"
        checks["migrations"] = "ok" if current == head_revision() else f"at {current}, need {head_revision()}"
    except Exception as exc:
        if is_database_unavailable(exc):
            database_outage.down(exc)
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        await within(2.0, ctx.producer.client.fetch_all_metadata())
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    checks["consumers"] = "ok" if all(c.ready.is_set() for c in ctx.consumers) else "joining"
    down = [f"{w.name} ({w.last_error}, {w.restarts} restarts)" for w in ctx.workers.values() if not w.running]
    checks["workers"] = "ok" if not down else "restarting: " + ", ".join(down)
    if ctx.relay is not None:
        checks["outbox"] = ctx.relay.problem() or "ok"
    return checks
