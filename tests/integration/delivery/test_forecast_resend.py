"""Forecasts and the resend of the failed ones, on SQLite and PostgreSQL with a real SMTP
server (MailSink): a dry run's forecast measures messages as MessageFactory builds them and
the throughput from the rows sent; a finished run's failed deliveries go once more, to the
readers still there, with the same items, once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from digest.delivery import send_deliveries
from digest.delivery.forecast import forecast_run, measured_throughput
from digest.delivery.progress import runs_eta, runs_progress
from digest.delivery.send import load_batch
from digest.errors import ValidationError
from digest.mail import MessageFactory
from digest.models import Delivery, DeliveryStatus, DigestRun, RunKind, RunStatus, utcnow
from digest.selection import AdhocQuery, plan_adhoc_run, plan_scheduled_run
from digest.selection.resend import plan_resend_failed
from digest.subscribers.manage import unsubscribe
from tests.factories import T0, Taxo, make_item, make_subscriber


@pytest.fixture
def readers(session):
    t = Taxo(session)
    items = [make_item(session, "Police reform", themes=[t.policing]),
             make_item(session, "Election observers", themes=[t.policing])]
    subs = [make_subscriber(session, f"reader{i}@example.org") for i in range(5)]
    session.commit()
    return items, subs


def _rows(session, run_id: int) -> dict[str, Delivery]:
    session.expire_all()
    return {d.email: d for d in session.scalars(select(Delivery).where(Delivery.run_id == run_id))}


def test_a_dry_runs_forecast_counts_and_measures_messages_as_they_are_built(
        session, settings, readers):
    items, _ = readers
    dry = plan_adhoc_run(session, AdhocQuery(item_ids=(items[0].id,)), dry_run=True)
    session.commit()
    settings.send_rate = 2.0
    forecast = forecast_run(session, dry.run_id, settings)
    assert (forecast.recipients, forecast.messages, forecast.sampled) == (5, 5, 5)
    factory = MessageFactory(settings)
    sizes = [len(factory.build(d, d.run, its)[1]) for d, its in load_batch(session,
                                                                            dry.pending_ids)]
    # Message-IDs and links differ per reader by a few bytes only.
    assert abs(forecast.average_bytes - sum(sizes) / len(sizes)) <= 1
    assert forecast.seconds_at_limit == 2.5
    assert forecast.measured is None and forecast.seconds_at_measured is None  # nothing sent
    with pytest.raises(ValidationError, match="no run with id 999"):
        forecast_run(session, 999, settings)


def test_the_measured_throughput_is_read_from_the_rows_sent(session, settings, readers,
                                                            smtp_sink):
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert send_deliveries(run.pending_ids, settings=settings).sent == 5
    # Spread the sends over 10 s, as a real send of five messages at 0.5/s would be.
    start = utcnow() - timedelta(seconds=20)
    for k, delivery_id in enumerate(run.pending_ids):
        session.execute(update(Delivery).where(Delivery.id == delivery_id)
                        .values(sent_at=start + timedelta(seconds=2.5 * k)))
    session.commit()
    measured = measured_throughput(session)
    assert measured is not None and measured.source == "the last hour"
    assert (measured.messages, measured.seconds, measured.rate) == (5, 10.0, 0.5)
    # Two hours later the last hour is empty: the last finished runs say the same.
    later = measured_throughput(session, utcnow() + timedelta(hours=2))
    assert later is not None and later.rate == 0.5 and "finished run" in later.source

    dry = plan_adhoc_run(session, AdhocQuery(item_ids=(readers[0][0].id,)), dry_run=True)
    session.commit()
    forecast = forecast_run(session, dry.run_id, settings)
    assert forecast.seconds_at_measured == 10.0  # five messages at 0.5/s
    assert forecast.seconds_at_limit is None  # DIGEST_SEND_RATE=0: unlimited


def test_a_sending_runs_eta_is_from_its_own_rate(session, settings, readers, smtp_sink):
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    first_two = run.pending_ids[:2]
    assert send_deliveries(first_two, settings=settings).sent == 2
    session.execute(update(Delivery).where(Delivery.id.in_(first_two))
                    .values(sent_at=utcnow() - timedelta(seconds=4)))
    session.commit()
    progress = runs_progress(session, [run.run_id])
    eta = runs_eta(session, progress)[run.run_id]
    assert (eta.done, eta.messages, eta.sent) == (2, 5, 2)
    assert eta.rate is not None and 0.4 < eta.rate <= 0.5  # 2 in about 4 s
    assert eta.seconds_left is not None and 6 <= eta.seconds_left <= 7.5


def test_resend_failed_sends_the_same_items_to_the_failed_readers_still_there_once(
        session, settings, readers, smtp_sink):
    items, subs = readers
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    smtp_sink.script("reader0@example.org", "550 5.1.1 <reader0@example.org>: user unknown")
    smtp_sink.script("reader1@example.org", "552 5.3.4 Message size exceeds fixed limit")
    smtp_sink.script("reader2@example.org", "552 5.3.4 Message size exceeds fixed limit")
    result = send_deliveries(run.pending_ids, settings=settings)
    assert (result.sent, result.failed) == (2, 3)
    unsubscribe(session, subs[2])  # left since: not resent
    session.commit()
    assert session.get_one(DigestRun, run.run_id).status == RunStatus.done
    smtp_sink.clear()

    resend = plan_resend_failed(session, run.run_id)
    session.commit()
    assert resend.created and resend.planned == 1  # reader0 suppressed, reader2 left
    new = session.get_one(DigestRun, resend.run_id)
    assert new.kind == RunKind.adhoc and new.params["resend_failed_of"] == run.run_id
    assert send_deliveries(resend.pending_ids, settings=settings).sent == 1
    [message] = smtp_sink.wait_for(1)
    assert message.rcpt_tos == ["reader1@example.org"]
    body = message.parsed().get_body(("plain",)).get_content()
    assert "Police reform" in body and "Election observers" in body
    assert _rows(session, resend.run_id)["reader1@example.org"].item_count == 2
    # The first run's record stays as it was.
    assert _rows(session, run.run_id)["reader1@example.org"].status == DeliveryStatus.failed

    again = plan_resend_failed(session, run.run_id)
    assert (again.created, again.run_id) == (False, resend.run_id)
    assert len(session.scalars(select(DigestRun.id)).all()) == 2


def test_resend_failed_refuses_a_missing_a_dry_or_an_unfinished_run(session, settings, readers):
    items, _ = readers
    with pytest.raises(ValidationError, match="no run with id 999"):
        plan_resend_failed(session, 999)
    dry = plan_adhoc_run(session, AdhocQuery(item_ids=(items[0].id,)), dry_run=True)
    session.commit()
    with pytest.raises(ValidationError, match="dry run: it sent nothing"):
        plan_resend_failed(session, dry.run_id)
    sending = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    with pytest.raises(ValidationError, match="is sending, not finished"):
        plan_resend_failed(session, sending.run_id)
