"""Notifier: when each channel delivery was last tried (`tried_at`), so a channel's rate limit
counts every try it made, failed ones included, not only the sends that succeeded.

Revision ID: 0013_notacc_delivery_tries
Revises: 0012_notifier_retention_index
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_notacc_delivery_tries"
down_revision = "0012_notifier_retention_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "deliveries", sa.Column("tried_at", sa.DateTime(timezone=True)), schema="notifier"
    )
    op.execute("UPDATE notifier.deliveries SET tried_at = sent_at WHERE sent_at IS NOT NULL")
    op.create_index(
        "ix_notifier_deliveries_tried", "deliveries", ["channel", "tried_at"], schema="notifier"
    )


def downgrade() -> None:
    op.drop_index("ix_notifier_deliveries_tried", table_name="deliveries", schema="notifier")
    op.drop_column("deliveries", "tried_at", schema="notifier")
