from sqlalchemy import Column, DateTime, Index, String, Table
from sqlalchemy.dialects.postgresql import JSONB

from leadsla.shared.db import metadata

SCHEMA = "reporting"

timeline = Table(
    "timeline",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("lead_id", String, nullable=False),
    Column("type", String, nullable=False),
    Column("source", String, nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("correlation_id", String),
    Column("causation_id", String),
    Column("data", JSONB, nullable=False),
    Index("ix_reporting_timeline_lead", "lead_id", "time"),
    schema=SCHEMA,
)

lead_state = Table(
    "leads",
    metadata,
    Column("lead_id", String, primary_key=True),
    Column("source", String),
    Column("tier", String),
    Column("status", String, nullable=False),
    Column("owner_id", String),
    Column("team_id", String),
    Column("received_at", DateTime(timezone=True)),
    Column("assigned_at", DateTime(timezone=True)),
    Column("first_response_at", DateTime(timezone=True)),
    Column("sla", JSONB, nullable=False),  # metric -> {state, due_at, ...}
    Column("profile", JSONB, nullable=False),  # contact, company, intent as received
    Column("updated_at", DateTime(timezone=True), nullable=False),
    schema=SCHEMA,
)
