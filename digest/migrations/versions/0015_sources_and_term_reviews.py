"""sources the beat polls, WebSub subscriptions, categories waiting for review, an item's
source and language

``sources``: a registered feed, listing or JSON URL with its polling interval, the defaults
it gives its items, its conditional-GET validators (ETag, Last-Modified), a lease so one
source is never polled twice at once, its health (last attempt, success, error, failures,
items added, bytes fetched) and its WebSub subscription (hub, topic, secret, lease).
``term_reviews`` (+ ``term_review_items``): feed categories whose facet nothing told, kept
for an operator to file instead of silently becoming themes. ``items.source_id`` and
``items.language``.

Revision ID: 0015
Revises: 0014
"""
import sqlalchemy as sa
from alembic import op

import digest.models

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

UTC = digest.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'sources',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('url', sa.String(2000), nullable=False),
        sa.Column('kind', sa.String(20), nullable=False),
        sa.Column('every_seconds', sa.Integer(), nullable=False),
        sa.Column('default_content_type', sa.String(300), nullable=True),
        sa.Column('default_location', sa.String(300), nullable=True),
        sa.Column('default_language', sa.String(16), nullable=True),
        sa.Column('backfill_pages', sa.Integer(), nullable=False),
        sa.Column('paused', sa.Boolean(), nullable=False),
        sa.Column('created_at', UTC, nullable=False),
        sa.Column('next_poll_at', UTC, nullable=False),
        sa.Column('lease_until', UTC, nullable=True),
        sa.Column('lease_token', sa.String(64), nullable=True),
        sa.Column('etag', sa.String(500), nullable=True),
        sa.Column('last_modified', sa.String(100), nullable=True),
        sa.Column('last_attempt_at', UTC, nullable=True),
        sa.Column('last_success_at', UTC, nullable=True),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('failing_since', UTC, nullable=True),
        sa.Column('consecutive_failures', sa.Integer(), nullable=False),
        sa.Column('polls', sa.BigInteger(), nullable=False),
        sa.Column('not_modified', sa.BigInteger(), nullable=False),
        sa.Column('failures', sa.BigInteger(), nullable=False),
        sa.Column('items_added', sa.BigInteger(), nullable=False),
        sa.Column('bytes_fetched', sa.BigInteger(), nullable=False),
        sa.Column('hub_url', sa.String(2000), nullable=True),
        sa.Column('topic_url', sa.String(2000), nullable=True),
        sa.Column('websub_state', sa.String(20), nullable=True),
        sa.Column('websub_secret', sa.String(200), nullable=True),
        sa.Column('websub_callback', sa.String(64), nullable=True),
        sa.Column('websub_requested_at', UTC, nullable=True),
        sa.Column('websub_lease_until', UTC, nullable=True),
        sa.Column('websub_last_push_at', UTC, nullable=True),
        sa.Column('websub_error', sa.Text(), nullable=True),
        sa.UniqueConstraint('url', name=op.f('uq_sources_url')),
        sa.UniqueConstraint('websub_callback', name=op.f('uq_sources_websub_callback')),
    )
    op.create_index(op.f('ix_sources_next_poll_at'), 'sources', ['next_poll_at'])
    op.create_table(
        'term_reviews',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('slug', sa.String(200), nullable=False),
        sa.Column('name', sa.String(300), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('seen_count', sa.Integer(), nullable=False),
        sa.Column('first_seen_at', UTC, nullable=False),
        sa.Column('last_seen_at', UTC, nullable=False),
        sa.Column('source', sa.String(200), nullable=False),
        sa.UniqueConstraint('slug', name=op.f('uq_term_reviews_slug')),
    )
    op.create_table(
        'term_review_items',
        sa.Column('review_id', sa.Integer(),
                  sa.ForeignKey('term_reviews.id', ondelete='CASCADE'), nullable=False),
        sa.Column('item_id', sa.Integer(),
                  sa.ForeignKey('items.id', ondelete='CASCADE'), nullable=False),
        sa.PrimaryKeyConstraint('review_id', 'item_id'),
    )
    with op.batch_alter_table('items') as batch:
        batch.add_column(sa.Column('source_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('language', sa.String(16), nullable=True))
        batch.create_foreign_key(op.f('fk_items_source_id_sources'), 'sources',
                                 ['source_id'], ['id'], ondelete='SET NULL')
        batch.create_index(op.f('ix_items_source_id'), ['source_id'])


def downgrade() -> None:
    with op.batch_alter_table('items') as batch:
        batch.drop_index(op.f('ix_items_source_id'))
        batch.drop_constraint(op.f('fk_items_source_id_sources'), type_='foreignkey')
        batch.drop_column('language')
        batch.drop_column('source_id')
    op.drop_table('term_review_items')
    op.drop_table('term_reviews')
    op.drop_index(op.f('ix_sources_next_poll_at'), table_name='sources')
    op.drop_table('sources')
