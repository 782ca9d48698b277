"""notifier: lead facts for messages, escalation steps fired when due, leased deliveries with
idempotency keys, and CRM event subscriptions

Revision ID: 0002_notifier
Revises: 0002_router
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_notifier"
down_revision = "0002_router"
branch_labels = None
depends_on = None

S = "notifier"


def upgrade() -> None:
    op.create_table(
        "leads",
        sa.Column("lead_id", sa.String(), primary_key=True),
        sa.Column("name", sa.String()),
        sa.Column("company", sa.String()),
        sa.Column("tier", sa.String()),
        sa.Column("source", sa.String()),
        sa.Column("owner_id", sa.String()),
        sa.Column("received_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    # Steps fire when due (not when the chain starts); a met or cancelled SLA cancels the rest.
    op.add_column("escalations", sa.Column("sla_id", sa.String()), schema=S)
    op.add_column("escalations", sa.Column("due_at", sa.DateTime(timezone=True)), schema=S)
    op.add_column("escalations", sa.Column("triggered_at", sa.DateTime(timezone=True)), schema=S)
    op.add_column("escalations", sa.Column("cancelled_at", sa.DateTime(timezone=True)), schema=S)
    op.add_column("escalations", sa.Column("trigger", postgresql.JSONB()), schema=S)
    op.execute("UPDATE notifier.escalations SET due_at = created_at, triggered_at = created_at")
    op.create_index("ix_notifier_escalations_due", "escalations", ["due_at"], schema=S,
                    postgresql_where=sa.text("triggered_at IS NULL AND cancelled_at IS NULL"))
    op.create_index("ix_notifier_escalations_sla", "escalations", ["sla_id"], schema=S)

    op.add_column("deliveries", sa.Column("idempotency_key", sa.String()), schema=S)
    op.add_column("deliveries", sa.Column("step", sa.Integer()), schema=S)
    op.add_column("deliveries", sa.Column("leased_until", sa.DateTime(timezone=True)), schema=S)
    op.add_column("deliveries", sa.Column("lease_token", sa.String()), schema=S)
    op.execute("UPDATE notifier.deliveries SET idempotency_key = notification_id")
    op.alter_column("deliveries", "idempotency_key", nullable=False, schema=S)
    # A storm to one person becomes digests: one row per (recipient, channel, window), its items apart.
    op.add_column("deliveries", sa.Column("kind", sa.String(), nullable=False, server_default="single"), schema=S)
    op.add_column("deliveries", sa.Column("created_at", sa.DateTime(timezone=True)), schema=S)
    op.create_index("ix_notifier_deliveries_recent", "deliveries", ["recipient", "channel", "created_at"], schema=S)
    op.create_index("ix_notifier_deliveries_sent", "deliveries", ["channel", "sent_at"], schema=S)
    op.create_table(
        "digest_items",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("notification_id", sa.String(), nullable=False, index=True),
        sa.Column("lead_id", sa.String(), nullable=False),
        sa.Column("item", postgresql.JSONB(), nullable=False),
        schema=S,
    )

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("event_types", postgresql.JSONB(), nullable=False),
        # Kept as given: it must sign. Never logged, never returned after creation.
        sa.Column("secret", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_table(
        "subscription_deliveries",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("subscription_id", sa.String(), nullable=False),
        sa.Column("lead_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("leased_until", sa.DateTime(timezone=True)),
        sa.Column("lease_token", sa.String()),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("subscription_id", "event_id", name="uq_notifier_subdeliveries_event"),
        schema=S,
    )
    op.create_index("ix_notifier_subdeliveries_pending", "subscription_deliveries",
                    ["subscription_id", "lead_id", "id"], schema=S,
                    postgresql_where=sa.text("state = 'pending'"))


def downgrade() -> None:
    op.drop_table("subscription_deliveries", schema=S)
    op.drop_table("subscriptions", schema=S)
    op.drop_table("digest_items", schema=S)
    op.drop_index("ix_notifier_deliveries_sent", table_name="deliveries", schema=S)
    op.drop_index("ix_notifier_deliveries_recent", table_name="deliveries", schema=S)
    for column in ("created_at", "kind", "lease_token", "leased_until", "step", "idempotency_key"):
        op.drop_column("deliveries", column, schema=S)
    op.drop_index("ix_notifier_escalations_sla", table_name="escalations", schema=S)
    op.drop_index("ix_notifier_escalations_due", table_name="escalations", schema=S)
    for column in ("trigger", "cancelled_at", "triggered_at", "due_at", "sla_id"):
        op.drop_column("escalations", column, schema=S)
    op.drop_table("leads", schema=S)
