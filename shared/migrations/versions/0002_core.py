"""outbox parking and dead letters kept whole in Postgres

Revision ID: 0002_core
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_core"
down_revision = "0001"
branch_labels = None
depends_on = None

SERVICE_SCHEMAS = ("intake", "router", "sla_clock", "notifier", "reporting")


def upgrade() -> None:
    for schema in SERVICE_SCHEMAS:
        op.add_column("outbox", sa.Column("parked_at", sa.DateTime(timezone=True)), schema=schema)
        op.add_column("outbox", sa.Column("error", sa.Text()), schema=schema)
        op.create_index(f"ix_{schema}_outbox_parked", "outbox", ["key", "id"], schema=schema,
                        postgresql_where=sa.text("parked_at IS NOT NULL AND sent_at IS NULL"))
    op.create_table(
        "deadletters",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("partition", sa.BigInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.Text()),
        sa.Column("original", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        schema="leadsla",
    )


def downgrade() -> None:
    op.drop_table("deadletters", schema="leadsla")
    for schema in SERVICE_SCHEMAS:
        op.drop_index(f"ix_{schema}_outbox_parked", table_name="outbox", schema=schema)
        op.drop_column("outbox", "error", schema=schema)
        op.drop_column("outbox", "parked_at", schema=schema)
