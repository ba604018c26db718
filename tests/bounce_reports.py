"""The sample bounce reports of tests/data/bounces, and the deliveries they are about.

The reports are written as real MTAs write them (Postfix, Outlook, Sendmail, qmail, Exim)
about run 7, deliveries 101-104; ``seed_sample_deliveries`` creates exactly those rows.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from digest.models import Delivery, DigestRun, Subscriber
from tests.conftest import TEST_DATA
from tests.factories import T0, make_subscriber

DATA = TEST_DATA / "bounces"
HARD_5_1_1 = DATA / "postfix-5.1.1-user-unknown.eml"
# The readers of run 7, by delivery id, as the sample reports name them.
ADDRESSES = {101: "gone@example.net", 102: "full@example.com", 103: "strict@example.org",
             104: "moved@example.net"}


def sample(path: Path, **replace: str) -> bytes:
    """A sample report with each ``old`` text replaced by ``new`` (each must be there)."""
    text = path.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text.encode()


def add_sent_delivery(session: Session, run_id: int, delivery_id: int, sub: Subscriber) -> Delivery:
    """A delivery the server accepted with 250, in run ``run_id`` (created if missing)."""
    if session.get(DigestRun, run_id) is None:
        session.add(DigestRun(id=run_id, kind="weekly", slot_key=f"weekly:test-{run_id}",
                              cutoff=T0 + timedelta(days=7 * (run_id - 7)), status="done"))
        session.flush()
    delivery = Delivery(id=delivery_id, run_id=run_id, subscriber_id=sub.id, email=sub.email,
                        status="sent", attempts=1, item_count=4, smtp_code=250,
                        smtp_reply="250 2.0.0 OK: queued as 1",
                        message_id=f"<digest.{run_id}.{delivery_id}@newsroom.example.org>",
                        sent_at=T0 + timedelta(minutes=30))
    session.add(delivery)
    session.flush()
    return delivery


def seed_sample_deliveries(session: Session) -> dict[str, Subscriber]:
    """Run 7: the four digests the sample reports are about, committed."""
    subs = {}
    for delivery_id, address in ADDRESSES.items():
        subs[address] = make_subscriber(session, address)
        add_sent_delivery(session, 7, delivery_id, subs[address])
    session.commit()
    return subs
