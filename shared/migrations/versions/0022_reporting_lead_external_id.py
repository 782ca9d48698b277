"""reporting: leads found by the sender's own id.

A CRM that sends touches by its record's id (its `external_id`) maps assignments and SLA state
back to its records through `GET /v1/leads?external_id=`: an index on the id in the lead's profile.

Revision ID: 0022_reporting_lead_external_id
Revises: 0021_notifier_lead_routed
"""
from alembic import op

revision = "0022_reporting_lead_external_id"
down_revision = "0021_notifier_lead_routed"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_reporting_leads_external_id ON reporting.leads ((profile->>'external_id')) "
               "WHERE profile->>'external_id' IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX reporting.ix_reporting_leads_external_id")
