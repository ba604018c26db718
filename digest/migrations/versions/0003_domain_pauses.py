"""domain_pauses: receiving domains paused after a policy refusal (5.7.x)

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

import digest.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('domain_pauses',
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('paused_until', digest.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', digest.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], name=op.f('fk_domain_pauses_delivery_id_deliveries'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('domain', name=op.f('pk_domain_pauses'))
    )


def downgrade() -> None:
    op.drop_table('domain_pauses')
