"""reporting read models: lead facts for the reports, one row per SLA timer, arrival order

Revision ID: 0002_reporting
Revises: 0002_core
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_reporting"
down_revision = "0002_core"
branch_labels = None
depends_on = None

LEAD_COLUMNS = (
    sa.Column("assignment_no", sa.Integer(), nullable=True),
    sa.Column("first_owner_id", sa.String(), nullable=True),
    sa.Column("first_assign_method", sa.String(), nullable=True),
    sa.Column("first_assigned_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reassignments", sa.Integer(), server_default="0", nullable=False),
    sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("dequeued_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("first_touch_actor", sa.String(), nullable=True),
    sa.Column("meeting_booked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("disposition_status", sa.String(), nullable=True),
    sa.Column("disposition_reason", sa.String(), nullable=True),
    sa.Column("dispositioned_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("breached", sa.Boolean(), server_default=sa.false(), nullable=False),
)


def upgrade() -> None:
    for column in LEAD_COLUMNS:
        op.add_column("leads", column, schema="reporting")
    op.create_index("ix_reporting_leads_received", "leads", ["received_at", "lead_id"], schema="reporting")
    # Arrival order, so a rebuild folds events in the order the live projection saw them.
    op.add_column("timeline", sa.Column("position", sa.BigInteger(), sa.Identity(), nullable=False),
                  schema="reporting")
    op.create_index("ix_reporting_timeline_position", "timeline", ["position"], unique=True, schema="reporting")
    op.create_table(
        "sla_timers",
        sa.Column("sla_id", sa.String(), nullable=False),
        sa.Column("lead_id", sa.String(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("policy_id", sa.String(), nullable=True),
        sa.Column("tier", sa.String(), nullable=True),
        sa.Column("owner_id", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("met_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("breached_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("root_cause", sa.String(), nullable=True),
        sa.Column("cancel_reason", sa.String(), nullable=True),
        sa.Column("responded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ttfr_seconds", sa.Float(), nullable=True),
        sa.Column("ttfr_business_seconds", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sla_id"),
        schema="reporting",
    )
    op.create_index("ix_reporting_sla_timers_lead", "sla_timers", ["lead_id"], schema="reporting")
    op.create_index("ix_reporting_sla_timers_started", "sla_timers", ["metric", "started_at"], schema="reporting")
    op.create_index("ix_reporting_sla_timers_open_due", "sla_timers", ["due_at"], schema="reporting",
                    postgresql_where=sa.text("state = 'open'"))


def downgrade() -> None:
    op.drop_table("sla_timers", schema="reporting")
    op.drop_index("ix_reporting_timeline_position", table_name="timeline", schema="reporting")
    op.drop_column("timeline", "position", schema="reporting")
    op.drop_index("ix_reporting_leads_received", table_name="leads", schema="reporting")
    for column in reversed(LEAD_COLUMNS):
        op.drop_column("leads", column.name, schema="reporting")
