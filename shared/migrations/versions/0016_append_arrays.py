"""Event store: `<schema>.append_events(...)` taking its rows as typed arrays.

0009's function took its rows as one JSON document: every payload (a CloudEvent, 1-2 KB of JSON)
travelled as an escaped string inside it, so Postgres parsed and unescaped every payload and
converted it back from text to bytea, on every append of every service. This overload takes a
column per array (the payloads as bytea[], sent in binary), which Postgres reads without parsing:
bench/eventstore.py measures the difference. The guarantees are 0009's: the lock, then, in a
snapshot taken after it, the expected-version check, the numbering and the insert.

0009's function is kept (an older release still running during a rolling upgrade calls it);
a later cleanup drops it.

Revision ID: 0016_append_arrays
Revises: 0015_intake_merged_external_ids
"""
from alembic import op

revision = "0016_append_arrays"
down_revision = "0015_intake_merged_external_ids"
branch_labels = None
depends_on = None

# Frozen at this revision (the services registry may grow later).
SCHEMAS = ("intake", "router", "sla_clock", "notifier", "reporting")


def _function(schema: str) -> str:
    # As 0009: returns the expected streams that moved (nothing is inserted then), or one row
    # saying what went in. `expected_streams`/`expected_versions` and the row arrays are
    # parallel (unnest pairs them element by element); rows go in in array order.
    return f"""
CREATE OR REPLACE FUNCTION {schema}.append_events(
    lock_key bigint, streams text[], expected_streams text[], expected_versions int[],
    stream_ids text[], event_ids text[], event_types text[], topics text[], keys text[], payloads bytea[])
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
        FROM unnest(expected_streams, expected_versions) AS e(stream_id, version)
        LEFT JOIN current AS c ON c.stream_id = e.stream_id
        WHERE coalesce(c.version, 0) <> e.version),
    added AS (
        INSERT INTO {schema}.events (stream_id, version, event_id, event_type, topic, key, payload)
        SELECT r.stream_id, coalesce(c.version, 0) + row_number() OVER (PARTITION BY r.stream_id ORDER BY r.n),
               r.event_id, r.event_type, r.topic, r.key, r.payload
        FROM unnest(stream_ids, event_ids, event_types, topics, keys, payloads)
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
        op.execute(f"DROP FUNCTION {schema}.append_events(bigint, text[], text[], int[], text[], text[], text[], "
                   "text[], text[], bytea[])")
