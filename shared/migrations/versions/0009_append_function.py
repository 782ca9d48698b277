"""Event store: `<schema>.append_events(...)`, the append in one round trip.

An append takes the service's append lock and then checks the expected versions, numbers and
inserts. Those must run after the lock, in a snapshot taken after it (so they see every append
committed before), which used to take two statements. A VOLATILE plpgsql function gives each of
its statements a fresh snapshot under READ COMMITTED, so the lock and the statement after it now
go in one call: one round trip less for every transaction of every service. It also says which
positions the rows took and the last position committed before them, so the process that
committed can hand its rows to its relay without the relay reading them back (shared/outbox.py).

Revision ID: 0009_append_function
Revises: 0008_intake_lock_and_find
"""
from alembic import op

revision = "0009_append_function"
down_revision = "0008_intake_lock_and_find"
branch_labels = None
depends_on = None

# Frozen at this revision (the services registry may grow later).
SCHEMAS = ("intake", "router", "sla_clock", "notifier", "reporting")


def _function(schema: str) -> str:
    # Returns the expected streams that moved (nothing is inserted then), or one row saying what
    # went in: the last position committed before (read under the lock) and the positions taken.
    # Versions continue each stream's (the n-th new event of a stream gets its current version +
    # n); rows, and so positions, go in in the given order.
    return f"""
CREATE OR REPLACE FUNCTION {schema}.append_events(lock_key bigint, streams text[], expected json, rows json)
RETURNS TABLE (moved_stream text, expected_version int, actual_version int,
               committed_before bigint, first_position bigint, last_position bigint, appended bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    before bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT coalesce(max(ev.position), 0) INTO before FROM {schema}.events AS ev;
    RETURN QUERY
    WITH current AS (
        SELECT ev.stream_id, max(ev.version) AS version FROM {schema}.events AS ev
        WHERE ev.stream_id = ANY(streams) GROUP BY ev.stream_id),
    moved AS (
        SELECT e.stream_id, e.version AS expected, coalesce(c.version, 0) AS actual
        FROM json_to_recordset(expected) AS e(stream_id text, version int)
        LEFT JOIN current AS c ON c.stream_id = e.stream_id
        WHERE coalesce(c.version, 0) <> e.version),
    added AS (
        INSERT INTO {schema}.events (stream_id, version, event_id, event_type, topic, key, payload)
        SELECT r.stream_id, coalesce(c.version, 0) + row_number() OVER (PARTITION BY r.stream_id ORDER BY r.n),
               r.event_id, r.event_type, r.topic, r.key, convert_to(r.payload, 'UTF8')
        FROM ROWS FROM (json_to_recordset(rows) AS (stream_id text, event_id text, event_type text,
                                                    topic text, key text, payload text))
             WITH ORDINALITY AS r(stream_id, event_id, event_type, topic, key, payload, n)
        LEFT JOIN current AS c ON c.stream_id = r.stream_id
        WHERE NOT EXISTS (SELECT FROM moved)
        ORDER BY r.n
        RETURNING position)
    SELECT m.stream_id, m.expected, m.actual, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint
    FROM moved AS m
    UNION ALL
    SELECT NULL, NULL, NULL, before, min(a.position), max(a.position), count(*) FROM added AS a HAVING count(*) > 0;
END
$fn$"""


def upgrade() -> None:
    for schema in SCHEMAS:
        op.execute(_function(schema))


def downgrade() -> None:
    for schema in SCHEMAS:
        op.execute(f"DROP FUNCTION {schema}.append_events(bigint, text[], json, json)")
