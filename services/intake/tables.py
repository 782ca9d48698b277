from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import metadata

SCHEMA = "intake"

leads = Table(
    "leads",
    metadata,
    Column("lead_id", String, primary_key=True),
    Column("source", String, nullable=False),
    Column("external_id", String),
    Column("email", String),
    Column("phone", String),
    Column("tier", String, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("correlation_id", String, nullable=False),
    Column("record", JSONB, nullable=False),
    Index("ux_intake_leads_source_external", "source", "external_id", unique=True,
          postgresql_where=text("external_id IS NOT NULL")),
    Index("ix_intake_leads_email", "email", "received_at"),
    Index("ix_intake_leads_phone", "phone", "received_at"),
    schema=SCHEMA,
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("source", String, primary_key=True),
    Column("key", String, primary_key=True),
    Column("lead_id", String, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    schema=SCHEMA,
)

activities = Table(
    "activities",
    metadata,
    Column("activity_id", String, primary_key=True),
    Column("lead_id", String, nullable=False, index=True),
    Column("type", String, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("record", JSONB, nullable=False),
    schema=SCHEMA,
)

# A merged repeat's own external id (the sender's record of the second form fill) -> the lead it
# was merged into, so the sender's touches naming it find that lead (lead.merged; the latest wins).
merged_external_ids = Table(
    "merged_external_ids",
    metadata,
    Column("external_id", String, primary_key=True),
    Column("source", String, primary_key=True),
    Column("lead_id", String, nullable=False),
    Column("merged_at", DateTime(timezone=True), nullable=False),
    schema=SCHEMA,
)

# Activities read from Kafka before their lead (the raw topics are consumed independently):
# parked until the lead arrives or `intake.activity_wait` runs out (then dead-lettered).
pending_activities = Table(
    "pending_activities",
    metadata,
    # the hold id, derived from the raw record's position (intake.activity_held), so replay
    # reproduces it
    Column("id", String, primary_key=True),
    Column("lead_ref", String, nullable=False, index=True),  # a lead id or a lead's external id
    Column("event", JSONB, nullable=False),
    Column("topic", String, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("key", String),
    Column("original", LargeBinary, nullable=False),
    Column("parked_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    schema=SCHEMA,
)

# When intake could accept: one row per uninterrupted run of one process's heartbeats (a process
# that could not beat for a while, the database away, starts a new row). The SLA clock reads it to
# wait out intake's outages (sla_clock/domain.intake_hold); not a projection, replay leaves it.
availability = Table(
    "availability",
    metadata,
    Column("interval_id", String, primary_key=True),
    Column("first_beat", DateTime(timezone=True), nullable=False),
    Column("last_beat", DateTime(timezone=True), nullable=False, index=True),
    schema=SCHEMA,
)
