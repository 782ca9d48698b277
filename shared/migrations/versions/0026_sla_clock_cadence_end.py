"""sla_clock: a missed follow-up ends its cadence by time.

A next_action step that breached, with no touch after it, waited for ever: no
sla.cancelled (cadence_exhausted) came when its window closed, so the lead never went to
nurture. A timer now keeps when a missed step ends the cadence (`exhausts_at`); its
`next_fire_at` is set for such a breached step too, so the due index covers every row with a
next_fire_at instead of open rows only. Rows written before this have no `exhausts_at`: they
end at their next touch, as before.

Revision ID: 0026_sla_clock_cadence_end
Revises: 0025_reporting_merged_ext_ids
"""
import sqlalchemy as sa
from alembic import op

revision = "0026_sla_clock_cadence_end"
down_revision = "0025_reporting_merged_ext_ids"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("timers", sa.Column("exhausts_at", sa.DateTime(timezone=True)), schema="sla_clock")
    op.drop_index("ix_sla_clock_timers_due", table_name="timers", schema="sla_clock")
    op.create_index("ix_sla_clock_timers_due", "timers", ["next_fire_at"], schema="sla_clock",
                    postgresql_where=sa.text("next_fire_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_sla_clock_timers_due", table_name="timers", schema="sla_clock")
    op.create_index("ix_sla_clock_timers_due", "timers", ["next_fire_at"], schema="sla_clock",
                    postgresql_where=sa.text("state = 'open'"))
    op.drop_column("timers", "exhausts_at", schema="sla_clock")
