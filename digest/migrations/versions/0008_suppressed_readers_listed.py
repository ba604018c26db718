"""Every suppressed reader's address is on the suppression list (rule R3)

Before this revision a CSV import or the API's upsert could set a reader's status to
``suppressed`` without listing the address, and erasing such a reader let the address be
mailed again. The missing list entries are added (reason ``admin``, the detail below says
where they came from); the code now lists the address whenever it sets the status. Going
down removes exactly the entries this revision added.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

DETAIL = 'listed by migration 0008: the status was suppressed, the list did not have it'

subscribers = sa.table('subscribers', sa.column('email', sa.String()),
                       sa.column('status', sa.String()),
                       sa.column('unsubscribed_at', sa.DateTime(timezone=True)),
                       sa.column('created_at', sa.DateTime(timezone=True)))
suppressions = sa.table('suppressions', sa.column('email', sa.String()),
                        sa.column('reason', sa.String()), sa.column('detail', sa.Text()),
                        sa.column('created_at', sa.DateTime(timezone=True)))


def upgrade() -> None:
    listed = sa.select(suppressions.c.email).where(suppressions.c.email == subscribers.c.email)
    missing = sa.select(
        subscribers.c.email, sa.literal('admin'), sa.literal(DETAIL),
        sa.func.coalesce(subscribers.c.unsubscribed_at, subscribers.c.created_at),
    ).where(subscribers.c.status == 'suppressed', ~sa.exists(listed))
    op.execute(suppressions.insert().from_select(
        ['email', 'reason', 'detail', 'created_at'], missing))


def downgrade() -> None:
    op.execute(suppressions.delete().where(suppressions.c.detail == DETAIL))
