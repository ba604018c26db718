"""Forecasts and the resend of the failed ones, on SQLite and PostgreSQL with a real SMTP
server (MailSink): a dry run's forecast measures messages as MessageFactory builds them and
the throughput from the rows sent; a finished run's failed deliveries go once more, to the
readers still there, with the same items, once."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from digest.delivery import send_deliveries
from digest.delivery.forecast import forecast_run, measured_throughput
from digest.delivery.progress import runs_eta, runs_progress
from digest.delivery.send import load_batch
from digest.errors import ValidationError
from digest.mail import MessageFactory
from digest.models import (
    Delivery,
    DeliveryStatus,
    DigestRun,
    RunKind,
    RunStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
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


_made = 0


def sent_run(session, messages: int, first: datetime, every: timedelta) -> int:
    """A finished run of ``messages`` sent rows, the first at ``first``, one every ``every``,
    to readers made for it (written straight: the figures, not the sending, are tested)."""
    global _made
    created = first - timedelta(seconds=1)
    run = DigestRun(kind=RunKind.adhoc, slot_key=f"adhoc:sent-{_made}", cutoff=created,
                    status=RunStatus.done, planned_count=messages, created_at=created,
                    finished_at=first + every * messages)
    session.add(run)
    session.flush()
    # Gone since: the runs a test plans next are for the ``readers`` only.
    subs = [Subscriber(email=f"sent{_made + k}@example.org", created_at=created,
                       status=SubscriberStatus.unsubscribed) for k in range(messages)]
    _made += messages
    session.add_all(subs)
    session.flush()
    session.add_all(Delivery(run_id=run.id, subscriber_id=sub.id, email=sub.email,
                             status=DeliveryStatus.sent, item_count=1, attempts=1,
                             created_at=created, updated_at=created, sent_at=first + every * k)
                    for k, sub in enumerate(subs))
    session.commit()
    return run.id


def test_the_measured_throughput_counts_each_runs_sending_not_the_idle_time_between_runs(
        session, settings):
    """Two runs of 150 messages, each sent in 15 s, 40 minutes apart: 300 messages in 30 s of
    sending (10/s), not 300 in 40 minutes (0.12/s, the figure behind the wild forecasts)."""
    now = utcnow()
    sent_run(session, 150, now - timedelta(minutes=45), timedelta(seconds=0.1))
    sent_run(session, 150, now - timedelta(minutes=5), timedelta(seconds=0.1))
    measured = measured_throughput(session, now)
    assert measured is not None and measured.source == "the runs sending in the last hour"
    assert measured.messages == 300 and measured.seconds == pytest.approx(29.8)
    assert measured.rate == pytest.approx(300 / 29.8)
    # Two hours later the last hour is empty: the last finished runs say the same.
    later = measured_throughput(session, now + timedelta(hours=2))
    assert later is not None and later.rate == measured.rate
    assert later.source == "the last 2 finished run(s)"


def test_a_forecast_uses_no_rate_measured_over_too_few_messages_and_says_which_it_used(
        session, settings, readers):
    """Two messages a minute apart measure nothing: the forecast says so and estimates at
    the rate limit, or gives no estimate without one."""
    now = utcnow()
    sent_run(session, 2, now - timedelta(minutes=3), timedelta(minutes=1))
    assert measured_throughput(session, now) is None
    dry = plan_adhoc_run(session, AdhocQuery(item_ids=(readers[0][0].id,)), dry_run=True)
    session.commit()
    forecast = forecast_run(session, dry.run_id, settings, now=now)
    assert forecast.measured is None and forecast.seconds_at_measured is None
    assert forecast.measured_seen is not None and forecast.measured_seen.messages == 2
    assert forecast.estimate_seconds is None
    lines = forecast.lines()
    assert "at the measured throughput: no measured rate yet, only 2 sent in 1 min 00 s" in (
        lines[-2])
    assert lines[-1].startswith("estimate: none, no rate limit set and no measured rate yet")
    settings.send_rate = 2.0
    limited = forecast_run(session, dry.run_id, settings, now=now)
    assert limited.estimate_seconds == 2.5
    assert limited.lines()[-1].startswith("estimate: 2 s, at the rate limit (DIGEST_SEND_RATE=2/s;")


def test_a_sending_runs_eta_says_whose_rate_it_is_at(session, settings, readers, smtp_sink):
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    first_two = run.pending_ids[:2]
    assert send_deliveries(first_two, settings=settings).sent == 2
    session.execute(update(Delivery).where(Delivery.id.in_(first_two))
                    .values(sent_at=utcnow() - timedelta(seconds=4)))
    session.commit()
    progress = runs_progress(session, [run.run_id])
    eta = runs_eta(session, progress, settings=settings)[run.run_id]
    assert (eta.done, eta.messages, eta.sent) == (2, 5, 2)
    # Two messages are no rate to go by: none measured, no limit set.
    assert eta.rate is None and "ETA unknown: no measured rate yet, only 2 sent" in (
        eta.describe())
    settings.send_rate = 0.5
    limited = runs_eta(session, progress, settings=settings)[run.run_id]
    assert (limited.rate, limited.seconds_left) == (0.5, 6.0)
    assert limited.describe() == "2/5 (40%) at 0.5/s (DIGEST_SEND_RATE), ETA 6 s"


def test_a_run_held_up_by_a_paused_domain_says_so_instead_of_an_eta(
        session, settings, readers, smtp_sink):
    """A policy refusal pauses the domain: its rows are deferred to the pause's end, the run
    cannot finish before, and its progress says why and until when."""
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    smtp_sink.script("reader0@example.org", "554 5.7.1 Service unavailable; client host "
                     "blocked using a block list")
    result = send_deliveries(run.pending_ids, settings=settings)
    assert result.sent == 0 and result.deferred == 5  # the pause holds back the rest
    session.commit()
    progress = runs_progress(session, [run.run_id])
    eta = runs_eta(session, progress, settings=settings)[run.run_id]
    assert eta.stalled and eta.seconds_left is None
    described = eta.describe()
    assert described.startswith("0/5 (0%), not progressing: 5 deferred until ")
    assert described.endswith(" UTC (domain example.org paused)")
    assert "ETA" not in described


def test_the_forecast_of_a_finished_run_says_what_happened(session, settings, readers,
                                                           smtp_sink):
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    smtp_sink.script("reader1@example.org", "552 5.3.4 Message size exceeds fixed limit")
    assert send_deliveries(run.pending_ids, settings=settings).sent == 4
    session.expire_all()
    assert session.get_one(DigestRun, run.run_id).status == RunStatus.done
    forecast = forecast_run(session, run.run_id, settings)
    assert forecast.outcome is not None
    assert (forecast.outcome.sent, forecast.outcome.failed, forecast.outcome.skipped) == (4, 1, 0)
    lines = forecast.lines()
    assert lines[:2] == ["recipients: 5",
                         "finished (done): sent 4, failed 1, skipped 0 (nothing new), "
                         "cancelled 0"]
    assert lines[2].startswith("sending took ") and "skipped)" not in " ".join(lines)


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
