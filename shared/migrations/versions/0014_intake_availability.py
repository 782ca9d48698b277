"""Intake: when it could accept leads and touches (its heartbeat), so the SLA clock can wait out
intake's outages instead of breaching deadlines whose touches senders are still retrying.

Revision ID: 0014_intake_availability
Revises: 0013_notacc_delivery_tries
"""
import sqlalchemy as sa
from alembic import op

revision = "0014_intake_availability"
down_revision = "0013_notacc_delivery_tries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "availability",
        sa.Column("interval_id", sa.String(), primary_key=True),
        sa.Column("first_beat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_beat", sa.DateTime(timezone=True), nullable=False),
        schema="intake",
    )
    op.create_index("ix_intake_availability_last_beat", "availability", ["last_beat"], schema="intake")


def downgrade() -> None:
    op.drop_table("availability", schema="intake")
