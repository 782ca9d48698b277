"""sla_clock: a tier change re-plans a lead's timers, so one lead may have several timers of a
metric over its life (one live at a time); the first assignment's time is kept as a clock start

Revision ID: 0003_sla_clock
Revises: 0002_notifier
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_sla_clock"
down_revision = "0002_notifier"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("timers_lead_id_metric_key", "timers", schema="sla_clock", type_="unique")
    op.create_index("ux_sla_clock_timers_live", "timers", ["lead_id", "metric"], unique=True, schema="sla_clock",
                    postgresql_where=sa.text("state IN ('open', 'paused')"))
    op.create_index("ix_sla_clock_timers_lead", "timers", ["lead_id"], schema="sla_clock")
    op.add_column("leads", sa.Column("assigned_at", sa.DateTime(timezone=True)), schema="sla_clock")


def downgrade() -> None:
    op.drop_column("leads", "assigned_at", schema="sla_clock")
    op.drop_index("ix_sla_clock_timers_lead", table_name="timers", schema="sla_clock")
    op.drop_index("ux_sla_clock_timers_live", table_name="timers", schema="sla_clock")
    op.create_unique_constraint("timers_lead_id_metric_key", "timers", ["lead_id", "metric"], schema="sla_clock")
