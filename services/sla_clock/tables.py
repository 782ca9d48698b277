from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import metadata

SCHEMA = "sla_clock"

leads = Table(
    "leads",
    metadata,
    Column("lead_id", String, primary_key=True),
    Column("tier", String, nullable=False),
    Column("source", String, nullable=False),
    Column("contactable", Boolean, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("correlation_id", String),
    Column("owner_id", String),
    Column("first_touch_at", DateTime(timezone=True)),
    Column("queued_reason", String),  # why the router queued it, while it has no owner
    Column("closed_reason", String),  # opted_out | disqualified: no timer starts any more
    Column("timezone", String),  # the contact's IANA zone, when known
    Column("team_id", String),
    Column("assigned_at", DateTime(timezone=True)),  # the first assignment: a clock start a new policy keeps
    Column("traceparent", String),  # of the event that made the lead known: its timers' events continue it
    schema=SCHEMA,
)

timers = Table(
    "timers",
    metadata,
    Column("sla_id", String, primary_key=True),
    Column("lead_id", String, nullable=False),
    Column("metric", String, nullable=False),
    Column("policy_id", String, nullable=False),
    Column("policy_version", BigInteger, nullable=False),
    Column("calendar", String, nullable=False),
    Column("owner_id", String),
    Column("tier", String, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("warnings", JSONB, nullable=False),
    Column("warned", JSONB, nullable=False),
    Column("state", String, nullable=False),
    Column("next_fire_at", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    Column("root_cause", String),
    Column("target_seconds", Float),
    Column("paused_at", DateTime(timezone=True)),
    Column("paused_seconds", Float, nullable=False, server_default="0"),  # business time spent paused
    Column("step", Integer, nullable=False, server_default="1"),  # next_action: which follow-up is due
    Column("reason", String),  # why it was cancelled
    Column("timezone", String),  # the zone the calendar is read in, when not the calendar's own
    Column("exhausts_at", DateTime(timezone=True)),  # next_action: when a missed follow-up ends its cadence
    # A tier change cancels a timer and starts its successor: one live timer per metric at a time.
    Index("ux_sla_clock_timers_live", "lead_id", "metric", unique=True,
          postgresql_where=text("state IN ('open', 'paused')")),
    Index("ix_sla_clock_timers_lead", "lead_id"),
    # What the clock has to look at: open timers, and missed follow-ups whose cadence ends by time.
    Index("ix_sla_clock_timers_due", "next_fire_at", postgresql_where=text("next_fire_at IS NOT NULL")),
    schema=SCHEMA,
)

# Open timers by metric and tier (the leadsla_sla_open_timers gauge), kept by the projection in the
# statement that writes the timers: the gauge reads a few rows instead of counting every open timer.
# Keys whose count falls to zero are deleted, so the live table and a replay's agree row for row.
open_timer_counts = Table(
    "open_timer_counts",
    metadata,
    Column("metric", String, primary_key=True),
    Column("tier", String, primary_key=True),
    Column("open", BigInteger, nullable=False),
    schema=SCHEMA,
)

# The clock's own outages: its watermark's rounds far apart (the broker or the database away from
# it, the process stalled). Kept so that a clock restarted soon after one still knows of it: the
# breaches due in it are the system's delay. Not a projection; a replay leaves it.
blind_outages = Table(
    "blind_outages",
    metadata,
    Column("began", DateTime(timezone=True), primary_key=True),
    Column("ended", DateTime(timezone=True), nullable=False, index=True),
    schema=SCHEMA,
)
