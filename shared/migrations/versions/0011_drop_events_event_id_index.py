"""Event store: drop `ix_<schema>_events_event_id`. Nothing reads a store by event id (the
relay reads by position, handlers and replay by stream or position, idempotency goes through
processed_events), and a b-tree on random ids cost every append an insert on a random leaf page:
in a soak no scan ever used it while each service's copy grew 9 to 12 MB a minute.

Revision ID: 0011_drop_events_event_id_index
Revises: 0010_router_account_index
"""
from alembic import op

revision = "0011_drop_events_event_id_index"
down_revision = "0010_router_account_index"
branch_labels = None
depends_on = None

# Frozen at this revision (the services registry may grow later).
SCHEMAS = ("intake", "router", "sla_clock", "notifier", "reporting")


def upgrade() -> None:
    for schema in SCHEMAS:
        op.drop_index(f"ix_{schema}_events_event_id", table_name="events", schema=schema)


def downgrade() -> None:
    for schema in SCHEMAS:
        op.create_index(f"ix_{schema}_events_event_id", "events", ["event_id"], schema=schema)
