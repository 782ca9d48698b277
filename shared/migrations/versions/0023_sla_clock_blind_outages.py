"""sla_clock: its own outages (its watermark's rounds far apart), kept across a restart.

Revision ID: 0023_sla_clock_blind_outages
Revises: 0022_reporting_lead_external_id
"""
import sqlalchemy as sa
from alembic import op

revision = "0023_sla_clock_blind_outages"
down_revision = "0022_reporting_lead_external_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blind_outages",
        sa.Column("began", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("ended", sa.DateTime(timezone=True), nullable=False),
        schema="sla_clock",
    )
    op.create_index("ix_sla_clock_blind_outages_ended", "blind_outages", ["ended"], schema="sla_clock")


def downgrade() -> None:
    op.drop_table("blind_outages", schema="sla_clock")
