"""delivery_counts: the deliveries counted by run and status as they change, kept by triggers

``/metrics``, ``digest runs``, ``digest deliveries`` and the admin's runs list read counts by
run and status. Counting ``deliveries`` for them costs a scan of millions of rows; the
database keeps the counts instead, by triggers on ``deliveries`` (every writer, raw SQL and
cascades included, is counted; nothing in the code has to remember to):

- each INSERT, DELETE and UPDATE (of ``run_id``, ``status``, ``sent_at`` or ``note``)
  appends what it changed to ``delivery_counts`` as rows of (run_id, status, rows, sent,
  too_large) deltas: statement-level triggers with transition tables on PostgreSQL (one row
  per run and status a statement touched), row-level triggers on SQLite. Appending never
  updates a row another transaction holds, so concurrent workers do not wait for each
  other (a counter row updated in place would serialise them, and deadlock them);
- a count is ``sum()`` over a run's rows (an index on ``run_id``);
- ``digest.delivery.counts.fold`` replaces the appended rows with their sums (``DELETE ...
  RETURNING``, then one row per run and status), so the table stays one row per run and
  status between folds; the scrape and the nightly prune fold.

Two partial indexes on the unsent rows, per run and status, answer the oldest unsent
(``created_at``) and oldest due (``coalesce(next_attempt_at, created_at)``) delivery with a
``LIMIT 1`` each; a third, on (run_id, sent_at) of the rows sent, gives a run's first and
last ``sent_at`` and the last hour's sending (the throughput an ETA uses) without a scan.

``bounces.run_id`` is the run of a report's delivery (None without one), set by a trigger
when the report is written or its delivery_id changes (the SET NULL of a deleted delivery
clears it): ``/metrics`` counts reports by run kind from ``bounces`` and ``digest_runs``
alone, not with a lookup in ``deliveries`` per report.

Upgrading counts the existing deliveries once (one scan, the table locked against writes
meanwhile), builds the three indexes and fills bounces.run_id.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

UNSENT = "status IN ('pending', 'sending', 'deferred')"
DUE = "status IN ('pending', 'deferred')"
SENT = "sent_at IS NOT NULL"
# digest.delivery.send.TOO_LARGE, the prefix of the note of a message over the SIZE limit.
TOO_LARGE = "message too large:"
TOO_LARGE_SQL = (f"coalesce(status = 'failed' AND substr(note, 1, {len(TOO_LARGE)}) = "
                 f"'{TOO_LARGE}', false)")

PG_FUNCTIONS = f"""
CREATE FUNCTION delivery_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_counts (run_id, status, rows, sent, too_large)
    SELECT run_id, status, count(*), count(sent_at), count(*) FILTER (WHERE {TOO_LARGE_SQL})
    FROM new_rows GROUP BY run_id, status ORDER BY run_id, status;
    RETURN NULL;
END $$;

CREATE FUNCTION delivery_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_counts (run_id, status, rows, sent, too_large)
    SELECT run_id, status, -count(*), -count(sent_at),
           -count(*) FILTER (WHERE {TOO_LARGE_SQL})
    FROM old_rows GROUP BY run_id, status ORDER BY run_id, status;
    RETURN NULL;
END $$;

CREATE FUNCTION delivery_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_counts (run_id, status, rows, sent, too_large)
    SELECT run_id, status, sum(n), sum(s), sum(t) FROM (
        SELECT run_id, status, 1 AS n, (sent_at IS NOT NULL)::int AS s,
               ({TOO_LARGE_SQL})::int AS t FROM new_rows
        UNION ALL
        SELECT run_id, status, -1, -((sent_at IS NOT NULL)::int),
               -(({TOO_LARGE_SQL})::int) FROM old_rows
    ) AS changed
    GROUP BY run_id, status
    HAVING sum(n) <> 0 OR sum(s) <> 0 OR sum(t) <> 0
    ORDER BY run_id, status;
    RETURN NULL;
END $$;

CREATE FUNCTION delivery_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM delivery_counts;
    RETURN NULL;
END $$;
"""

PG_TRIGGERS = """
CREATE TRIGGER delivery_counts_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION delivery_counts_inserted();
CREATE TRIGGER delivery_counts_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION delivery_counts_deleted();
CREATE TRIGGER delivery_counts_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION delivery_counts_updated();
CREATE TRIGGER delivery_counts_truncate AFTER TRUNCATE ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_truncated();
"""

PG_DROP = """
DROP TRIGGER IF EXISTS delivery_counts_truncate ON deliveries;
DROP TRIGGER IF EXISTS delivery_counts_update ON deliveries;
DROP TRIGGER IF EXISTS delivery_counts_delete ON deliveries;
DROP TRIGGER IF EXISTS delivery_counts_insert ON deliveries;
DROP FUNCTION IF EXISTS delivery_counts_truncated();
DROP FUNCTION IF EXISTS delivery_counts_updated();
DROP FUNCTION IF EXISTS delivery_counts_deleted();
DROP FUNCTION IF EXISTS delivery_counts_inserted();
"""


def _sqlite_row(prefix: str, sign: str) -> str:
    too_large = TOO_LARGE_SQL.replace("status", f"{prefix}.status").replace(
        "note", f"{prefix}.note")
    return (f"INSERT INTO delivery_counts (run_id, status, rows, sent, too_large) VALUES "
            f"({prefix}.run_id, {prefix}.status, {sign}1, "
            f"{sign}({prefix}.sent_at IS NOT NULL), {sign}({too_large}));")


SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER delivery_counts_insert AFTER INSERT ON deliveries FOR EACH ROW
    BEGIN {_sqlite_row("NEW", "")} END""",
    f"""CREATE TRIGGER delivery_counts_delete AFTER DELETE ON deliveries FOR EACH ROW
    BEGIN {_sqlite_row("OLD", "-")} END""",
    f"""CREATE TRIGGER delivery_counts_update AFTER UPDATE OF run_id, status, sent_at, note
    ON deliveries FOR EACH ROW
    WHEN OLD.run_id IS NOT NEW.run_id OR OLD.status IS NOT NEW.status
      OR (OLD.sent_at IS NULL) <> (NEW.sent_at IS NULL) OR OLD.note IS NOT NEW.note
    BEGIN {_sqlite_row("OLD", "-")} {_sqlite_row("NEW", "")} END""",
]
SQLITE_DROP = ["DROP TRIGGER IF EXISTS delivery_counts_update",
               "DROP TRIGGER IF EXISTS delivery_counts_delete",
               "DROP TRIGGER IF EXISTS delivery_counts_insert"]


