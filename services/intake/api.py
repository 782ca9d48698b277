"""HTTP entrypoints: turn requests into service-layer calls, nothing more."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse

from leadsla.shared.auth import Principal
from leadsla.shared.http import ProblemError, require_key
from leadsla.shared.runtime import ServiceContext

from .domain import ActivityIn, LeadSubmission
from .handlers import RejectedActivity, UnknownLead, record_activity, submit_lead


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/leads", status_code=201)
    async def post_lead(
        submission: LeadSubmission,
        principal: Annotated[Principal, Depends(require_key("source"))],
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JSONResponse:
        async with ctx.uow() as uow:
            result = await submit_lead(
                uow, ctx.config.config, submission, source=principal.name,
                now=ctx.clock.now(), idempotency_key=idempotency_key,
            )
            await uow.commit()
        status = 201 if result.status == "accepted" else 200
        return JSONResponse({"lead_id": result.lead_id, "status": result.status}, status_code=status)

    @router.post("/v1/leads/{lead_id}/activities", status_code=202)
    async def post_activity(
        lead_id: str,
        activity: ActivityIn,
        principal: Annotated[Principal, Depends(require_key("source"))],
    ) -> JSONResponse:
        try:
            async with ctx.uow() as uow:
                activity_id = await record_activity(uow, ctx.config.config, lead_id, activity, now=ctx.clock.now())
                await uow.commit()
        except UnknownLead:
            raise ProblemError(404, "Unknown lead", f"No lead {lead_id!r}.") from None
        except RejectedActivity as exc:
            raise ProblemError(422, "Invalid activity", str(exc),
                               [{"field": exc.field, "message": str(exc)}]) from None
        return JSONResponse({"activity_id": activity_id}, status_code=202)

    return router
