"""Intake's state is a projection of its event store: a held activity's id is the hold id its
`intake.activity_held` event carries (derived from the raw record's position), not a sequence
number, so a replay reproduces it.

Revision ID: 0005_intake
Revises: 0005_trace_context
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_intake"
down_revision = "0005_trace_context"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE intake.pending_activities ALTER COLUMN id DROP DEFAULT")
    op.alter_column("pending_activities", "id", type_=sa.String(), postgresql_using="id::text", schema="intake")
    op.execute("DROP SEQUENCE IF EXISTS intake.pending_activities_id_seq")


def downgrade() -> None:
    op.execute("DELETE FROM intake.pending_activities")  # string ids do not fit a sequence
    op.alter_column("pending_activities", "id", type_=sa.BigInteger(), postgresql_using="NULL", schema="intake")
    op.execute("CREATE SEQUENCE IF NOT EXISTS intake.pending_activities_id_seq OWNED BY intake.pending_activities.id")
    op.execute("ALTER TABLE intake.pending_activities ALTER COLUMN id "
               "SET DEFAULT nextval('intake.pending_activities_id_seq')")
