"""bounces: report hash, unique per (delivery, status, report) so a report counts once

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.add_column(sa.Column('report_hash', sa.String(length=64), nullable=False,
                                      server_default=''))
        batch_op.create_unique_constraint(
            batch_op.f('uq_bounces_delivery_id'), ['delivery_id', 'status_code', 'report_hash'])


def downgrade() -> None:
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_bounces_delivery_id'), type_='unique')
        batch_op.drop_column('report_hash')
