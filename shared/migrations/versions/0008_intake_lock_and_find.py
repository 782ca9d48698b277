"""intake: a group of leads takes its locks and looks up what its identifiers name in one round
trip (`intake.lock_and_find`). The lookup must see what the locks' previous holders committed, so
it cannot share the locking statement's snapshot: in a VOLATILE function each statement takes a
fresh one, after the locks are held.

Revision ID: 0008_intake_lock_and_find
Revises: 0007_sla_open_counts
"""
from alembic import op

revision = "0008_intake_lock_and_find"
down_revision = "0007_sla_open_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE FUNCTION intake.lock_and_find(
    names text[], key_sources text[], key_values text[], external_sources text[], external_ids text[],
    emails text[], phones text[], since timestamptz)
RETURNS TABLE (kind text, value text) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- In hash order: every transaction takes its locks in the same order, so none waits in a circle.
    PERFORM pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtext(n) AS h FROM unnest(names) AS n ORDER BY 1) AS o;
    RETURN QUERY
        SELECT 'idem'::text, k.source || ':' || k.key
        FROM intake.idempotency_keys AS k JOIN unnest(key_sources, key_values) AS w(source, key)
            ON k.source = w.source AND k.key = w.key
        UNION ALL
        SELECT 'ext'::text, l.source || ':' || l.external_id
        FROM intake.leads AS l JOIN unnest(external_sources, external_ids) AS w(source, id)
            ON l.source = w.source AND l.external_id = w.id
        UNION ALL
        SELECT p.kind, p.value
        FROM intake.leads AS l, LATERAL (VALUES ('email'::text, l.email::text), ('phone'::text, l.phone::text)) AS p(kind, value)
        WHERE (l.email = ANY(emails) OR l.phone = ANY(phones)) AND l.received_at >= since AND p.value IS NOT NULL;
END $$""")


def downgrade() -> None:
    op.execute("DROP FUNCTION intake.lock_and_find(text[], text[], text[], text[], text[], text[], text[], timestamptz)")
