"""deliveries.claim_token and the acceptances journal

A claim now carries a random token that every later write of it checks (a worker frozen past
its lease cannot overwrite another worker's claim), and each message the SMTP server accepts
is journalled at once in ``acceptances`` (delivery, claim token, reply), so recovery marks it
sent instead of sending it again when its group of outcomes was never committed (ADR 0020).
Existing rows have no token: they are claimed afresh.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not in batch mode: on SQLite a batch copies the table (see 0009).
    op.add_column('deliveries', sa.Column('claim_token', sa.String(32), nullable=True))
    op.create_table(
        'acceptances',
        sa.Column('delivery_id', sa.Integer(),
                  sa.ForeignKey('deliveries.id', ondelete='CASCADE',
                                name='fk_acceptances_delivery_id_deliveries'),
                  nullable=False),
        sa.Column('claim_token', sa.String(32), nullable=False),
        sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('smtp_code', sa.Integer(), nullable=True),
        sa.Column('smtp_reply', sa.Text(), nullable=True),
        sa.Column('message_id', sa.String(300), nullable=True),
        sa.PrimaryKeyConstraint('delivery_id', 'claim_token', name='pk_acceptances'),
    )


def downgrade() -> None:
    op.drop_table('acceptances')
    op.drop_column('deliveries', 'claim_token')
