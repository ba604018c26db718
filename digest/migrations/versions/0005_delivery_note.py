"""deliveries.note: our own words apart from the SMTP server's reply

Until now ``smtp_reply`` held both what the server answered and our notes ("gave up after 3
attempts: ...", "cancelled: ...", "not sent, put back: ..."). Existing rows are split by
the prefixes the code wrote (every writer of the column, as of 0004):

- a text that starts with one of our prefixes moves to ``note`` whole;
- when that text quotes a refusal in the transport's words ("SMTP server H:P refused R at
  RCPT TO: 550 5.1.1 ..."), the server's part ("550 5.1.1 ...") stays in ``smtp_reply``;
- "<reply> | bounced after it was accepted: <report>" (a sent row a hard bounce failed) is
  cut in two: the reply stays, the rest is the note.

Anything else (the text of a 250, a reply we do not recognise) stays where it is.

Revision ID: 0005
Revises: 0004
"""
import re

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# Every note the code wrote starts with one of these (LIKE patterns; the '_' below, LIKE's
# one-character wildcard, matches itself too).
_OUR_PREFIXES = (
    'gave up after %', 'not sent%', 'skipped: %', 'dry run: %', 'cancelled: %',
    'lease expired: %', 'bounced after it was accepted: %', 'connection to SMTP server %',
    'the SMTP server (DIGEST_SMTP_HOST) does not offer SMTPUTF8%', 'SMTP server % refused %',
)
# The transport's sentence around a refusal, optionally after the give-up note.
_REFUSAL = re.compile(r"(?:gave up after \d+ attempts: )?SMTP server \S+ refused .*? at "
                      r"(?:MAIL FROM|RCPT TO|DATA): (\d{3} .*)", re.S)
_JOIN = " | "  # how a bounce's note followed the reply of the send
_BOUNCED = "bounced after it was accepted: "

deliveries = sa.table('deliveries', sa.column('id', sa.Integer()),
                      sa.column('smtp_reply', sa.Text()), sa.column('note', sa.Text()))


def upgrade() -> None:
    # Not in batch mode: on SQLite a batch may copy the table, and dropping ``deliveries``
    # with foreign keys on would cascade into delivery_items, sent_items and bounces.
    op.add_column('deliveries', sa.Column('note', sa.Text(), nullable=True))
    conn = op.get_bind()
    reply = deliveries.c.smtp_reply

    refusals = conn.execute(sa.select(deliveries.c.id, reply).where(
        reply.like('%SMTP server % refused % at %: %'))).all()
    split: list[dict[str, object]] = [{'row_id': row_id, 'new_note': text, 'new_reply': match.group(1)}
             for row_id, text in refusals if (match := _REFUSAL.fullmatch(text))]
    _write(conn, split)

    ours = sa.or_(*(reply.like(prefix) for prefix in _OUR_PREFIXES))
    conn.execute(deliveries.update().where(deliveries.c.note.is_(None), ours)
                 .values(note=reply, smtp_reply=None))

    bounced = conn.execute(sa.select(deliveries.c.id, reply).where(
        deliveries.c.note.is_(None), reply.like(f'%{_JOIN}{_BOUNCED}%'))).all()
    cut: list[dict[str, object]] = []
    for row_id, text in bounced:
        before, _, after = text.partition(_JOIN + _BOUNCED)
        cut.append({'row_id': row_id, 'new_reply': before, 'new_note': _BOUNCED + after})
    _write(conn, cut)


def _write(conn: sa.Connection, rows: list[dict[str, object]]) -> None:
    """Each row's new note and reply, in one executemany."""
    if rows:
        conn.execute(deliveries.update().where(deliveries.c.id == sa.bindparam('row_id'))
                     .values(note=sa.bindparam('new_note'),
                             smtp_reply=sa.bindparam('new_reply')), rows)


def downgrade() -> None:
    # One column again, as the code before 0005 wrote it: the note replaces the reply, except
    # a bounce's note, which followed the reply of the send.
    reply, note = deliveries.c.smtp_reply, deliveries.c.note
    op.get_bind().execute(deliveries.update().where(note.is_not(None)).values(
        smtp_reply=sa.case(
            (sa.and_(reply.is_not(None), note.like(_BOUNCED + '%')), reply + _JOIN + note),
            else_=note)))
    # SQLite drops a column in place since 3.35; a batch copy would cascade (see upgrade).
    op.drop_column('deliveries', 'note')
