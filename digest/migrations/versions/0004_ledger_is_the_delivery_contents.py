"""scheduled digests' items live in the ledger only

Until now planning copied every ledger row (sent_items) into delivery_items too. The ledger
names its delivery, so digest.select.delivery_contents reads both tables and scheduled runs
no longer write the copy; the copies made before are removed here, or the items of those
deliveries would be read twice.

Revision ID: 0004
Revises: 0003
"""
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM delivery_items WHERE EXISTS (SELECT 1 FROM sent_items "
        "WHERE sent_items.delivery_id = delivery_items.delivery_id "
        "AND sent_items.item_id = delivery_items.item_id)"
    )


def downgrade() -> None:
    # The code before 0004 reads delivery_items alone: give it its copies back.
    op.execute(
        "INSERT INTO delivery_items (delivery_id, item_id) "
        "SELECT sent_items.delivery_id, sent_items.item_id FROM sent_items "
        "WHERE NOT EXISTS (SELECT 1 FROM delivery_items "
        "WHERE delivery_items.delivery_id = sent_items.delivery_id "
        "AND delivery_items.item_id = sent_items.item_id)"
    )
