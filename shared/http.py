"""HTTP edges shared by all services: RFC 9457 problem+json errors naming fields, a 64 KiB body
limit, bearer-key auth, and the /healthz, /readyz, /metrics and /v1/config endpoints."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .auth import Principal, verify_key
from .migrate import current_revision, head_revision

if TYPE_CHECKING:
    from .runtime import ServiceContext

MAX_BODY_BYTES = 64 * 1024
# Endpoints allowed a larger body than MAX_BODY_BYTES.
BODY_LIMITS = {"/v1/leads:batch": 5 * 1024 * 1024}
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


def problem_response(err: ProblemError, instance: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": err.title, "status": err.status}
    if err.detail:
        body["detail"] = err.detail
    if instance:
        body["instance"] = instance
    if err.errors:
        body["errors"] = err.errors
    return JSONResponse(body, status_code=err.status, media_type=PROBLEM_JSON, headers=err.headers)


def field_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Pydantic error list -> [{field: 'contact.email', message: ...}] without the 'body' prefix."""
    out = []
    for err in errors:
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
        errors = field_errors(exc.errors())
        if on_invalid is not None:
            on_invalid(request, errors)
        return problem_response(
            ProblemError(422, "Invalid request", "The request has invalid fields.", errors), request.url.path
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(
            ProblemError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)), request.url.path
        )


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413, whether or not Content-Length is honest."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = BODY_LIMITS.get(scope.get("path", ""), self.limit)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = BODY_LIMITS.get(scope.get("path", ""), self.limit)
        if scope.get("path") in ("/v1/leads", "/v1/leads:batch"):
            # The key is not checked yet, so the sender is unknown.
            metrics.leads_rejected.labels("unknown", "too_large").inc()
        response = problem_response(
            ProblemError(413, "Request body too large", f"Bodies are limited to {limit} bytes.")
        )
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def require_key(role: str = "source") -> Callable[[Request], Awaitable[Principal]]:
    """Dependency: a valid bearer key; `admin` routes also need an admin key."""

    async def dependency(request: Request) -> Principal:
        ctx: ServiceContext = request.app.state.ctx
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise ProblemError(401, "Unauthorized", "Send `Authorization: Bearer <key>`.",
                               headers={"WWW-Authenticate": "Bearer"})
        presented = presented.strip()
        principal = ctx.key_cache.get(presented)
        if principal is None:
            async with ctx.engine.connect() as conn:
                principal = await verify_key(conn, presented)
            if principal is not None:
                ctx.key_cache.put(presented, principal)
        if principal is None:
            raise ProblemError(401, "Unauthorized", "The key is unknown or revoked.",
                               headers={"WWW-Authenticate": "Bearer"})
        if role == "admin" and not principal.is_admin:
            raise ProblemError(403, "Forbidden", "This needs an admin key.")
        request.state.principal = principal
        return principal

    return dependency


def create_app(
    ctx: ServiceContext, routers: list[APIRouter], on_invalid: InvalidRequestHook | None = None
) -> FastAPI:
    app = FastAPI(title=f"leadsla {ctx.name}", version="0.1.0")
    app.state.ctx = ctx
    app.add_middleware(BodyLimitMiddleware)
    install_error_handlers(app, on_invalid)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": ctx.name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await readiness(ctx)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/config", dependencies=[Depends(require_key("admin"))])
    async def effective_config() -> dict[str, Any]:
        return {"version": ctx.config.version, "config": ctx.config.config.model_dump(mode="json")}

    for router in routers:
        app.include_router(router)
    return app


async def readiness(ctx: ServiceContext) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        async with ctx.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            current = await current_revision(conn)
        checks["database"] = "ok"
        checks["migrations"] = "ok" if current == head_revision() else f"at {current}, need {head_revision()}"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        await asyncio.wait_for(ctx.producer.client.fetch_all_metadata(), 2.0)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    checks["consumers"] = "ok" if all(c.ready.is_set() for c in ctx.consumers) else "joining"
    return checks
