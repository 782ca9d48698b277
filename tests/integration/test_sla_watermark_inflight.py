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

import uuid
from datetime import UTC, datetime

from sqlalchemy import text

from shared.db import make_engine
from shared.events import CloudEvent
from shared.uow import UnitOfWork
from tests.support import WATERMARK_ALLOWANCE, create_topic, eventually, running_watermark

ALLOWANCE = WATERMARK_ALLOWANCE


async def test_the_watermark_does_not_pass_an_event_stamped_in_a_transaction_still_open(
    kafka_bootstrap, engine, database_url
) -> None:
    intake_engine = make_engine(database_url, service="intake")  # as intake's own process names itself
    topic = await create_topic(kafka_bootstrap, 1)
    try:
        async with running_watermark(kafka_bootstrap, engine, [topic]) as watermark, \
                UnitOfWork(intake_engine, "intake") as uow:  # intake handling a batch, slowly
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
        await intake_engine.dispose()
    assert seen_while_open is None or seen_while_open < stamped, (
        f"the watermark passed the stamp by {(seen_while_open - stamped).total_seconds():.2f}s "
        "while the event was uncommitted")
