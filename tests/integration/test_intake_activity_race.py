"""Found by the chaos run (tests/chaos): an activity read from Kafka for a lead that is being
accepted at that very moment was parked after the lead's transaction had looked for parked
activities, so it waited out `intake.activity_wait` and was dead-lettered; the touch was lost and
the lead breached. Here the two transactions interleave exactly that way."""
from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import func, select, text

from services.intake.adapters import PostgresIntakeStore
from services.intake.domain import intent_vocabulary
from services.intake.handlers import RawPosition, park_activity, resolve_leads, submit_lead
from services.intake.normalize import read_submission
from services.intake.projection import PROJECTION
from services.intake.tables import activities, pending_activities
from shared.events import CloudEvent
from shared.uow import UnitOfWork
from tests.support import eventually

CONFIG = "tiers: {default: A}\nintake: {sources: {chat: {}}}\n"


async def _waiting_on_a_lock(engine) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")))


async def test_an_activity_parked_while_its_lead_is_being_accepted_is_recorded(make_ctx, engine, clock) -> None:
    ctx = make_ctx("intake", CONFIG)
    config, now = ctx.config.config, clock.now()
    external_id = f"race-{uuid.uuid4().hex[:8]}"
    touch = CloudEvent(id=str(uuid.uuid4()), source="crm", type="activity", subject=external_id, time=now,
                       data={"lead_id": external_id, "type": "call", "outcome": "connected"})
    submission = read_submission({"external_id": external_id, "contact": {"email": f"{external_id}@example.com"},
                                  "intent": {"type": "demo_request"}}, config.intake.source("chat"),
                                 intent_vocabulary(config))

    # The activity's transaction: the lead is not there yet, so the activity is parked ...
    activity_uow = UnitOfWork(engine, "intake", projection=PROJECTION)
    await activity_uow.__aenter__()
    assert await resolve_leads(PostgresIntakeStore(activity_uow.conn), [(external_id, None)]) == {(external_id, None): None}
    await park_activity(activity_uow, config, external_id, touch,
                        RawPosition("leads.activities.raw", 0, 1, external_id, b"{}"), now)

    # ... while the lead's transaction runs: it must not miss the park (it may wait for it).
    async def accept() -> str:
        async with UnitOfWork(engine, "intake", projection=PROJECTION) as uow:
            accepted = await submit_lead(uow, PostgresIntakeStore(uow.conn), config, submission, source="chat", now=now)
            await uow.commit()
        return accepted.lead_id

    accepting = asyncio.create_task(accept())
    await eventually(lambda: accepting.done() or _waiting_on_a_lock(engine),
                     what="the lead to be accepted, or to wait for the activity's transaction")
    await activity_uow.commit()
    await activity_uow.__aexit__(None, None, None)
    lead_id = await accepting

    async with engine.connect() as conn:
        recorded = await conn.scalar(select(func.count()).select_from(activities).where(activities.c.lead_id == lead_id))
        parked = await conn.scalar(select(func.count()).select_from(pending_activities)
                                   .where(pending_activities.c.lead_ref == external_id))
    assert (recorded, parked) == (1, 0), "the touch was left parked: it would be dead-lettered, the lead breached"
