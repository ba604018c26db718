"""pruned_tallies: what retention deleted, counted, so /metrics' counters never go down

``digest prune`` deletes old deliveries (and the bounce reports that name them); the metrics
collector counts live rows and adds these tallies, so a prune is not read as a counter reset.
Rows pruned before this revision are not counted: nothing is left to count them from.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

import digest.models

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pruned_tallies',
    sa.Column('metric', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('label', sa.String(length=40), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', digest.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('metric', 'kind', 'label', name=op.f('pk_pruned_tallies'))
    )


def downgrade() -> None:
    op.drop_table('pruned_tallies')
