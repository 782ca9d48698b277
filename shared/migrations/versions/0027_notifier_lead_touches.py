"""notifier: a lead keeps its latest touches read.

A touch made after a deadline and read before the breach (the clock often sends the breach just
after the touch that confirmed the deadline had passed) did not stop the breach's later steps:
the manager and lead ops heard of a lead its owner had reached. The notifier now keeps a lead's
latest touches (`touches`), and a breach read after one that answers it plans only its steps
already due. Leads noted before this keep none until their next touch.

Revision ID: 0027_notifier_lead_touches
Revises: 0026_sla_clock_cadence_end
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0027_notifier_lead_touches"
down_revision = "0026_sla_clock_cadence_end"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("leads", sa.Column("touches", postgresql.JSONB()), schema="notifier")


def downgrade() -> None:
    op.drop_column("leads", "touches", schema="notifier")