# bounces.run_id: the run of the report's delivery (None without one), kept by triggers, so
# /metrics counts the reports by run kind from bounces alone.
PG_BOUNCES = """
CREATE FUNCTION bounces_run_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.delivery_id IS NULL THEN
        NEW.run_id := NULL;
    ELSE
        NEW.run_id := (SELECT run_id FROM deliveries WHERE id = NEW.delivery_id);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER bounces_run_id BEFORE INSERT OR UPDATE OF delivery_id ON bounces
    FOR EACH ROW EXECUTE FUNCTION bounces_run_id();
"""
PG_BOUNCES_DROP = """
DROP TRIGGER IF EXISTS bounces_run_id ON bounces;
DROP FUNCTION IF EXISTS bounces_run_id();
"""
_SET_RUN = ("UPDATE bounces SET run_id = (SELECT run_id FROM deliveries "
            "WHERE deliveries.id = NEW.delivery_id) WHERE id = NEW.id;")
SQLITE_BOUNCES = [
    f"""CREATE TRIGGER bounces_run_id_insert AFTER INSERT ON bounces FOR EACH ROW
    BEGIN {_SET_RUN} END""",
    f"""CREATE TRIGGER bounces_run_id_update AFTER UPDATE OF delivery_id ON bounces FOR EACH ROW
    WHEN OLD.delivery_id IS NOT NEW.delivery_id
    BEGIN {_SET_RUN} END""",
]
SQLITE_BOUNCES_DROP = ["DROP TRIGGER IF EXISTS bounces_run_id_update",
                       "DROP TRIGGER IF EXISTS bounces_run_id_insert"]


def upgrade() -> None:
    op.create_table(
        'delivery_counts',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('rows', sa.BigInteger(), nullable=False),
        sa.Column('sent', sa.BigInteger(), nullable=False),
        sa.Column('too_large', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_counts')),
    )
    op.create_index(op.f('ix_delivery_counts_run_id'), 'delivery_counts', ['run_id'])
    # The rows there are now, counted once; then the triggers keep the counts (the table is
    # locked against writes meanwhile on PostgreSQL, so nothing is counted twice or missed).
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("LOCK TABLE deliveries IN SHARE MODE")
    op.execute(f"""
        INSERT INTO delivery_counts (run_id, status, rows, sent, too_large)
        SELECT run_id, status, count(*), count(sent_at),
               sum(CASE WHEN {TOO_LARGE_SQL} THEN 1 ELSE 0 END)
        FROM deliveries GROUP BY run_id, status ORDER BY run_id, status""")
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(PG_FUNCTIONS)
        op.execute(PG_TRIGGERS)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)
    op.create_index('ix_deliveries_unsent', 'deliveries', ['run_id', 'status', 'created_at'],
                    postgresql_where=sa.text(UNSENT), sqlite_where=sa.text(UNSENT))
    op.create_index('ix_deliveries_due', 'deliveries',
                    ['run_id', 'status', sa.text('coalesce(next_attempt_at, created_at)')],
                    postgresql_where=sa.text(DUE), sqlite_where=sa.text(DUE))
    op.create_index('ix_deliveries_sent_at', 'deliveries', ['run_id', 'sent_at'],
                    postgresql_where=sa.text(SENT), sqlite_where=sa.text(SENT))

    with op.batch_alter_table('bounces') as batch:
        batch.add_column(sa.Column('run_id', sa.Integer(), nullable=True))
    op.execute("UPDATE bounces SET run_id = (SELECT run_id FROM deliveries "
               "WHERE deliveries.id = bounces.delivery_id)")
    op.create_index('ix_bounces_run_id_kind', 'bounces', ['run_id', 'kind'])
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(PG_BOUNCES)
    else:
        for statement in SQLITE_BOUNCES:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(PG_BOUNCES_DROP)
    else:
        for statement in SQLITE_BOUNCES_DROP:
            op.execute(statement)
    op.drop_index('ix_bounces_run_id_kind', table_name='bounces')
    with op.batch_alter_table('bounces') as batch:
        batch.drop_column('run_id')
    op.drop_index('ix_deliveries_sent_at', table_name='deliveries')
    op.drop_index('ix_deliveries_due', table_name='deliveries')
    op.drop_index('ix_deliveries_unsent', table_name='deliveries')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(PG_DROP)
    else:
        for statement in SQLITE_DROP:
            op.execute(statement)
    op.drop_index(op.f('ix_delivery_counts_run_id'), table_name='delivery_counts')
    op.drop_table('delivery_counts')
