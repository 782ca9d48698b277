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


BACKFILL = """
UPDATE notifier.deliveries d SET tried_at = t.at
FROM (
  SELECT DISTINCT ON (nid) nid, at FROM (
    SELECT convert_from(payload, 'UTF8')::jsonb -> 'data' ->> 'notification_id' AS nid,
           (convert_from(payload, 'UTF8')::jsonb -> 'data' ->> 'at')::timestamptz AS at, position
    FROM notifier.events WHERE event_type = 'notifier.delivery_attempted'
  ) attempted
  WHERE nid IS NOT NULL ORDER BY nid, position DESC
) t
WHERE d.notification_id = t.nid
"""


def upgrade() -> None:
    op.add_column(
        "deliveries", sa.Column("tried_at", sa.DateTime(timezone=True)), schema="notifier"
    )
    # Each delivery's last recorded try, from the event store: what a replay's projection sets.
    op.execute(BACKFILL)
    op.create_index(
        "ix_notifier_deliveries_tried", "deliveries", ["channel", "tried_at"], schema="notifier"
    )


def downgrade() -> None:
    op.drop_index("ix_notifier_deliveries_tried", table_name="deliveries", schema="notifier")
    op.drop_column("deliveries", "tried_at", schema="notifier")
