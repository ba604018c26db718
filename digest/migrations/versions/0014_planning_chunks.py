"""planning chunks: a scheduled run's chunks laid out when it starts, each planned once

A run in status ``planning`` gets one ``planning_chunks`` row per chunk of subscribers (by id:
after ``after_id``, through ``through_id``; no ``through_id`` for the last), laid out once
when planning starts. Any number of planners (the command or tick that created the run,
workers' ``plan_run`` tasks, the sweep) each take the next chunk nobody holds (``FOR UPDATE
SKIP LOCKED``), plan it in its own transaction and mark it ``planned_at``; the one that
plans the last one finishes the run and deletes its chunks. A planner that dies mid-chunk
leaves that chunk unplanned and unlocked (its transaction rolls back) for another to take.
``digest_runs.planned_through`` stays for runs left half-planned before this revision: their
chunks are laid out from it when they are resumed.

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

import digest.models

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'planning_chunks',
        sa.Column('run_id', sa.Integer(),
                  sa.ForeignKey('digest_runs.id', ondelete='CASCADE'), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('after_id', sa.Integer(), nullable=True),
        sa.Column('through_id', sa.Integer(), nullable=True),
        sa.Column('planned_at', digest.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('run_id', 'seq'),
    )


def downgrade() -> None:
    # A run still planning keeps its progress in planned_through for the older planner: the
    # highest subscriber id of the chunks planned from its first on without a gap.
    bind = op.get_bind()
    chunks = sa.table('planning_chunks', sa.column('run_id'), sa.column('seq'),
                      sa.column('through_id'), sa.column('planned_at'))
    runs = sa.table('digest_runs', sa.column('id'), sa.column('planned_through'))
    done: dict[int, int | None] = {}
    gap: set[int] = set()
    for run_id, through, planned in bind.execute(
            sa.select(chunks.c.run_id, chunks.c.through_id, chunks.c.planned_at)
            .order_by(chunks.c.run_id, chunks.c.seq)):
        if run_id in gap:
            continue
        if planned is None or through is None:
            gap.add(run_id)
            continue
        done[run_id] = through
    for run_id, through in done.items():
        bind.execute(sa.update(runs).where(runs.c.id == run_id)
                     .values(planned_through=through))
    op.drop_table('planning_chunks')
