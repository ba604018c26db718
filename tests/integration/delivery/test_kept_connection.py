"""The SMTP connection a worker process keeps across batches, against real local servers
(aiosmtpd: the MailSink and the faulty server of the fault campaign)."""

from __future__ import annotations

import time

import pytest

from digest.delivery import send_deliveries
from digest.delivery.transport import close_kept_connection, kept_transport
from digest.devtools import MailSink
from digest.devtools.faultsmtp import FaultPlan, FaultySMTPServer, read_events
from digest.errors import TemporaryDeliveryError
from digest.selection import plan_scheduled_run
from tests.factories import SENDER, T0, Taxo, make_item, make_subscriber, smtp_settings
from tests.helpers import free_port


@pytest.fixture(autouse=True)
def no_kept_connection_between_tests():
    close_kept_connection()
    yield
    close_kept_connection()


def _eventually(check, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _message(message_id: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: reader@example.org\r\nSubject: test\r\n"
            f"Message-ID: {message_id}\r\n\r\nHello.\r\n").encode()


def test_a_second_batch_reuses_the_kept_connection_and_shutdown_closes_it_with_quit(
        session, smtp_sink, settings):
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for i in range(4):
        make_subscriber(session, f"reader{i}@example.org")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    ids = sorted(run.pending_ids)

    assert send_deliveries(ids[:2], settings=settings).sent == 2
    assert send_deliveries(ids[2:], settings=settings).sent == 2
    assert len(smtp_sink.wait_for(4)) == 4
    assert (smtp_sink.sessions, smtp_sink.quits) == (1, 0)  # one connection, still open

    close_kept_connection()  # what the worker_process_shutdown signal does
    _eventually(lambda: smtp_sink.quits == 1)


def test_a_kept_connection_the_server_closed_is_opened_again_and_the_message_goes_once():
    port = free_port()
    settings = smtp_settings(port)
    with MailSink(port=port) as first:
        with kept_transport(settings) as conn:
            assert conn.send(SENDER, "a@example.org", _message("<a@x>")).code == 250
        assert len(first.wait_for(1)) == 1
    # The server went away (restart, idle timeout) while the connection was kept.
    with MailSink(port=port) as second, kept_transport(settings) as conn:
        assert conn.send(SENDER, "b@example.org", _message("<b@x>")).code == 250
        assert [m.rcpt_tos for m in second.wait_for(1)] == [["b@example.org"]]
        assert second.sessions == 1


def test_a_fresh_connection_that_fails_is_not_tried_again():
    port = free_port()
    with kept_transport(smtp_settings(port)) as conn:
        with pytest.raises(TemporaryDeliveryError, match="cannot connect"):
            conn.send(SENDER, "a@example.org", _message("<a@x>"))


def _ids_for(plan: FaultPlan) -> tuple[str, str]:
    """A Message-ID the server accepts on its first try and one it drops after DATA."""
    accepted = next(f"<ok{i}@x>" for i in range(1000) if plan.data_fault(f"<ok{i}@x>", 1) is None)
    dropped = next(f"<dr{i}@x>" for i in range(1000)
                   if plan.data_fault(f"<dr{i}@x>", 1) == "drop")
    return accepted, dropped


def test_a_connection_dropped_after_data_is_never_sent_again_by_the_transport(tmp_path):
    plan = FaultPlan(seed=3, temp_share=0.0, drop_share=0.5, unknown_share=0.0)
    accepted, dropped = _ids_for(plan)
    record = tmp_path / "events.jsonl"
    with FaultySMTPServer(record, plan) as server:
        settings = smtp_settings(server.port)
        with kept_transport(settings) as conn:
            assert conn.send(SENDER, "a@example.org", _message(accepted)).code == 250
            # The reply to DATA was lost: the server may have the message, so the reused
            # connection is not retried (only a failure at MAIL FROM is).
            with pytest.raises(TemporaryDeliveryError, match="lost at DATA"):
                conn.send(SENDER, "b@example.org", _message(dropped))
    events = [e for e in read_events(record) if e.get("message_id") == dropped]
    assert [(e["event"], e["attempt"]) for e in events] == [("drop", 1)]


def test_other_smtp_settings_get_their_own_connection_and_the_old_one_is_closed():
    with MailSink() as one, MailSink() as two:
        with kept_transport(smtp_settings(one.port)) as conn:
            conn.send(SENDER, "a@example.org", _message("<a@x>"))
        with kept_transport(smtp_settings(two.port)) as conn:
            conn.send(SENDER, "b@example.org", _message("<b@x>"))
        assert (one.sessions, two.sessions) == (1, 1)
        _eventually(lambda: one.quits == 1)
        assert two.quits == 0


def test_an_idle_kept_connection_is_closed_and_the_next_batch_opens_a_new_one():
    with MailSink() as sink:
        settings = smtp_settings(sink.port, smtp_idle_seconds=0.2)
        with kept_transport(settings) as conn:
            conn.send(SENDER, "a@example.org", _message("<a@x>"))
        _eventually(lambda: sink.quits == 1)  # before the server's own timeout would
        with kept_transport(settings) as conn:
            conn.send(SENDER, "b@example.org", _message("<b@x>"))
        assert sink.sessions == 2


def test_an_error_inside_the_batch_closes_the_kept_connection():
    with MailSink() as sink:
        settings = smtp_settings(sink.port)
        with pytest.raises(RuntimeError), kept_transport(settings) as conn:
            conn.send(SENDER, "a@example.org", _message("<a@x>"))
            raise RuntimeError("a crash of our own code mid-batch")
        _eventually(lambda: sink.quits == 1)  # its state is unknown: not handed on
        with kept_transport(settings) as conn:
            conn.send(SENDER, "b@example.org", _message("<b@x>"))
        assert sink.sessions == 2


def test_with_idle_seconds_zero_each_batch_has_its_own_connection():
    with MailSink() as sink:
        settings = smtp_settings(sink.port, smtp_idle_seconds=0)
        for rcpt in ("a@example.org", "b@example.org"):
            with kept_transport(settings) as conn:
                conn.send(SENDER, rcpt, _message(f"<{rcpt}>"))
        assert sink.sessions == 2
        _eventually(lambda: sink.quits == 2)
