"""Reporting's HTTP routes (one lead, the lead list, the reports as JSON or CSV, the board) and
its one loop (the overdue-timer gauge)."""
from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.datastructures import QueryParams

from shared import metrics
from shared.aio import run_loop
from shared.clock import as_utc
from shared.http import ProblemError, not_found, require_key
from shared.runtime import Loop, ServiceContext

from . import views
from .board import render_board
from .domain import STATUS_RANK

log = structlog.get_logger()
OVERDUE_REFRESH_SECONDS = 15.0
# A breach leaves at its deadline and reaches reporting a moment later; only past this margin is
# an open timer a sign that the SLA clock is not firing.
OVERDUE_GRACE = timedelta(minutes=1)

GroupBy = Literal["tier", "owner", "team", "source", "policy", "week"]
Metric = Literal["first_response", "next_action", "qualification"]
# Every status the fold gives a lead: a filter on any other reads as "no such leads" (a typo, a
# status of another system) instead of the 422 naming it.
LeadStatus = Literal[tuple(STATUS_RANK)]  # type: ignore[valid-type]


def _period(start: datetime | None, end: datetime | None) -> views.Period:
    start, end = _utc(start, "from"), _utc(end, "to")
    if start is not None and end is not None and end <= start:
        raise ProblemError(422, "Invalid period", "`to` must be after `from`.",
                           errors=[{"field": "to", "message": "must be after from"}])
    return views.Period(start, end)


def _utc(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:  # read as UTC, the only zone reports are cut in
        return value.replace(tzinfo=UTC)
    try:
        return as_utc(value)
    except ValueError as exc:
        raise ProblemError(422, "Invalid period", f"`{field}` {exc}.",
                           errors=[{"field": field, "message": str(exc)}]) from None


def _accept_q(accept: str) -> dict[str, float]:
    """Each media range an Accept header names, with its weight (RFC 9110 12.5.1; a bad q is 0)."""
    weights: dict[str, float] = {}
    for part in accept.lower().split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        if media:
            weights[media] = max(q, weights.get(media, 0.0))
    return weights


def wants_csv(request: Request) -> bool:
    """CSV when the client names text/csv (or text/*) and weighs it at least as high as JSON:
    `application/json, text/csv;q=0.1` still wants JSON, `text/csv;q=0` refuses CSV. A client
    that names neither (a browser's text/html, */*) gets JSON, as before."""
    weights = _accept_q(request.headers.get("accept", ""))
    csv_q = weights.get("text/csv", weights.get("text/*"))
    if not csv_q:
        return False
    json_q = weights.get("application/json", weights.get("application/*", weights.get("*/*", 0.0)))
    return csv_q >= json_q


# One URL, JSON or CSV by the Accept header: a cache must key on it (RFC 9110 12.5.5).
VARY = {"Vary": "Accept"}


# A cell a spreadsheet would run as a formula (OWASP "CSV injection"): sources and reasons come
# from senders, and these files are opened in Excel by sales managers.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text value as a spreadsheet shows it verbatim: one that would start a formula gets a
    leading apostrophe. Numbers (a negative one too) pass as they are."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def report_response(request: Request, name: str, columns: list[str], rows: list[dict[str, Any]]) -> Any:
    if not wants_csv(request):
        return JSONResponse({"rows": rows}, headers=VARY)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in rows)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"', **VARY})


FromQ = Annotated[datetime | None, Query(alias="from", description="start, inclusive (RFC 3339)")]
ToQ = Annotated[datetime | None, Query(alias="to", description="end, exclusive (RFC 3339)")]
GroupQ = Annotated[GroupBy, Query(description="row per tier, owner, team, source, policy or ISO week")]


