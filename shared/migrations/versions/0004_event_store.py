"""Event store per service: `<schema>.events` (append-only, the system of record), the relay's
published position and its parked rows. Replaces the outbox: its rows move into the store.

Revision ID: 0004_event_store
Revises: 0003_sla_clock
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_event_store"
down_revision = "0003_sla_clock"
branch_labels = None
depends_on = None

# Frozen at this revision (the services registry may grow later).
SCHEMAS = ("intake", "router", "sla_clock", "notifier", "reporting")


def _create_events(schema: str) -> None:
    op.create_table(
        "events",
        sa.Column("position", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("stream_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("topic", sa.String()),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("stream_id", "version", name=f"uq_{schema}_events_stream_version"),
        schema=schema,
    )


def _router_events_to_store_shape() -> None:
    """The router already kept owner changes in `router.events` (JSON); same store, new columns."""
    op.alter_column("events", "type", new_column_name="event_type", schema="router")
    op.add_column("events", sa.Column("event_id", sa.String()), schema="router")
    op.add_column("events", sa.Column("topic", sa.String()), schema="router")
    op.add_column("events", sa.Column("key", sa.String()), schema="router")
    op.add_column("events", sa.Column("payload", sa.LargeBinary()), schema="router")
    op.execute("UPDATE router.events SET event_id = event->>'id', key = stream_id, "
               "payload = convert_to(event::text, 'UTF8')")
    for column in ("event_id", "key", "payload"):
        op.alter_column("events", column, nullable=False, schema="router")
    op.drop_column("events", "event", schema="router")


def upgrade() -> None:
    for schema in SCHEMAS:
        if schema == "router":
            _router_events_to_store_shape()
        else:
            _create_events(schema)
        op.create_index(f"ix_{schema}_events_event_id", "events", ["event_id"], schema=schema)
        op.create_table(
            "relay_position",
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("published_position", sa.BigInteger(), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
            schema=schema,
        )
        op.create_table(
            "parked",
            sa.Column("position", sa.BigInteger(), primary_key=True),
            sa.Column("key", sa.String(), nullable=False),
            sa.Column("error", sa.Text()),
            sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
            schema=schema,
        )
        op.create_index(f"ix_{schema}_parked_key", "parked", ["key"], schema=schema)
        # The outbox's rows become the store's first events, in their order; the relay starts
        # after the last row that had been sent with every earlier one.
        op.execute(f"""
            INSERT INTO {schema}.events (stream_id, version, event_id, event_type, topic, key, payload, recorded_at)
            SELECT o.key,
                   row_number() OVER (PARTITION BY o.key ORDER BY o.id)
                     + coalesce((SELECT max(e.version) FROM {schema}.events e WHERE e.stream_id = o.key), 0),
                   o.event_id, o.event_type, o.topic, o.key, o.payload, o.created_at
            FROM {schema}.outbox o ORDER BY o.id
        """)
        op.execute(f"""
            INSERT INTO {schema}.relay_position (id, published_position)
            SELECT 1, coalesce(
                (SELECT min(e.position) - 1 FROM {schema}.events e
                   JOIN {schema}.outbox o ON o.event_id = e.event_id WHERE o.sent_at IS NULL),
                (SELECT max(position) FROM {schema}.events), 0)
        """)
        op.drop_table("outbox", schema=schema)


def downgrade() -> None:
    for schema in SCHEMAS:
        op.create_table(
            "outbox",
            sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
            sa.Column("topic", sa.String(), nullable=False),
            sa.Column("key", sa.String(), nullable=False),
            sa.Column("event_id", sa.String(), nullable=False),
            sa.Column("event_type", sa.String(), nullable=False),
            sa.Column("payload", sa.LargeBinary(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
            sa.Column("sent_at", sa.DateTime(timezone=True)),
            sa.Column("parked_at", sa.DateTime(timezone=True)),
            sa.Column("error", sa.Text()),
            schema=schema,
        )
        op.create_index(f"ix_{schema}_outbox_pending", "outbox", ["id"], schema=schema,
                        postgresql_where=sa.text("sent_at IS NULL"))
        op.create_index(f"ix_{schema}_outbox_parked", "outbox", ["key", "id"], schema=schema,
                        postgresql_where=sa.text("parked_at IS NOT NULL AND sent_at IS NULL"))
        op.drop_table("parked", schema=schema)
        op.drop_table("relay_position", schema=schema)
        op.drop_index(f"ix_{schema}_events_event_id", table_name="events", schema=schema)
        if schema != "router":
            op.drop_table("events", schema=schema)
    op.execute("DELETE FROM router.events WHERE topic IS NOT NULL")
    op.add_column("events", sa.Column("event", sa.dialects.postgresql.JSONB()), schema="router")
    op.execute("UPDATE router.events SET event = convert_from(payload, 'UTF8')::jsonb")
    for column in ("event_id", "topic", "key", "payload"):
        op.drop_column("events", column, schema="router")
    op.alter_column("events", "event_type", new_column_name="type", schema="router")
