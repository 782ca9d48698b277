"""notifier: a lead remembers that its routing was seen.

An escalation step names the lead's owner as the notifier holds it, or, before the notifier has
heard of the lead's assignment (leads.routing is read apart from leads.sla), the owner the SLA
event named. A lead taken back into the queue holds no owner either, so a step fired then went to
the manager of the owner it was taken from instead of lead ops. Leads noted before this count as
not routed (as before) until their next routing event, or `leadsla replay notifier`.

Revision ID: 0021_notifier_lead_routed
Revises: 0020_reporting_timer_calendars
"""
import sqlalchemy as sa
from alembic import op

revision = "0021_notifier_lead_routed"
down_revision = "0020_reporting_timer_calendars"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("leads", sa.Column("routed", sa.Boolean(), nullable=False, server_default=sa.false()),
                  schema="notifier")


def downgrade() -> None:
    op.drop_column("leads", "routed", schema="notifier")
