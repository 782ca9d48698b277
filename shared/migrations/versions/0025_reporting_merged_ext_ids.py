"""reporting: a lead is found by the sender's id of a repeat merged into it.

`GET /v1/leads?external_id=` found a lead by its own external id only, while intake resolves a
touch naming a merged repeat's id to the lead it was merged into: a CRM whose record came from the
second form fill found nothing. The lead's profile keeps those ids (`merged_external_ids`, from
lead.merged; leads merged before this have none until `leadsla replay reporting`), indexed for
containment.

Revision ID: 0025_reporting_merged_ext_ids
Revises: 0024_reporting_timer_pauses
"""
from alembic import op

revision = "0025_reporting_merged_ext_ids"
down_revision = "0024_reporting_timer_pauses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_reporting_leads_merged_external_ids ON reporting.leads "
               "USING gin ((profile->'merged_external_ids') jsonb_path_ops) "
               "WHERE profile->'merged_external_ids' IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX reporting.ix_reporting_leads_merged_external_ids")
