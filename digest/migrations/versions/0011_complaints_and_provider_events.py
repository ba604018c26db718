"""complaints and provider_events: feedback reports and signed provider webhooks

``complaints`` records a reader's complaint (an ARF feedback report by mail, a provider's
complaint event) against the delivery it is about, once per report (ADR 0025).
``provider_events`` remembers each signed webhook processed, so a replayed one is refused
(ADR 0026).

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

import digest.models

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'complaints',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('delivery_id', sa.Integer(), nullable=True),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('source', sa.String(length=20), nullable=False),
        sa.Column('feedback_type', sa.String(length=40), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('report_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', digest.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'],
                                name=op.f('fk_complaints_delivery_id_deliveries'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_complaints')),
        sa.UniqueConstraint('delivery_id', 'report_hash',
                            name=op.f('uq_complaints_delivery_id')),
    )
    op.create_index(op.f('ix_complaints_delivery_id'), 'complaints', ['delivery_id'])
    op.create_table(
        'provider_events',
        sa.Column('provider', sa.String(length=20), nullable=False),
        sa.Column('event_id', sa.String(length=128), nullable=False),
        sa.Column('seen_at', digest.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('provider', 'event_id', name=op.f('pk_provider_events')),
    )
    op.create_index(op.f('ix_provider_events_seen_at'), 'provider_events', ['seen_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_provider_events_seen_at'), table_name='provider_events')
    op.drop_table('provider_events')
    op.drop_index(op.f('ix_complaints_delivery_id'), table_name='complaints')
    op.drop_table('complaints')
