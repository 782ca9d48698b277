"""sla_clock: open timers counted by metric and tier as the projection writes them (the gauge
read every count of a million open timers every 5 s); counted once here from the timers.

Revision ID: 0007_sla_open_counts
Revises: 0005_intake
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_sla_open_counts"
down_revision = "0005_intake"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "open_timer_counts",
        sa.Column("metric", sa.String(), primary_key=True),
        sa.Column("tier", sa.String(), primary_key=True),
        sa.Column("open", sa.BigInteger(), nullable=False),
        schema="sla_clock",
    )
    op.execute("INSERT INTO sla_clock.open_timer_counts (metric, tier, open) "
               "SELECT metric, tier, count(*) FROM sla_clock.timers WHERE state = 'open' GROUP BY metric, tier")


def downgrade() -> None:
    op.drop_table("open_timer_counts", schema="sla_clock")
