"""Router edges: HTTP routes (owners, reassignment, queue) and the queue loop."""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import exc as sa_exc

from shared import metrics
from shared.aio import run_loop
from shared.clock import as_utc
from shared.config import CalendarConfig, shown
from shared.events import utc_iso
from shared.eventstore import ConcurrencyConflict, retry_on_conflict
from shared.http import ProblemError, conflict, field_errors, not_found, require_key
from shared.openapi import problem
from shared.runtime import ServiceContext
from shared.text import spelled, storable

from . import views
from .adapters import effective_owners, lock_routing, queue_waits, runtime_owner_changes
from .domain import current_status, effective_owner
from .handlers import (
    ClosedLead,
    NobodyEligible,
    SameOwner,
    UnknownLead,
    UnknownOwner,
    drain_queue,
    reassign,
    update_owner,
)

log = structlog.get_logger()
WRITE_RETRIES = 3  # a concurrent writer on the same owner stream: read again and retry
MAX_COUNT = 1_000_000  # capacity, daily_cap
MAX_WEIGHT = 10_000


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON true is not a count of 1
        raise ValueError("must be a whole number, not true/false")
    return value


# Bounded so that the change can be stored and added up (a huge number is a typo, not a plan).
Count = Annotated[int, BeforeValidator(_no_bool), Field(ge=0, le=MAX_COUNT)]


def _status(value: Any) -> Any:
    """'Away', 'Out of office', 'OOO', 'available': as CRMs and admins write a rep's status."""
    if not isinstance(value, str):
        return value
    name = spelled(value)
    return {"available": "active", "ooo": "out_of_office", "out_of_the_office": "out_of_office"}.get(name, name)


class OwnerChange(BaseModel):
    """PUT /v1/owners/{owner_id}: only the fields sent change."""

    model_config = ConfigDict(extra="forbid")
    status: Annotated[Literal["active", "away", "out_of_office"] | None, BeforeValidator(_status)] = None
    until: datetime | None = None
    capacity: Count | None = None
    daily_cap: Count | None = None
    weight: Annotated[int, BeforeValidator(_no_bool), Field(ge=1, le=MAX_WEIGHT)] | None = None
    # A configured calendar's name, the owner's own hours ({timezone, hours, holidays}: checked
    # in owner_changes, so that an error names the field inside them), or null: no working-hours limit.
    working_hours: Any = Field(
        default=None, json_schema_extra={"description": "a configured calendar's name, or the owner's own hours "
                                                        "{timezone, hours: {mon: [\"09:00-17:00\"]}, holidays}"})

    @field_validator("working_hours")
    @classmethod
    def _name_or_hours(cls, value: Any) -> Any:
        # One type check, so a wrong type is one error on `working_hours` (a union reports one per member).
        if value is not None and not isinstance(value, str | dict):
            raise ValueError("must be a calendar's name, the owner's own hours {timezone, hours, holidays}, or null")
        return value

    @field_validator("until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-11-30T09:00:00Z")
        if value is not None:
            as_utc(value)  # else an OverflowError when it is compared or stored: a 500 for a bad field
        return value


class ReassignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    owner_id: str | None = Field(default=None, min_length=1)  # null or left out: route the lead again
    reason: str = Field(min_length=1, max_length=200)

    @field_validator("owner_id", mode="before")
    @classmethod
    def _blank_is_null(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value  # a form's empty field: route again

    @field_validator("owner_id", "reason")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return storable(value)  # else lead.reassigned carries it and reporting dead-letters it


def _invalid(field: str, message: str) -> ProblemError:
    return ProblemError(422, "Invalid request", "The request has invalid fields.", [{"field": field,
                                                                                    "message": message}])


def owner_changes(ctx: ServiceContext, owner_id: str, body: OwnerChange, status_now: str, now: datetime,
                  until_now: datetime | None = None) -> dict[str, Any]:
    """The request as changes to the owner's stored fields; ProblemError (422) names the bad field.
    `until_now`: the end of the owner's stored absence, if any (it may be over already)."""
    sent = body.model_fields_set
    if not sent:
        raise _invalid("(body)", "send at least one of status, until, capacity, daily_cap, weight, working_hours")
    for name in ("status", "weight"):
        if name in sent and getattr(body, name) is None:
            raise _invalid(name, "cannot be null")
    changes: dict[str, Any] = {k: getattr(body, k) for k in ("status", "capacity", "daily_cap", "weight")
                               if k in sent}
    status = body.status if "status" in sent else status_now
    if "until" in sent:
        # `until: null` beside another status is how a CRM sending the whole record says "no
        # absence": that is what the status means anyway, so only an end date is refused.
        if status != "out_of_office" and body.until is not None:
            raise _invalid("until", "only applies with status out_of_office")
        if body.until is not None and body.until <= now:
            raise _invalid("until", "must be in the future")
        changes["until"] = body.until.isoformat() if body.until else None
    elif "status" in sent and body.status != "out_of_office":
        changes["until"] = None  # back from an absence: its end date no longer applies
    elif "status" in sent and until_now is not None and until_now <= now:
        # A new absence without an end: the end of an earlier one, already past, must not end it at once.
        changes["until"] = None
    if "working_hours" in sent:
        hours = body.working_hours
        if isinstance(hours, str):
            if hours not in ctx.config.config.calendars:
                raise _invalid("working_hours", f"unknown calendar {hours!r}")
            changes.update(calendar=hours, working_hours=None)
        else:
            changes.update(calendar=None, working_hours=_own_hours(hours).model_dump(mode="json") if hours else None)
    return changes


def _own_hours(hours: dict[str, Any]) -> CalendarConfig:
    try:
        return CalendarConfig.model_validate(hours)
    except ValidationError as exc:
        errors = [{"field": "working_hours" if e["field"] == "(body)" else f"working_hours.{e['field']}",
                   "message": e["message"]} for e in field_errors(exc.errors())]
        raise ProblemError(422, "Invalid request", "The request has invalid fields.", errors) from None


def build_api(ctx: ServiceContext, wake_queue: asyncio.Event) -> APIRouter:
    api = APIRouter()
    admin = require_key("admin")

    @api.get("/v1/config", dependencies=[Depends(admin)])
    async def effective_config() -> dict[str, Any]:
        """The configuration as routing uses it: owners with the changes made at runtime (PUT
        /v1/owners/{id}) laid over the file's values, since those stay in force over later files;
        `runtime_changes` names each such field."""
        versioned = ctx.config
        async with ctx.engine.connect() as conn:
            changes = await runtime_owner_changes(conn)
        config = shown(versioned.config)
        named = {o.id for o in versioned.config.owners}
        config["owners"] = [effective_owner(o, changes.get(o.id)).model_dump(mode="json")
                            for o in versioned.config.owners]
        return {"version": versioned.version, "config": config,
                "runtime_changes": {"owners": {k: v for k, v in changes.items() if k in named and v}}}

    @api.get("/v1/owners", dependencies=[Depends(admin)])
    async def get_owners() -> dict[str, Any]:
        async with ctx.engine.connect() as conn:
            return {"owners": await views.list_owners(conn, ctx.config.config, ctx.clock.now())}

    @api.put("/v1/owners/{owner_id}", responses={409: problem("The owner changed concurrently; try again")})
    async def put_owner(owner_id: str, body: OwnerChange = Body(...),
                        principal=Depends(admin)) -> JSONResponse:
        config = ctx.config.config
        if config.owner(owner_id) is None:
            raise not_found("owner_id", "Not found", f"No owner {owner_id!r} in the configuration.")
        for attempt in range(WRITE_RETRIES):
            async with ctx.uow() as uow:
                # The time is read once the routing state is ours, as `reassign` does (the change
                # is decided from it); `update_owner` takes it again (re-entrant: one round trip).
                await lock_routing(uow.conn)
                now = ctx.clock.now()
                owner = (await effective_owners(uow.conn, config))[owner_id]
                changes = owner_changes(ctx, owner_id, body, current_status(owner, now), now, owner.until)
                try:
                    await update_owner(uow, config, now, owner_id, changes, principal.name)
                    await uow.commit()
                except ValidationError as exc:
                    raise ProblemError(422, "Invalid request", "The change makes an invalid owner.",
                                       field_errors(exc.errors())) from exc
                except (ConcurrencyConflict, sa_exc.IntegrityError):
                    # Another change of this owner won the race: retry from fresh state.
                    if attempt == WRITE_RETRIES - 1:
                        raise conflict("owner_id", "The owner changed concurrently; try again.") from None
                    continue
            break
        wake_queue.set()  # the change may let queued leads go
        async with ctx.engine.connect() as conn:
            owner = next(o for o in await views.list_owners(conn, config, ctx.clock.now())
                         if o["owner_id"] == owner_id)
        return JSONResponse(owner)

    @api.post("/v1/leads/{lead_id}/reassign", status_code=202, responses={
        409: problem("Already that owner's, closed (dispositioned or opted out), nobody else can take it now, "
                     "or it kept changing concurrently")})
    async def post_reassign(lead_id: str, body: ReassignRequest, _=Depends(admin)) -> dict[str, Any]:
        async def command() -> dict[str, Any]:
            async with ctx.uow() as uow:
                result = await reassign(uow, ctx.config.config, ctx.clock, lead_id, body.owner_id, body.reason)
                await uow.commit()
            return result

        try:
            # Another writer of the lead's stream (a disposition, an escalation) got in first:
            # decide again from the state it left.
            return await retry_on_conflict(command)
        except UnknownLead:
            raise not_found("lead_id", "Not found", f"The router knows no lead {lead_id!r}.") from None
        except UnknownOwner:
            raise _invalid("owner_id", f"unknown owner {body.owner_id!r}") from None
        except ClosedLead as closed:
            raise conflict("lead_id", f"The lead was closed (dispositioned or opted out) at {utc_iso(closed.args[0])}: "
                                      "nobody is to work it, so it is handed to nobody.") from None
        except SameOwner:
            raise conflict("owner_id", f"The lead is already owned by {body.owner_id!r}.") from None
        except NobodyEligible:
            raise conflict("owner_id", "Nobody else can take this lead now; it stays with its owner.") from None
        except ConcurrencyConflict:
            raise conflict("lead_id", "The lead kept changing concurrently; try again.") from None

    @api.get("/v1/queue")
    async def get_queue(principal=Depends(require_key("source"))) -> dict[str, list[dict[str, Any]]]:
        # A source key sees the leads it submitted (its source), an admin key the whole queue.
        async with ctx.engine.connect() as conn:
            return {"leads": await views.queued_leads(conn, ctx.config.config.tiers,
                                                      None if principal.is_admin else principal.name)}

    return api


async def drain_all(ctx: ServiceContext) -> int:
    """Every queued lead someone can take now gets assigned, a page per transaction."""
    total, after = 0, None
    while True:
        async with ctx.uow() as uow:
            assigned, after = await drain_queue(uow, ctx.config.config, ctx.clock.now(), after=after)
            await uow.commit()
        total += assigned
        if after is None:
            return total


_seen_tiers: set[str] = set()


async def refresh_queue_depth(ctx: ServiceContext) -> dict[str, int]:
    """queue_depth{tier} and queue_oldest_wait_seconds{tier} from the queue table itself: right
    after restarts, and they go down. Every configured tier has its series from the start (0), so
    an alert on them has something to read before the first lead ever waits."""
    async with ctx.engine.connect() as conn:
        waits = await queue_waits(conn)
    tiers, now = ctx.config.config.tiers, ctx.clock.now()
    _seen_tiers.update(waits, [tiers.default], [rule.tier for rule in tiers.rules])
    for tier in _seen_tiers:
        depth, oldest = waits.get(tier, (0, now))
        metrics.queue_depth.labels(tier).set(depth)
        metrics.queue_oldest_wait.labels(tier).set(max((now - oldest).total_seconds(), 0.0))
    return {tier: depth for tier, (depth, _) in waits.items()}


def queue_loop(ctx: ServiceContext, wake: asyncio.Event):
    """Drains the queue when woken (an owner changed) and every `queue_check_seconds` (working
    hours starting, absences ending, config reloads adding owners), then reports the depth."""

    async def drain_round() -> float | None:
        await drain_all(ctx)
        await refresh_queue_depth(ctx)
        return ctx.config.config.routing.queue_check_seconds  # or less, when woken (a config reload too)

    async def run(stop: asyncio.Event) -> None:
        # A failed round (database away) is tried again after the backoff; routing itself goes on.
        await run_loop("router.queue", drain_round, stop, wakeup=wake,
                       idle=ctx.config.config.routing.queue_check_seconds)

    return run

