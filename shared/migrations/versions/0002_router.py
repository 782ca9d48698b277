"""router: owner event store and projections, daily counts, lead facts on assignments

Revision ID: 0002_router
Revises: 0002_intake
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_router"
down_revision = "0002_intake"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("assignments", sa.Column("facts", postgresql.JSONB(), nullable=True), schema="router")
    op.add_column("assignments", sa.Column("company_domain", sa.String(), nullable=True), schema="router")
    op.add_column("assignments", sa.Column("touched_at", sa.DateTime(timezone=True), nullable=True), schema="router")
    op.create_index("ix_router_assignments_open_owner", "assignments", ["owner_id"], schema="router",
                    postgresql_where=sa.text("closed_at IS NULL"))
    op.create_index("ix_router_assignments_open_domain", "assignments", ["company_domain"], schema="router",
                    postgresql_where=sa.text("closed_at IS NULL"))
    op.add_column("rr_cursors", sa.Column("counts", postgresql.JSONB(), nullable=True), schema="router")
    op.add_column("queue", sa.Column("assignment_no", sa.Integer(), server_default="1", nullable=False),
                  schema="router")
    op.create_table(
        "events",
        sa.Column("position", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("stream_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("event", postgresql.JSONB(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("position"),
        sa.UniqueConstraint("stream_id", "version", name="uq_router_events_stream_version"),
        schema="router",
    )
    op.create_table(
        "owner_state",
        sa.Column("owner_id", sa.String(), nullable=False),
        sa.Column("changes", postgresql.JSONB(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner_id"),
        schema="router",
    )
    op.create_table(
        "daily_assignments",
        sa.Column("owner_id", sa.String(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("assigned", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", "day"),
        schema="router",
    )


def downgrade() -> None:
    op.drop_table("daily_assignments", schema="router")
    op.drop_table("owner_state", schema="router")
    op.drop_table("events", schema="router")
    op.drop_column("queue", "assignment_no", schema="router")
    op.drop_column("rr_cursors", "counts", schema="router")
    op.drop_index("ix_router_assignments_open_domain", table_name="assignments", schema="router")
    op.drop_index("ix_router_assignments_open_owner", table_name="assignments", schema="router")
    op.drop_column("assignments", "touched_at", schema="router")
    op.drop_column("assignments", "company_domain", schema="router")
    op.drop_column("assignments", "facts", schema="router")
