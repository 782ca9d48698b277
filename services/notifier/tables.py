from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import metadata

SCHEMA = "notifier"

# What a message says about the lead (name, company, tier, owner), projected from
# leads.intake and leads.routing.
leads = Table(
    "leads",
    metadata,
    Column("lead_id", String, primary_key=True),
    Column("name", String),
    Column("company", String),
    Column("tier", String),
    Column("source", String),
    Column("owner_id", String),
    Column("received_at", DateTime(timezone=True)),
    # Its routing seen (assigned, reassigned, queued): `owner_id` is then the router's word, and
    # NULL means nobody's (queued), not "not heard of yet" (migration 0021).
    Column("routed", Boolean, nullable=False, server_default=false()),
    # Its latest touches read: a breach read after one that answers it stops at its due steps.
    Column("touches", JSONB),
    schema=SCHEMA,
)

# One row per (trigger, policy, step): fired when due, unless the SLA was met or cancelled first.
escalations = Table(
    "escalations",
    metadata,
    Column("escalation_id", String, primary_key=True),
    Column("lead_id", String, nullable=False, index=True),
    Column("policy_id", String, nullable=False),
    Column("step", Integer, nullable=False),
    Column("trigger_event_id", String, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sla_id", String),
    Column("due_at", DateTime(timezone=True)),
    Column("triggered_at", DateTime(timezone=True)),
    Column("cancelled_at", DateTime(timezone=True)),
    Column("trigger", JSONB),
    Index("ix_notifier_escalations_due", "due_at",
          postgresql_where=text("triggered_at IS NULL AND cancelled_at IS NULL")),
    Index("ix_notifier_escalations_sla", "sla_id"),
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
    # Stored before the first send and sent with every try: a resend after a crash reuses it.
    Column("idempotency_key", String, nullable=False),
    Column("step", Integer),
    Column("leased_until", DateTime(timezone=True)),
    Column("lease_token", String),
    Column("kind", String, nullable=False, server_default="single"),  # single | digest
    Column("created_at", DateTime(timezone=True)),
    Column("tried_at", DateTime(timezone=True)),  # the last try's outcome recorded (rate limits count tries)
    Index("ix_notifier_deliveries_due", "next_attempt_at", postgresql_where=text("state = 'pending'")),
    Index("ix_notifier_deliveries_recent", "recipient", "channel", "created_at"),
    Index("ix_notifier_deliveries_sent", "channel", "sent_at"),
    Index("ix_notifier_deliveries_tried", "channel", "tried_at"),
    schema=SCHEMA,
)

# What a digest delivery collects, one row per message it replaces (appending stays cheap in a storm).
digest_items = Table(
    "digest_items",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=True),
    Column("notification_id", String, nullable=False, index=True),
    Column("lead_id", String, nullable=False),
    Column("item", JSONB, nullable=False),
    schema=SCHEMA,
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String, primary_key=True),
    Column("url", String, nullable=False),
    Column("event_types", JSONB, nullable=False),
    Column("secret", String, nullable=False),  # must sign, so kept as given; never logged
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    schema=SCHEMA,
)

subscription_deliveries = Table(
    "subscription_deliveries",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("subscription_id", String, nullable=False),
    Column("lead_id", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("event_type", String, nullable=False),
    # The CloudEvent's time: one lead's events go out in this order, whichever topic each came from.
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", String, nullable=False),  # pending | sent | failed | cancelled
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("leased_until", DateTime(timezone=True)),
    Column("lease_token", String),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    UniqueConstraint("subscription_id", "event_id", name="uq_notifier_subdeliveries_event"),
    Index("ix_notifier_subdeliveries_pending", "subscription_id", "lead_id", "id",
          postgresql_where=text("state = 'pending'")),
    # Retention's order: the oldest deliveries done with first.
    Index("ix_notifier_subdeliveries_done", "created_at", "id",
          postgresql_where=text("state IN ('sent', 'cancelled')")),
    schema=SCHEMA,
)
