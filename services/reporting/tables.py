from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    String,
    Table,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import metadata

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
    # Arrival order: a rebuild folds events in the order the live projection saw them.
    Column("position", BigInteger, Identity(), nullable=False),
    Index("ix_reporting_timeline_lead", "lead_id", "time"),
    Index("ix_reporting_timeline_position", "position", unique=True),
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
    Column("assignment_no", Integer),
    Column("first_owner_id", String),
    Column("first_assign_method", String),
    Column("first_assigned_at", DateTime(timezone=True)),
    Column("reassignments", Integer, nullable=False, server_default="0"),
    Column("queued_at", DateTime(timezone=True)),
    Column("dequeued_at", DateTime(timezone=True)),
    Column("first_touch_actor", String),
    Column("meeting_booked_at", DateTime(timezone=True)),
    Column("disposition_status", String),
    Column("disposition_reason", String),
    Column("dispositioned_at", DateTime(timezone=True)),
    Column("breached", Boolean, nullable=False, server_default=false()),
    Column("first_team_id", String),  # the first assignment's team (routing success is theirs)
    Index("ix_reporting_leads_received", "received_at", "lead_id"),
    schema=SCHEMA,
)

# One row per SLA timer (a lead has one first_response timer, and one next_action per follow-up).
sla_timers = Table(
    "sla_timers",
    metadata,
    Column("sla_id", String, primary_key=True),
    Column("lead_id", String, nullable=False),
    Column("metric", String, nullable=False),
    Column("policy_id", String),
    Column("tier", String),
    Column("owner_id", String),
    Column("state", String, nullable=False),  # open | paused | met | breached | cancelled
    Column("started_at", DateTime(timezone=True)),
    Column("due_at", DateTime(timezone=True)),
    Column("met_at", DateTime(timezone=True)),
    Column("breached_at", DateTime(timezone=True)),
    Column("root_cause", String),
    Column("cancel_reason", String),
    Column("responded_at", DateTime(timezone=True)),
    Column("ttfr_seconds", Float),
    Column("ttfr_business_seconds", Float),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("team_id", String),  # the team of the owner who held it (the SLA report by team)
    # The calendar and zone the SLA clock timed it by (the metric's own, the owner's or lead's
    # zone): business time to first response is measured on them (migration 0020).
    Column("calendar", String),
    Column("timezone", String),
    # Business time it spent paused (and since when, while paused), as the SLA clock counts it:
    # not part of the business time to first response (migration 0024).
    Column("paused_seconds", Float),
    Column("paused_at", DateTime(timezone=True)),
    Index("ix_reporting_sla_timers_lead", "lead_id"),
    Index("ix_reporting_sla_timers_started", "metric", "started_at"),
    schema=SCHEMA,
)
