"""deliveries carry their item ids: no row per (reader, item) any more

Each delivery row gets ``item_ids`` (an ``INTEGER[]`` on PostgreSQL, a JSON array on SQLite),
``claims`` (what it carries is its reader's: digests, alerts, ad-hoc sends; not dry runs,
resends, "also in digests" sends) and ``newest_item_at`` (the ``ingested_at`` of the newest
item it carries). The ledger ``sent_items`` (one row per reader and item) and
``delivery_items`` are folded into them and dropped (ADR 0030). A delivery claims when the
ledger held a row of it; a cancelled one had given its rows back already.

The downgrade rebuilds both tables: the ledger row of a (reader, item) goes to the earliest
claiming, not cancelled delivery that carries it, every other pair to ``delivery_items``.

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import digest.models

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    # Not in batch mode: on SQLite a batch may copy ``deliveries``, and dropping it with
    # foreign keys on would cascade into the tables that name its rows.
    item_ids = postgresql.ARRAY(sa.Integer()) if _pg() else sa.JSON()
    op.add_column('deliveries', sa.Column('item_ids', item_ids, nullable=True))
    op.add_column('deliveries', sa.Column('claims', sa.Boolean(), nullable=False,
                                          server_default=sa.true()))
    op.add_column('deliveries', sa.Column(
        'newest_item_at', digest.models.UTCDateTime(timezone=True), nullable=True))
    op.drop_index('ix_deliveries_subscriber_id', table_name='deliveries')
    op.create_index('ix_deliveries_subscriber_id_newest_item_at', 'deliveries',
                    ['subscriber_id', 'newest_item_at'])
    pairs = ("SELECT delivery_id, item_id FROM sent_items "
             "UNION SELECT delivery_id, item_id FROM delivery_items")
    if _pg():
        op.execute(
            "UPDATE deliveries SET item_ids = carried.ids, newest_item_at = carried.newest "
            "FROM (SELECT p.delivery_id, array_agg(p.item_id ORDER BY p.item_id) AS ids, "
            "max(items.ingested_at) AS newest "
            f"FROM ({pairs}) AS p JOIN items ON items.id = p.item_id "
            "GROUP BY p.delivery_id) AS carried WHERE deliveries.id = carried.delivery_id")
        op.execute("UPDATE deliveries SET item_ids = '{}' WHERE item_ids IS NULL")
    else:
        op.execute(
            "UPDATE deliveries SET item_ids = carried.ids, newest_item_at = carried.newest "
            "FROM (SELECT o.delivery_id, json_group_array(o.item_id) AS ids, "
            "max(o.ingested_at) AS newest FROM (SELECT p.delivery_id, p.item_id, "
            f"items.ingested_at FROM ({pairs}) AS p JOIN items ON items.id = p.item_id "
            "ORDER BY p.delivery_id, p.item_id) AS o GROUP BY o.delivery_id) AS carried "
            "WHERE deliveries.id = carried.delivery_id")
        op.execute("UPDATE deliveries SET item_ids = '[]' WHERE item_ids IS NULL")
    op.execute("UPDATE deliveries SET claims = EXISTS "
               "(SELECT 1 FROM sent_items WHERE sent_items.delivery_id = deliveries.id)")
    op.drop_index('ix_sent_items_delivery_id', table_name='sent_items')
    op.drop_table('sent_items')
    op.drop_table('delivery_items')


def downgrade() -> None:
    op.create_table(
        'delivery_items',
        sa.Column('delivery_id', sa.Integer(), nullable=False),
        sa.Column('item_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'],
                                name=op.f('fk_delivery_items_delivery_id_deliveries'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['item_id'], ['items.id'],
                                name=op.f('fk_delivery_items_item_id_items'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('delivery_id', 'item_id', name=op.f('pk_delivery_items')))
    op.create_table(
        'sent_items',
        sa.Column('subscriber_id', sa.Integer(), nullable=False),
        sa.Column('item_id', sa.Integer(), nullable=False),
        sa.Column('delivery_id', sa.Integer(), nullable=False),
        sa.Column('created_at', digest.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'],
                                name=op.f('fk_sent_items_delivery_id_deliveries'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('subscriber_id', 'item_id', name=op.f('pk_sent_items')))
    op.create_index('ix_sent_items_delivery_id', 'sent_items', ['delivery_id'])
    if _pg():
        carried = ("SELECT d.id AS delivery_id, d.subscriber_id, x.item_id, d.claims, d.status, "
                   "d.created_at FROM deliveries d CROSS JOIN LATERAL unnest(d.item_ids) "
                   "AS x(item_id)")
    else:
        carried = ("SELECT d.id AS delivery_id, d.subscriber_id, j.value AS item_id, d.claims, "
                   "d.status, d.created_at FROM deliveries d, json_each(d.item_ids) j")
    # The claim of each (reader, item): the earliest claiming, not cancelled delivery.
    op.execute(
        "INSERT INTO sent_items (subscriber_id, item_id, delivery_id, created_at) "
        "SELECT c.subscriber_id, c.item_id, min(c.delivery_id), min(c.created_at) "
        f"FROM ({carried}) AS c WHERE c.claims AND c.status <> 'cancelled' "
        "GROUP BY c.subscriber_id, c.item_id")
    op.execute(
        "INSERT INTO delivery_items (delivery_id, item_id) "
        f"SELECT c.delivery_id, c.item_id FROM ({carried}) AS c "
        "WHERE EXISTS (SELECT 1 FROM items WHERE items.id = c.item_id) AND NOT EXISTS "
        "(SELECT 1 FROM sent_items s WHERE s.delivery_id = c.delivery_id "
        "AND s.item_id = c.item_id)")
    op.drop_index('ix_deliveries_subscriber_id_newest_item_at', table_name='deliveries')
    op.create_index('ix_deliveries_subscriber_id', 'deliveries', ['subscriber_id'])
    for name in ('newest_item_at', 'claims', 'item_ids'):
        op.drop_column('deliveries', name)
