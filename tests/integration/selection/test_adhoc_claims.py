"""Rule H3: what an ad-hoc send carries to a reader is claimed for them, so their digests
and alerts do not carry it again, unless the operator chose "also include in digests"; a dry
run claims nothing, a cancelled send gives its items back, a resend of its failed messages
carries the same items. SQLite and PostgreSQL, mail through the storing SMTP server."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from digest.delivery import send_deliveries
from digest.models import Delivery, DeliveryStatus, DigestRun, Item
from digest.selection import (
    AdhocQuery,
    cancel_run,
    delivery_contents,
    plan_adhoc_run,
    plan_due_alerts,
    plan_scheduled_run,
)
from digest.selection.explain import Verdict, explain
from digest.selection.resend import plan_resend_failed
from tests.factories import T0, make_item, make_subscriber
from tests.ledger import carried_unclaimed, claims

MIN = timedelta(minutes=1)


def carried(session, run_id: int) -> dict[str, list[str]]:
    """email -> the titles each delivery of the run carries, every row of the contents."""
    contents = delivery_contents(session)
    out: dict[str, list[str]] = {}
    for email, title in session.execute(
            select(Delivery.email, Item.title)
            .join(contents, contents.c.delivery_id == Delivery.id)
            .join(Item, Item.id == contents.c.item_id)
            .where(Delivery.run_id == run_id).order_by(Item.title)):
        out.setdefault(email, []).append(title)
    return out


def text_of(message) -> str:
    return message.parsed().get_body(("plain",)).get_content()


def test_an_item_an_adhoc_send_carried_is_not_carried_again_by_the_next_digest(
        session, taxo, settings, smtp_sink):
    t = taxo
    reader = make_subscriber(session, "ann@example.org", {"themes": [t.policing]})
    sent = make_item(session, "Border police training", themes=[t.policing])
    other = make_item(session, "Community policing forum", themes=[t.policing])
    session.commit()

    adhoc = plan_adhoc_run(session, AdhocQuery(item_ids=(sent.id,)))
    session.commit()
    assert send_deliveries(adhoc.pending_ids, settings=settings).sent == 1
    [message] = smtp_sink.wait_for(1)
    assert "Border police training" in text_of(message)
    smtp_sink.clear()

    e = explain(session, reader, sent, settings=settings, as_of=T0)
    assert e.verdict == Verdict.sent and not e.next_digest_would_carry
    [claim] = [r.text for r in e.reasons if r.code == "ledger"]
    assert claim == (f"It is yours already, carried by delivery {adhoc.pending_ids[0]}, which "
                     f"claimed it for you: no scheduled digest or alert will carry it again (the ad-hoc send "
                     f"of run {adhoc.run_id} claimed it, rule H3).")

    digest = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert carried(session, digest.run_id) == {"ann@example.org": [other.title]}
    assert send_deliveries(digest.pending_ids, settings=settings).sent == 1
    [weekly] = smtp_sink.wait_for(1)
    assert "Community policing forum" in text_of(weekly)
    assert "Border police training" not in text_of(weekly)


def test_also_in_digests_leaves_the_item_to_the_readers_next_digest(
        session, taxo, settings, smtp_sink):
    reader = make_subscriber(session, "ann@example.org")
    item = make_item(session, "Border police training")
    session.commit()
    query = AdhocQuery(item_ids=(item.id,), also_in_digests=True)
    assert query.key() != AdhocQuery(item_ids=(item.id,)).key()  # another request
    adhoc = plan_adhoc_run(session, query)
    session.commit()
    assert session.get_one(DigestRun, adhoc.run_id).params["also_in_digests"] is True
    assert claims(session) == []
    assert send_deliveries(adhoc.pending_ids, settings=settings).sent == 1

    e = explain(session, reader, item, settings=settings, as_of=T0)
    assert e.verdict == Verdict.sent and e.next_digest_would_carry
    assert "also_in_digests" in {r.code for r in e.reasons}

    digest = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert carried(session, digest.run_id) == {"ann@example.org": [item.title]}
    assert send_deliveries(digest.pending_ids, settings=settings).sent == 1
    assert all("Border police training" in text_of(m) for m in smtp_sink.wait_for(2))


def test_an_adhoc_send_repeats_an_item_the_reader_had_and_lists_each_item_once(
        session, taxo, settings, smtp_sink):
    """The item the digest claimed stays the digest's; the ad-hoc delivery lists it apart, and
    claims the new one: two items, each counted once."""
    make_subscriber(session, "ann@example.org")
    had = make_item(session, "Border police training")
    digest = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    new = make_item(session, "Community policing forum", ingested_at=T0 + MIN)
    session.commit()

    adhoc = plan_adhoc_run(session, AdhocQuery(item_ids=(had.id, new.id)))
    session.commit()
    assert carried(session, adhoc.run_id) == {"ann@example.org": sorted([had.title, new.title])}
    [row] = session.scalars(select(Delivery).where(Delivery.run_id == adhoc.run_id))
    assert row.item_count == 2
    claimed = {c.item_id: c.delivery_id for c in claims(session)}
    digest_row = session.scalar(select(Delivery.id).where(Delivery.run_id == digest.run_id))
    assert claimed == {had.id: digest_row, new.id: row.id}
    assert carried_unclaimed(session, row.id) == [had.id]
    assert send_deliveries(adhoc.pending_ids, settings=settings).sent == 1
    body = text_of(smtp_sink.wait_for(1)[0])
    assert "Border police training" in body and "Community policing forum" in body


def test_an_adhoc_dry_run_claims_nothing(session, taxo, settings):
    make_subscriber(session, "ann@example.org")
    item = make_item(session, "Border police training")
    session.commit()
    dry = plan_adhoc_run(session, AdhocQuery(item_ids=(item.id,)), dry_run=True)
    session.commit()
    assert dry.planned == 1
    assert claims(session) == []
    digest = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert carried(session, digest.run_id) == {"ann@example.org": [item.title]}


def test_cancelling_an_adhoc_send_gives_its_items_back_to_the_next_digest(
        session, taxo, settings):
    make_subscriber(session, "ann@example.org")
    item = make_item(session, "Border police training")
    session.commit()
    adhoc = plan_adhoc_run(session, AdhocQuery(item_ids=(item.id,)))
    session.commit()
    result = cancel_run(session, adhoc.run_id, "wrong list", settings)
    session.commit()
    assert (result.deliveries, result.items_given_back) == (1, 1)
    digest = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert carried(session, digest.run_id) == {"ann@example.org": [item.title]}


def test_a_resend_of_an_adhoc_sends_failed_messages_carries_the_same_items_and_claims_stay(
        session, taxo, settings, smtp_sink):
    make_subscriber(session, "ann@example.org")
    make_subscriber(session, "bob@example.org")
    item = make_item(session, "Border police training")
    session.commit()
    adhoc = plan_adhoc_run(session, AdhocQuery(item_ids=(item.id,)))
    session.commit()
    smtp_sink.script("bob@example.org", "552 5.3.4 Message size exceeds fixed limit")
    result = send_deliveries(adhoc.pending_ids, settings=settings)
    assert (result.sent, result.failed) == (1, 1)
    smtp_sink.clear()

    resend = plan_resend_failed(session, adhoc.run_id)
    session.commit()
    assert carried(session, resend.run_id) == {"bob@example.org": [item.title]}
    assert send_deliveries(resend.pending_ids, settings=settings).sent == 1
    [message] = smtp_sink.wait_for(1)
    assert message.rcpt_tos == ["bob@example.org"] and "Border police training" in text_of(message)
    # Both readers' claims stay with the ad-hoc send: no digest carries the item a third time.
    digest = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert carried(session, digest.run_id) == {}
    assert {d.status for d in session.scalars(select(Delivery).where(
        Delivery.run_id == digest.run_id))} == {DeliveryStatus.skipped}


def test_an_alert_does_not_carry_an_item_an_adhoc_send_claimed(session, taxo, settings):
    reader = make_subscriber(session, "now@example.org", frequency="immediate")
    item = make_item(session, "Border police training", ingested_at=T0)
    session.commit()
    plan_adhoc_run(session, AdhocQuery(item_ids=(item.id,)))
    session.commit()
    e = explain(session, reader, item, settings=settings, as_of=T0 + 2 * MIN)
    assert e.verdict == Verdict.on_its_way and "next alert" not in " ".join(e.sentences)
    assert plan_due_alerts(session, settings=settings, now=T0 + 10 * MIN, since=T0) == []
    assert session.scalar(select(func.count()).select_from(DigestRun)) == 1  # the ad-hoc one


def test_a_key_names_one_send_and_reusing_it_for_another_is_refused(session, taxo):
    import pytest

    from digest.errors import ValidationError

    make_subscriber(session, "ann@example.org", {"themes": [taxo.policing]})
    first = make_item(session, "Border police training", themes=[taxo.policing])
    second = make_item(session, "Community policing forum", themes=[taxo.policing])
    session.commit()
    sent = plan_adhoc_run(session, AdhocQuery(item_ids=(first.id,)), slot_key="adhoc:again")
    session.commit()
    # The same request under its key: nothing new (H2).
    again = plan_adhoc_run(session, AdhocQuery(item_ids=(first.id,)), slot_key="adhoc:again")
    assert (again.run_id, again.created) == (sent.run_id, False)
    # Another request under that key: refused with what to do, not a silent no-op.
    with pytest.raises(ValidationError, match="'again' was already used by run"):
        plan_adhoc_run(session, AdhocQuery(item_ids=(second.id,)), slot_key="adhoc:again")
