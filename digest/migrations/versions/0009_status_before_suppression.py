"""subscribers.status_before_suppression: what lifting a suppression gives back

Until now lifting a suppression made the reader ``active`` whatever they were before it: a
reader who had never confirmed, or who had asked to unsubscribe, was subscribed by an
operator's unsuppress (rule R5 says only their own act does that). The column keeps the
status a reader had when they were suppressed; existing suppressed readers have none, and
lifting theirs keeps the old behaviour (active).

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not in batch mode: on SQLite a batch copies the table, and dropping ``subscribers`` with
    # foreign keys on would cascade into their filters and deliveries.
    op.add_column('subscribers',
                  sa.Column('status_before_suppression', sa.String(20), nullable=True))


def downgrade() -> None:
    op.drop_column('subscribers', 'status_before_suppression')
