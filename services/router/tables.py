from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import metadata

SCHEMA = "router"

# One row per lead the router owns: its current owner. The row stays when the lead is closed
# (dispositioned, opted out); open rows (closed_at IS NULL) are what capacity counts.
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
    Column("facts", JSONB),  # the lead facts routing used, to route it again on reassignment
    Column("company_domain", String),
    Column("touched_at", DateTime(timezone=True)),  # first touch (call, email, ...) by anyone
    Index("ix_router_assignments_open_owner", "owner_id", postgresql_where=text("closed_at IS NULL")),
    # The account owner's lookup: a domain's newest open lead (migration 0010).
    Index("ix_router_assignments_open_domain", "company_domain", text("assigned_at DESC"),
          postgresql_where=text("closed_at IS NULL")),
    schema=SCHEMA,
)

cursors = Table(
    "rr_cursors",
    metadata,
    Column("rule_id", String, primary_key=True),
    Column("last_index", Integer, nullable=False),
    Column("last_owner", String),  # who had the last turn: found by id, as indexes shift (migration 0019)
    Column("counts", JSONB),  # owner -> credit under the `weighted` method (smooth weighted round robin)
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
    Column("assignment_no", Integer, nullable=False, server_default="1"),  # the next assignment's number
    schema=SCHEMA,
)

# Projection of the owner streams: the runtime changes that override the configuration file.
owner_state = Table(
    "owner_state",
    metadata,
    Column("owner_id", String, primary_key=True),
    Column("changes", JSONB, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    schema=SCHEMA,
)

# Assignments per owner per day (the day in the owner's own calendar), for daily caps.
daily_assignments = Table(
    "daily_assignments",
    metadata,
    Column("owner_id", String, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("assigned", Integer, nullable=False),
    schema=SCHEMA,
)
