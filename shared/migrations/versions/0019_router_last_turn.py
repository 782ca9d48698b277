"""router: a round-robin rule remembers who had its last turn, not only where they stood.

The cursor was an index into the rule's team. An admin who added a member before it gave the
previous owner the next lead as well; one who removed a member before it skipped the next in
turn. The owner's id finds their place in the team as it is now. Cursors stored before this keep
their index until the rule's next turn (or `leadsla replay router`, which fills them exactly).

Revision ID: 0019_router_last_turn
Revises: 0018_reporting_teams
"""
import sqlalchemy as sa
from alembic import op

revision = "0019_router_last_turn"
down_revision = "0018_reporting_teams"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rr_cursors", sa.Column("last_owner", sa.String()), schema="router")


def downgrade() -> None:
    op.drop_column("rr_cursors", "last_owner", schema="router")
