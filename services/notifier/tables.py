from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text, text
from sqlalchemy.dialects.postgresql import JSONB

from leadsla.shared.db import metadata

SCHEMA = "notifier"

escalations = Table(
    "escalations",
    metadata,
    Column("escalation_id", String, primary_key=True),
    Column("lead_id", String, nullable=False, index=True),
    Column("policy_id", String, nullable=False),
    Column("step", Integer, nullable=False),
    Column("trigger_event_id", String, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    schema=SCHEMA,
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("notification_id", String, primary_key=True),
    Column("escalation_id", String, nullable=False),
    Column("lead_id", String, nullable=False),
    Column("channel", String, nullable=False),
    Column("recipient", String, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("state", String, nullable=False),  # pending | sent | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("sent_at", DateTime(timezone=True)),
    Index("ix_notifier_deliveries_due", "next_attempt_at", postgresql_where=text("state = 'pending'")),
    schema=SCHEMA,
)
