"""sla_clock: pauses, cancel reasons, cadence steps, queued leads, leads that left the funnel

Revision ID: 0002_sla_clock
Revises: 0002_reporting
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_sla_clock"
down_revision = "0002_reporting"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("timers", sa.Column("target_seconds", sa.Float()), schema="sla_clock")
    op.add_column("timers", sa.Column("paused_at", sa.DateTime(timezone=True)), schema="sla_clock")
    op.add_column("timers", sa.Column("paused_seconds", sa.Float(), nullable=False, server_default="0"),
                  schema="sla_clock")
    op.add_column("timers", sa.Column("step", sa.Integer(), nullable=False, server_default="1"), schema="sla_clock")
    op.add_column("timers", sa.Column("reason", sa.String()), schema="sla_clock")
    op.add_column("timers", sa.Column("timezone", sa.String()), schema="sla_clock")
    op.add_column("leads", sa.Column("queued_reason", sa.String()), schema="sla_clock")
    op.add_column("leads", sa.Column("closed_reason", sa.String()), schema="sla_clock")
    op.add_column("leads", sa.Column("timezone", sa.String()), schema="sla_clock")
    op.add_column("leads", sa.Column("team_id", sa.String()), schema="sla_clock")


def downgrade() -> None:
    for column in ("team_id", "timezone", "closed_reason", "queued_reason"):
        op.drop_column("leads", column, schema="sla_clock")
    for column in ("timezone", "reason", "step", "paused_seconds", "paused_at", "target_seconds"):
        op.drop_column("timers", column, schema="sla_clock")
