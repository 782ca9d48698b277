"""Found by the long chaos run (issue 12): a producer's transaction that stamps an event and
commits it more than `sla_commit_allowance_seconds` later (intake's consumer handling a batch
after an outage, on a loaded machine: 5 to 10 s) is invisible to the SLA clock's watermark until
it commits, so the watermark passes the event's stamp, deadlines before it are judged without it,
and a touch made in time is a breach blamed on the owner. Seen: activity.recorded stamped 4.4 s
before the deadline, committed after it; sla.breached (owner_missed) 10 s after the deadline, the
touch handled 7 s after that.

The watermark must not pass an instant while a producer transaction that began before it is still
open (e.g. by reading pg_stat_activity.xact_start of the producers' connections, which needs
application_name set per service in shared/db.make_engine). It now does."""
from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from services.sla_clock.watermark import InputWatermark
from shared.clock import SystemClock
from shared.db import make_engine
from shared.events import CloudEvent
from shared.uow import UnitOfWork
from tests.support import create_topic, eventually

ALLOWANCE = timedelta(milliseconds=200)


async def test_the_watermark_does_not_pass_an_event_stamped_in_a_transaction_still_open(
    kafka_bootstrap, engine, database_url
) -> None:
    intake_engine = make_engine(database_url, service="intake")  # as intake's own process names itself
    topic = await create_topic(kafka_bootstrap, 1)
    watermark = InputWatermark(bootstrap=kafka_bootstrap, engine=engine, clock=SystemClock(),
                               group=f"wm-{uuid.uuid4().hex[:8]}", topics=[topic], producers=["intake"],
                               commit_allowance=ALLOWANCE, interval=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(watermark.run(stop))
    try:
        async with UnitOfWork(intake_engine, "intake") as uow:  # intake handling a batch, slowly
            await uow.conn.execute(text("SELECT 1"))
            stamped = datetime.now(UTC)
            uow.emit(topic, CloudEvent(id=str(uuid.uuid4()), source="leadsla/intake", type="activity.recorded",
                                       subject="lead-1", time=stamped, data={"lead_id": "lead-1"}))
            # Rounds of the watermark while the transaction is open, well past the allowance.
            later = watermark.rounds + 5
            await eventually(lambda: watermark.rounds >= later and datetime.now(UTC) > stamped + 3 * ALLOWANCE,
                             what="watermark rounds past the commit allowance")
            seen_while_open = watermark.seen
            await uow.commit()
    finally:
        stop.set()
        await running
        await intake_engine.dispose()
    assert seen_while_open is None or seen_while_open < stamped, (
        f"the watermark passed the stamp by {(seen_while_open - stamped).total_seconds():.2f}s "
        "while the event was uncommitted")
