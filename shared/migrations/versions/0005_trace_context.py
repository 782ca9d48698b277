"""sla_clock: a lead keeps the traceparent of the event that made it known, so what its timers fire
later (warnings, breaches) continues the trace of the request that submitted it

Revision ID: 0005_trace_context
Revises: 0004_event_store
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_trace_context"
down_revision = "0004_event_store"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("leads", sa.Column("traceparent", sa.String), schema="sla_clock")


def downgrade() -> None:
    op.drop_column("leads", "traceparent", schema="sla_clock")
