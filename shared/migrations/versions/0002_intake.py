"""intake: activities parked until their lead arrives

Revision ID: 0002_intake
Revises: 0002_sla_clock
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_intake"
down_revision = "0002_sla_clock"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_activities",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("lead_ref", sa.String(), nullable=False),
        sa.Column("event", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(), nullable=True),
        sa.Column("original", sa.LargeBinary(), nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema="intake",
    )
    op.create_index("ix_intake_pending_activities_lead_ref", "pending_activities", ["lead_ref"], schema="intake")
    op.create_index("ix_intake_pending_activities_expires_at", "pending_activities", ["expires_at"], schema="intake")


def downgrade() -> None:
    op.drop_table("pending_activities", schema="intake")