class EmptyMeansUnset(APIRoute):
    """A query parameter sent empty (`tier=`) is one left out: httpx sends a parameter given as
    None that way, and so does a blank HTML form field. Else `tier=` filters on the empty string
    (an empty list that reads as "no such leads") and `from=` is refused, for a filter not meant."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handle = super().get_route_handler()

        async def without_empty_values(request: Request) -> Response:
            given = QueryParams(request.scope["query_string"]).multi_items()
            request.scope["query_string"] = str(QueryParams([(k, v) for k, v in given if v != ""])).encode()
            return await handle(Request(request.scope, request.receive))

        return without_empty_values


def routes(ctx: ServiceContext) -> APIRouter:
    # Admin only: leads carry personal data, and per-owner performance is for managers.
    api = APIRouter(dependencies=[Depends(require_key("admin"))], route_class=EmptyMeansUnset)

    async def read(query: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        async with ctx.engine.connect() as conn:
            return await query(conn, *args)

    @api.get("/v1/leads/{lead_id}")
    async def get_lead(lead_id: str) -> dict[str, Any]:
        found = await read(views.lead_with_timeline, lead_id)
        if found is None:
            raise not_found("lead_id", "Unknown lead", f"No lead {lead_id!r} in the read model (yet).")
        return found

    @api.get("/v1/leads")
    async def list_leads(
        start: FromQ = None, end: ToQ = None,
        status: LeadStatus | None = None, owner_id: str | None = None, team_id: str | None = None,
        tier: str | None = None, source: str | None = None, breached: bool | None = None,
        external_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50, cursor: str | None = None,
    ) -> dict[str, Any]:
        f = views.LeadFilter(status=status, owner_id=owner_id, team_id=team_id, tier=tier, source=source,
                             breached=breached, external_id=external_id, period=_period(start, end))
        try:
            leads, next_cursor = await read(views.list_leads, f, limit, cursor)
        except views.BadCursor as exc:
            raise ProblemError(422, "Invalid cursor", str(exc),
                               errors=[{"field": "cursor", "message": str(exc)}]) from None
        return {"leads": leads, "next_cursor": next_cursor}

    @api.get("/v1/reports/sla")
    async def sla_report(request: Request, start: FromQ = None, end: ToQ = None, group_by: GroupQ = "tier",
                         metric: Metric = "first_response") -> Any:
        rows = await read(views.sla_report, _period(start, end), group_by, metric)
        return report_response(request, "sla", views.report_columns(group_by, views.SLA_COLUMNS), rows)

    @api.get("/v1/reports/routing")
    async def routing_report(request: Request, start: FromQ = None, end: ToQ = None,
                             group_by: GroupQ = "tier") -> Any:
        rows = await read(views.routing_report, _period(start, end), group_by)
        return report_response(request, "routing", views.report_columns(group_by, views.ROUTING_COLUMNS), rows)

    @api.get("/v1/reports/dispositions")
    async def dispositions_report(request: Request, start: FromQ = None, end: ToQ = None,
                                  group_by: GroupQ = "tier") -> Any:
        rows = await read(views.dispositions_report, _period(start, end), group_by)
        return report_response(request, "dispositions",
                               views.report_columns(group_by, views.DISPOSITION_COLUMNS), rows)

    @api.get("/v1/reports/breaches")
    async def breaches_report(request: Request, start: FromQ = None, end: ToQ = None, group_by: GroupQ = "tier",
                              metric: Metric | None = None) -> Any:
        rows = await read(views.breaches_report, _period(start, end), group_by, metric)
        return report_response(request, "breaches", views.report_columns(group_by, views.BREACH_COLUMNS), rows)

    board = APIRouter()

    # Open on purpose, for a wall screen: it shows lead ids, tiers and owner ids, no contact data.
    @board.get("/board", response_class=HTMLResponse)
    async def sla_board() -> HTMLResponse:
        now = ctx.clock.now()
        data = await read(views.board_data, now)
        return HTMLResponse(render_board(data, now), headers={"Cache-Control": "no-store"})

    outer = APIRouter()
    outer.include_router(api)
    outer.include_router(board)
    return outer


async def measure_overdue(ctx: ServiceContext) -> None:
    """Seen from reporting, so it still tells the truth when the SLA clock has stopped."""
    async with ctx.engine.connect() as conn:
        counts = await views.overdue_timer_counts(conn, ctx.clock.now() - OVERDUE_GRACE)
    metrics.sla_overdue_timers.clear()  # a label set with nothing overdue any more reads as absent
    for metric, tier, count in counts:
        metrics.sla_overdue_timers.labels(metric, tier).set(count)


def overdue_loop(ctx: ServiceContext) -> Loop:
    async def measure_round() -> float:
        await measure_overdue(ctx)
        return OVERDUE_REFRESH_SECONDS

    async def run(stop: asyncio.Event) -> None:
        await run_loop("reporting.overdue", measure_round, stop, idle=OVERDUE_REFRESH_SECONDS)

    return run
