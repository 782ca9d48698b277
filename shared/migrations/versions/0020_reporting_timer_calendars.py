"""reporting: an SLA timer keeps the calendar and zone the SLA clock timed it by.

Business time to first response was measured on the policy's calendar in that calendar's zone,
while the clock times a metric by its own calendar when it names one, in the owner's, the lead's
or the team's zone when the metric says so: a first response after a weekend on a metric with
office hours counted the weekend. The sla.* events carry both (`timer`); rows projected before
this keep the policy's calendar until `leadsla replay reporting`.

Revision ID: 0020_reporting_timer_calendars
Revises: 0019_router_last_turn
"""
import sqlalchemy as sa
from alembic import op

revision = "0020_reporting_timer_calendars"
down_revision = "0019_router_last_turn"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sla_timers", sa.Column("calendar", sa.String()), schema="reporting")
    op.add_column("sla_timers", sa.Column("timezone", sa.String()), schema="reporting")


def downgrade() -> None:
    op.drop_column("sla_timers", "timezone", schema="reporting")
    op.drop_column("sla_timers", "calendar", schema="reporting")
