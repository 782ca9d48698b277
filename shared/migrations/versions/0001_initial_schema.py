"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 23:54:11.999157
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


SCHEMAS = ("leadsla", "intake", "router", "sla_clock", "notifier", "reporting")


def upgrade() -> None:
    for schema in SCHEMAS:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    op.create_table('activities',
    sa.Column('activity_id', sa.String(), nullable=False),
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('type', sa.String(), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('record', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('activity_id'),
    schema='intake'
    )
    op.create_index(op.f('ix_intake_activities_lead_id'), 'activities', ['lead_id'], unique=False, schema='intake')
    op.create_table('idempotency_keys',
    sa.Column('source', sa.String(), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('source', 'key'),
    schema='intake'
    )
    op.create_table('leads',
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('source', sa.String(), nullable=False),
    sa.Column('external_id', sa.String(), nullable=True),
    sa.Column('email', sa.String(), nullable=True),
    sa.Column('phone', sa.String(), nullable=True),
    sa.Column('tier', sa.String(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('correlation_id', sa.String(), nullable=False),
    sa.Column('record', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('lead_id'),
    schema='intake'
    )
    op.create_index('ix_intake_leads_email', 'leads', ['email', 'received_at'], unique=False, schema='intake')
    op.create_index('ix_intake_leads_phone', 'leads', ['phone', 'received_at'], unique=False, schema='intake')
    op.create_index('ux_intake_leads_source_external', 'leads', ['source', 'external_id'], unique=True, schema='intake', postgresql_where=sa.text('external_id IS NOT NULL'))
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('topic', sa.String(), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('event_type', sa.String(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    schema='intake'
    )
    op.create_index('ix_intake_outbox_pending', 'outbox', ['id'], unique=False, schema='intake', postgresql_where=sa.text('sent_at IS NULL'))
    op.create_table('processed_events',
    sa.Column('consumer', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'event_id'),
    schema='intake'
    )
    op.create_table('api_keys',
    sa.Column('key_id', sa.String(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('role', sa.String(), nullable=False),
    sa.Column('secret_sha256', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key_id'),
    schema='leadsla'
    )
    op.create_table('config_versions',
    sa.Column('version', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('digest', sa.String(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('applied_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('version'),
    schema='leadsla'
    )
    op.create_table('deliveries',
    sa.Column('notification_id', sa.String(), nullable=False),
    sa.Column('escalation_id', sa.String(), nullable=False),
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('channel', sa.String(), nullable=False),
    sa.Column('recipient', sa.String(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('state', sa.String(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('notification_id'),
    schema='notifier'
    )
    op.create_index('ix_notifier_deliveries_due', 'deliveries', ['next_attempt_at'], unique=False, schema='notifier', postgresql_where=sa.text("state = 'pending'"))
    op.create_table('escalations',
    sa.Column('escalation_id', sa.String(), nullable=False),
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('policy_id', sa.String(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('trigger_event_id', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('escalation_id'),
    schema='notifier'
    )
    op.create_index(op.f('ix_notifier_escalations_lead_id'), 'escalations', ['lead_id'], unique=False, schema='notifier')
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('topic', sa.String(), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('event_type', sa.String(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    schema='notifier'
    )
    op.create_index('ix_notifier_outbox_pending', 'outbox', ['id'], unique=False, schema='notifier', postgresql_where=sa.text('sent_at IS NULL'))
    op.create_table('processed_events',
    sa.Column('consumer', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'event_id'),
    schema='notifier'
    )
    op.create_table('leads',
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('source', sa.String(), nullable=True),
    sa.Column('tier', sa.String(), nullable=True),
    sa.Column('status', sa.String(), nullable=False),
    sa.Column('owner_id', sa.String(), nullable=True),
    sa.Column('team_id', sa.String(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('assigned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('first_response_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sla', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('profile', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('lead_id'),
    schema='reporting'
    )
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('topic', sa.String(), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('event_type', sa.String(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    schema='reporting'
    )
    op.create_index('ix_reporting_outbox_pending', 'outbox', ['id'], unique=False, schema='reporting', postgresql_where=sa.text('sent_at IS NULL'))
    op.create_table('processed_events',
    sa.Column('consumer', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'event_id'),
    schema='reporting'
    )
    op.create_table('timeline',
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('type', sa.String(), nullable=False),
    sa.Column('source', sa.String(), nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('correlation_id', sa.String(), nullable=True),
    sa.Column('causation_id', sa.String(), nullable=True),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('event_id'),
    schema='reporting'
    )
    op.create_index('ix_reporting_timeline_lead', 'timeline', ['lead_id', 'time'], unique=False, schema='reporting')
    op.create_table('assignments',
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('owner_id', sa.String(), nullable=False),
    sa.Column('team_id', sa.String(), nullable=True),
    sa.Column('rule_id', sa.String(), nullable=True),
    sa.Column('tier', sa.String(), nullable=False),
    sa.Column('assignment_no', sa.Integer(), nullable=False),
    sa.Column('assigned_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('lead_id'),
    schema='router'
    )
    op.create_index(op.f('ix_router_assignments_owner_id'), 'assignments', ['owner_id'], unique=False, schema='router')
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('topic', sa.String(), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('event_type', sa.String(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    schema='router'
    )
    op.create_index('ix_router_outbox_pending', 'outbox', ['id'], unique=False, schema='router', postgresql_where=sa.text('sent_at IS NULL'))
    op.create_table('processed_events',
    sa.Column('consumer', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'event_id'),
    schema='router'
    )
    op.create_table('queue',
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('tier', sa.String(), nullable=False),
    sa.Column('reason', sa.String(), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('facts', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('lead_id'),
    schema='router'
    )
    op.create_index(op.f('ix_router_queue_tier'), 'queue', ['tier'], unique=False, schema='router')
    op.create_table('rr_cursors',
    sa.Column('rule_id', sa.String(), nullable=False),
    sa.Column('last_index', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('rule_id'),
    schema='router'
    )
    op.create_table('leads',
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('tier', sa.String(), nullable=False),
    sa.Column('source', sa.String(), nullable=False),
    sa.Column('contactable', sa.Boolean(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('correlation_id', sa.String(), nullable=True),
    sa.Column('owner_id', sa.String(), nullable=True),
    sa.Column('first_touch_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('lead_id'),
    schema='sla_clock'
    )
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('topic', sa.String(), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('event_type', sa.String(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    schema='sla_clock'
    )
    op.create_index('ix_sla_clock_outbox_pending', 'outbox', ['id'], unique=False, schema='sla_clock', postgresql_where=sa.text('sent_at IS NULL'))
    op.create_table('processed_events',
    sa.Column('consumer', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'event_id'),
    schema='sla_clock'
    )
    op.create_table('timers',
    sa.Column('sla_id', sa.String(), nullable=False),
    sa.Column('lead_id', sa.String(), nullable=False),
    sa.Column('metric', sa.String(), nullable=False),
    sa.Column('policy_id', sa.String(), nullable=False),
    sa.Column('policy_version', sa.BigInteger(), nullable=False),
    sa.Column('calendar', sa.String(), nullable=False),
    sa.Column('owner_id', sa.String(), nullable=True),
    sa.Column('tier', sa.String(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('warnings', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('warned', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('state', sa.String(), nullable=False),
    sa.Column('next_fire_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('root_cause', sa.String(), nullable=True),
    sa.PrimaryKeyConstraint('sla_id'),
    sa.UniqueConstraint('lead_id', 'metric'),
    schema='sla_clock'
    )
    op.create_index('ix_sla_clock_timers_due', 'timers', ['next_fire_at'], unique=False, schema='sla_clock', postgresql_where=sa.text("state = 'open'"))


def downgrade() -> None:
    op.drop_index('ix_sla_clock_timers_due', table_name='timers', schema='sla_clock', postgresql_where=sa.text("state = 'open'"))
    op.drop_table('timers', schema='sla_clock')
    op.drop_table('processed_events', schema='sla_clock')
    op.drop_index('ix_sla_clock_outbox_pending', table_name='outbox', schema='sla_clock', postgresql_where=sa.text('sent_at IS NULL'))
    op.drop_table('outbox', schema='sla_clock')
    op.drop_table('leads', schema='sla_clock')
    op.drop_table('rr_cursors', schema='router')
    op.drop_index(op.f('ix_router_queue_tier'), table_name='queue', schema='router')
    op.drop_table('queue', schema='router')
    op.drop_table('processed_events', schema='router')
    op.drop_index('ix_router_outbox_pending', table_name='outbox', schema='router', postgresql_where=sa.text('sent_at IS NULL'))
    op.drop_table('outbox', schema='router')
    op.drop_index(op.f('ix_router_assignments_owner_id'), table_name='assignments', schema='router')
    op.drop_table('assignments', schema='router')
    op.drop_index('ix_reporting_timeline_lead', table_name='timeline', schema='reporting')
    op.drop_table('timeline', schema='reporting')
    op.drop_table('processed_events', schema='reporting')
    op.drop_index('ix_reporting_outbox_pending', table_name='outbox', schema='reporting', postgresql_where=sa.text('sent_at IS NULL'))
    op.drop_table('outbox', schema='reporting')
    op.drop_table('leads', schema='reporting')
    op.drop_table('processed_events', schema='notifier')
    op.drop_index('ix_notifier_outbox_pending', table_name='outbox', schema='notifier', postgresql_where=sa.text('sent_at IS NULL'))
    op.drop_table('outbox', schema='notifier')
    op.drop_index(op.f('ix_notifier_escalations_lead_id'), table_name='escalations', schema='notifier')
    op.drop_table('escalations', schema='notifier')
    op.drop_index('ix_notifier_deliveries_due', table_name='deliveries', schema='notifier', postgresql_where=sa.text("state = 'pending'"))
    op.drop_table('deliveries', schema='notifier')
    op.drop_table('config_versions', schema='leadsla')
    op.drop_table('api_keys', schema='leadsla')
    op.drop_table('processed_events', schema='intake')
    op.drop_index('ix_intake_outbox_pending', table_name='outbox', schema='intake', postgresql_where=sa.text('sent_at IS NULL'))
    op.drop_table('outbox', schema='intake')
    op.drop_index('ux_intake_leads_source_external', table_name='leads', schema='intake', postgresql_where=sa.text('external_id IS NOT NULL'))
    op.drop_index('ix_intake_leads_phone', table_name='leads', schema='intake')
    op.drop_index('ix_intake_leads_email', table_name='leads', schema='intake')
    op.drop_table('leads', schema='intake')
    op.drop_table('idempotency_keys', schema='intake')
    op.drop_index(op.f('ix_intake_activities_lead_id'), table_name='activities', schema='intake')
    op.drop_table('activities', schema='intake')
    for schema in reversed(SCHEMAS[1:]):  # `leadsla` keeps alembic's own version table
        op.execute(f"DROP SCHEMA IF EXISTS {schema}")
