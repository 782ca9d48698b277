"""router: a company's account owner (the owner of its newest open lead) found through an index
ordered by assignment time, not by sorting every open lead of the domain for each new lead (a
domain with thousands of open leads cost 26 ms a lead).

Revision ID: 0010_router_account_index
Revises: 0009_append_function
"""
from alembic import op

revision = "0010_router_account_index"
down_revision = "0009_append_function"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_router_assignments_open_domain", table_name="assignments", schema="router")
    op.execute("CREATE INDEX ix_router_assignments_open_domain ON router.assignments "
               "(company_domain, assigned_at DESC) WHERE closed_at IS NULL")


def downgrade() -> None:
    op.drop_index("ix_router_assignments_open_domain", table_name="assignments", schema="router")
    op.create_index("ix_router_assignments_open_domain", "assignments", ["company_domain"], schema="router",
                    postgresql_where="closed_at IS NULL")
