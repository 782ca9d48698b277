"""Intake: a merged repeat's own external id names the lead it was merged into (a projection of
lead.merged), so a sender's touches naming its record of the repeat are not lost. Starts empty:
lead.merged events recorded before this carry no source, and an external id is unique per source
only, so they name no lead (a replay derives the same).

Revision ID: 0015_intake_merged_external_ids
Revises: 0014_intake_availability
"""
import sqlalchemy as sa
from alembic import op

revision = "0015_intake_merged_external_ids"
down_revision = "0014_intake_availability"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "merged_external_ids",
        sa.Column("external_id", sa.String(), primary_key=True),
        sa.Column("source", sa.String(), primary_key=True),
        sa.Column("lead_id", sa.String(), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        schema="intake",
    )


def downgrade() -> None:
    op.drop_table("merged_external_ids", schema="intake")
