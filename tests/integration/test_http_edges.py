"""HTTP edges every service shares: body limits however the body arrives, quiet readiness."""
from __future__ import annotations

import logging

import httpx
import pytest

from services.intake.bootstrap import bootstrap
from shared.auth import create_key
from shared.http import MAX_BODY_BYTES, create_app

CONFIG = "tiers: {default: C}\n"


@pytest.fixture
async def client(make_ctx, engine):
    ctx = make_ctx("intake", CONFIG)
    spec = bootstrap(ctx)
    app = create_app(ctx, spec.routers, spec.on_invalid_request)
    async with engine.begin() as conn:
        key = await create_key(conn, "webform", "source")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake",
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


async def test_a_chunked_body_over_the_limit_is_a_413_not_a_400(client) -> None:
    async def chunks():
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b" " * 1024

    response = await client.post("/v1/leads", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_413_is_a_problem_naming_the_body_as_its_field(client, chunked: bool) -> None:
    """CONTRACT: errors are problem+json with field-level `errors`; a body over the limit names the
    body, as a body that is not JSON does, and the request it answers."""
    body = b'{"intent": {"message": "' + b"x" * MAX_BODY_BYTES + b'"}}'

    async def chunks():
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    response = await client.post("/v1/leads", content=chunks() if chunked else body,
                                 headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    problem = response.json()
    assert problem["status"] == 413 and problem["instance"] == "/v1/leads"
    assert [e["field"] for e in problem["errors"]] == ["(body)"]


async def test_a_chunked_body_under_the_limit_is_read_whole(client) -> None:
    body = b'{"contact": {"email": "chunked@example.com"}, "intent": {"type": "trial"}}'

    async def chunks():
        for i in range(0, len(body), 7):
            yield body[i:i + 7]

    response = await client.post("/v1/leads", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 201), response.text


async def test_readiness_checks_write_no_info_logs(client, caplog) -> None:
    caplog.set_level(logging.INFO)
    await client.get("/readyz")
    caplog.clear()
    await client.get("/readyz")
    ours = [r for r in caplog.records if r.name != "httpx"]  # httpx: the test's own client
    assert [r.getMessage() for r in ours if r.levelno >= logging.INFO] == []


async def test_a_direct_route_answers_as_the_router_would(make_ctx) -> None:
    """Intake's submission routes skip the router (shared.http.DirectDispatch): what they raise
    is still answered by the app's exception handlers (a database error a 503 with Retry-After,
    a refusal its problem), other methods and a trailing slash still reach the router (405, 404)."""
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse
    from sqlalchemy import exc as sa_exc

    from shared.http import DirectRoute, ProblemError

    router = APIRouter()

    async def fails(request: Request) -> JSONResponse:
        kind = request.query_params.get("kind")
        if kind == "refused":
            raise ProblemError(422, "Lead cannot be acted on", "No contact.", [{"field": "contact", "message": "x"}])
        if kind == "database":
            raise sa_exc.DBAPIError("INSERT", {}, ConnectionRefusedError("database away"))
        return JSONResponse({"kind": kind}, status_code=201)

    router.add_api_route("/v1/direct", fails, methods=["POST"], route_class_override=DirectRoute)
    app = create_app(make_ctx("intake", CONFIG), [router])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as client:
        ok = await client.post("/v1/direct?kind=fine")
        refused = await client.post("/v1/direct?kind=refused")
        database = await client.post("/v1/direct?kind=database")
        wrong_method = await client.get("/v1/direct")
        slash = await client.post("/v1/direct/")
    assert ok.status_code == 201 and ok.json() == {"kind": "fine"}
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["errors"] == [{"field": "contact", "message": "x"}]
    assert database.status_code == 503 and database.headers["Retry-After"]
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    assert slash.status_code in (307, 404)


async def test_a_command_that_keeps_losing_its_race_is_a_409_problem_to_retry(make_ctx) -> None:
    """Retries used up against concurrent writers of one lead: a 409 saying to retry, as the
    README says, not a plain-text 500."""
    from fastapi import APIRouter

    from shared.eventstore import ConcurrencyConflict

    racing = APIRouter()

    @racing.post("/v1/race")
    async def race() -> None:
        raise ConcurrencyConflict("lead:x", 3, 4)

    app = create_app(make_ctx("intake", "tiers: {default: A}\n"), [racing])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/race")
    assert response.status_code == 409 and response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1" and response.json()["errors"][0]["field"] == "(request)"
