"""chunked planning: digest_runs.planned_through; the ledger checks its delivery only

A scheduled run is planned in chunks of subscribers, each its own transaction; the run
records how far it got (``planned_through``, a subscriber id) while its status is
``planning`` (a VARCHAR value, no schema change), so a second call resumes from there.

The ledger (``sent_items``) loses its foreign keys to ``subscribers`` and ``items``: every
row names its delivery, whose subscriber it is and whose deletion (with the subscriber's,
by cascade) takes the row along; the two extra checks were a lookup each for millions of
rows a run. The primary key (subscriber, item) stays: an item goes to a subscriber in at
most one scheduled digest, ever.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_DROPPED = (('fk_sent_items_subscriber_id_subscribers', 'subscribers', 'subscriber_id'),
            ('fk_sent_items_item_id_items', 'items', 'item_id'))


def upgrade() -> None:
    # Added in place: on SQLite a batch copy of digest_runs would cascade into deliveries.
    op.add_column('digest_runs', sa.Column('planned_through', sa.Integer(), nullable=True))
    # sent_items is referenced by nothing, so its batch copy on SQLite cascades nothing.
    with op.batch_alter_table('sent_items') as batch_op:
        for name, _table, _column in _DROPPED:
            batch_op.drop_constraint(name, type_='foreignkey')


def downgrade() -> None:
    # Rows whose subscriber or item went meanwhile would stop the constraints being created.
    op.execute("DELETE FROM sent_items WHERE NOT EXISTS "
               "(SELECT 1 FROM subscribers WHERE subscribers.id = sent_items.subscriber_id) "
               "OR NOT EXISTS (SELECT 1 FROM items WHERE items.id = sent_items.item_id)")
    with op.batch_alter_table('sent_items') as batch_op:
        for name, table, column in _DROPPED:
            batch_op.create_foreign_key(name, table, [column], ['id'], ondelete='CASCADE')
    # SQLite drops a column in place since 3.35; a batch copy would cascade (see upgrade).
    op.drop_column('digest_runs', 'planned_through')
