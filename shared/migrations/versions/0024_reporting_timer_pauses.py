"""reporting: an SLA timer keeps the business time it spent paused.

Business time to first response counted a pause (pause/resume activities stop the SLA clock), so
the SLA report's business p50/p90 disagreed with the clock's own `elapsed_seconds`. The sla.*
events carry the paused time (`timer`); rows projected before this count no pause until
`leadsla replay reporting`.

Revision ID: 0024_reporting_timer_pauses
Revises: 0023_sla_clock_blind_outages
"""
import sqlalchemy as sa
from alembic import op

revision = "0024_reporting_timer_pauses"
down_revision = "0023_sla_clock_blind_outages"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sla_timers", sa.Column("paused_seconds", sa.Float()), schema="reporting")
    op.add_column("sla_timers", sa.Column("paused_at", sa.DateTime(timezone=True)), schema="reporting")


def downgrade() -> None:
    op.drop_column("sla_timers", "paused_at", schema="reporting")
    op.drop_column("sla_timers", "paused_seconds", schema="reporting")
