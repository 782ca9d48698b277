"""Notifier: an index for retention, which removes the oldest CRM deliveries done with (sent,
cancelled) in bounded pieces instead of all of them in one statement.

Revision ID: 0012_notifier_retention_index
Revises: 0011_drop_events_event_id_index
"""
from alembic import op
from sqlalchemy import text

revision = "0012_notifier_retention_index"
down_revision = "0011_drop_events_event_id_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_notifier_subdeliveries_done", "subscription_deliveries", ["created_at", "id"],
                    schema="notifier", postgresql_where=text("state IN ('sent', 'cancelled')"))


def downgrade() -> None:
    op.drop_index("ix_notifier_subdeliveries_done", table_name="subscription_deliveries", schema="notifier")
