from sqlalchemy import Column, DateTime, Integer, String, Table, func
from sqlalchemy.dialects.postgresql import JSONB

from leadsla.shared.db import metadata

SCHEMA = "router"

assignments = Table(
    "assignments",
    metadata,
    Column("lead_id", String, primary_key=True),
    Column("owner_id", String, nullable=False, index=True),
    Column("team_id", String),
    Column("rule_id", String),
    Column("tier", String, nullable=False),
    Column("assignment_no", Integer, nullable=False),
    Column("assigned_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
    schema=SCHEMA,
)

cursors = Table(
    "rr_cursors",
    metadata,
    Column("rule_id", String, primary_key=True),
    Column("last_index", Integer, nullable=False),
    schema=SCHEMA,
)

queue = Table(
    "queue",
    metadata,
    Column("lead_id", String, primary_key=True),
    Column("tier", String, nullable=False, index=True),
    Column("reason", String, nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("facts", JSONB, nullable=False),
    schema=SCHEMA,
)
