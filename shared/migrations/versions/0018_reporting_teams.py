"""reporting: the team an SLA timer counts for, and the lead's first team.

The SLA report by team read the lead's current team: a lead reassigned to another team took the
SLAs its earlier owner had met or breached along (owner alice, team ae). A timer now keeps the team
of the owner who held it, and a lead the team of its first assignment (the routing report's team,
as its owner is the first one). Rows projected before this take the lead's team where that is
certainly right (the timer's owner holds the lead now; the lead never changed hands); the rest
stay NULL until `leadsla replay reporting`, which folds them exactly.

Revision ID: 0018_reporting_teams
Revises: 0017_lead_rows_fillfactor
"""
import sqlalchemy as sa
from alembic import op

revision = "0018_reporting_teams"
down_revision = "0017_lead_rows_fillfactor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("leads", sa.Column("first_team_id", sa.String()), schema="reporting")
    op.add_column("sla_timers", sa.Column("team_id", sa.String()), schema="reporting")
    op.execute("UPDATE reporting.leads SET first_team_id = team_id "
               "WHERE reassignments = 0 AND first_owner_id IS NOT NULL")
    op.execute("UPDATE reporting.sla_timers t SET team_id = l.team_id FROM reporting.leads l "
               "WHERE l.lead_id = t.lead_id AND t.owner_id = l.owner_id")


def downgrade() -> None:
    op.drop_column("sla_timers", "team_id", schema="reporting")
    op.drop_column("leads", "first_team_id", schema="reporting")
