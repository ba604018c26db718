"""Issue 15: a server's SIZE limit fails one message, never the batch; the reply to the final
dot gets RFC 5321's long timeout; a stalled connection is closed without waiting on QUIT.
Real SMTP servers (aiosmtpd MailSink), SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import func, select

from digest.delivery import load_batch, send_deliveries
from digest.delivery.send import TOO_LARGE
from digest.delivery.transport import QUIT_TIMEOUT, SMTPTransport
from digest.devtools import MailSink
from digest.errors import PermanentDeliveryError, TemporaryDeliveryError
from digest.mail import MessageFactory
from digest.models import Delivery, DigestRun, Suppression
from digest.selection import plan_scheduled_run
from tests.factories import MESSAGE, SENDER, T0, Taxo, make_item, make_subscriber, smtp_settings


@pytest.fixture
def mixed_sizes(session, settings):
    """Two readers of one item and one reader of forty: the third's digest is far larger."""
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for i in range(40):
        make_item(session, f"Election observation report number {i} " + "x" * 80,
                  themes=[t.elections])
    make_subscriber(session, "small1@example.org", {"themes": [t.policing]})
    make_subscriber(session, "big@example.org", {"themes": [t.elections]})
    make_subscriber(session, "small2@example.org", {"themes": [t.policing]})
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    factory = MessageFactory(settings)
    sizes = {d.email: len(factory.build(d, d.run, items)[1])
             for d, items in load_batch(session, run.pending_ids)}
    assert sizes["big@example.org"] > 2 * sizes["small1@example.org"]
    return run, sizes


def _point_at(settings, monkeypatch, server: MailSink) -> None:
    monkeypatch.setattr(settings, "smtp_host", server.host)
    monkeypatch.setattr(settings, "smtp_port", server.port)


def _rows(session) -> dict[str, Delivery]:
    session.expire_all()
    return {d.email: d for d in session.scalars(select(Delivery))}


def test_a_digest_over_the_size_the_server_announces_fails_alone_and_the_batch_is_sent(
        session, settings, mixed_sizes, monkeypatch):
    run, sizes = mixed_sizes
    limit = (sizes["small1@example.org"] + sizes["big@example.org"]) // 2
    with MailSink(data_size_limit=limit) as server:
        _point_at(settings, monkeypatch, server)
        result = send_deliveries(run.pending_ids, settings=settings)
        assert (result.sent, result.failed, result.deferred) == (2, 1, 0)
        assert sorted(r for m in server.wait_for(2) for r in m.rcpt_tos) == [
            "small1@example.org", "small2@example.org"]
    big = _rows(session)["big@example.org"]
    assert big.status == "failed" and big.smtp_code is None
    assert big.note.startswith(f"{TOO_LARGE}: the message to big@example.org is ")
    assert f"accepts at most {limit / 1000:.0f} KB (SIZE)" in big.note
    assert "shorten the digest or raise the server's limit" in big.note
    # Nobody is suppressed, and the run ends: nothing is left to retry for ever.
    assert session.scalar(select(func.count()).select_from(Suppression)) == 0
    assert session.get(DigestRun, run.run_id).status == "done"


def test_a_552_5_3_4_refusal_fails_that_message_only_and_the_batch_goes_on(
        session, settings, mixed_sizes, monkeypatch):
    run, _ = mixed_sizes
    with MailSink() as server:
        _point_at(settings, monkeypatch, server)
        server.script("big@example.org", "552 5.3.4 Message too big for system")
        result = send_deliveries(run.pending_ids, settings=settings)
        assert (result.sent, result.failed, result.deferred) == (2, 1, 0)
    rows = _rows(session)
    big = rows["big@example.org"]
    assert (big.status, big.smtp_code) == ("failed", 552)
    assert big.smtp_reply == "552 5.3.4 Message too big for system"
    assert big.note.startswith(f"{TOO_LARGE}: ") and "raise the server's size limit" in big.note
    assert {rows[e].status for e in ("small1@example.org", "small2@example.org")} == {"sent"}
    assert session.scalar(select(func.count()).select_from(Suppression)) == 0


def test_the_transport_refuses_a_message_over_the_announced_size_before_mail_from():
    with MailSink(data_size_limit=100) as server:
        with SMTPTransport(smtp_settings(server.port)) as transport:
            with pytest.raises(PermanentDeliveryError, match=r"message too large: .* is \d+ "
                               r"bytes, .* accepts at most 100 bytes \(SIZE\)") as refused:
                transport.send(SENDER, "a@example.org", MESSAGE + b"x" * 200)
            assert refused.value.code is None
            # The connection is still good for the next, smaller message.
            assert transport.send(SENDER, "b@example.org", b"Subject: s\r\n\r\nhi\r\n").code \
                == 250
        assert [m.rcpt_tos for m in server.messages] == [["b@example.org"]]


def test_the_reply_to_the_final_dot_waits_longer_than_other_commands():
    # A server that takes 1.5 s to accept, three times the other commands' timeout.
    with MailSink(data_delay=1.5) as server:
        settings = smtp_settings(server.port, smtp_data_end_timeout=6.0)
        settings.smtp_timeout = 0.5
        with SMTPTransport(settings) as transport:
            assert transport.send(SENDER, "slow@example.org", MESSAGE).code == 250


def test_no_reply_to_the_final_dot_says_the_server_may_have_accepted_it():
    with MailSink(data_delay=3) as server:
        settings = smtp_settings(server.port, smtp_data_end_timeout=0.5)
        settings.smtp_timeout = 0.5
        with SMTPTransport(settings) as transport, pytest.raises(
                TemporaryDeliveryError, match="lost at DATA after the end of the message for "
                r"slow@example.org: no reply within 0.5 s; the server may have accepted it"):
            transport.send(SENDER, "slow@example.org", MESSAGE)


class _Interrupted(BaseException):
    """What a task's time limit raises inside a blocking read."""


def test_a_transaction_interrupted_mid_wait_is_closed_at_once_without_waiting_on_quit():
    interrupted_at: list[float] = []

    def interrupt(signum, frame):
        interrupted_at.append(time.monotonic())
        raise _Interrupted

    with MailSink(data_delay=10) as server:
        settings = smtp_settings(server.port, smtp_data_end_timeout=30.0)
        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            with pytest.raises(_Interrupted), SMTPTransport(settings) as transport:
                transport.send(SENDER, "stalled@example.org", MESSAGE)
            # Leaving ``with`` closed it without a QUIT, which the stalled server would make
            # wait (a connection in an unknown state is only closed).
            assert time.monotonic() - interrupted_at[0] < QUIT_TIMEOUT / 2
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert server.quits == 0 and server.messages == []


def test_a_kept_connection_asks_the_size_again_before_refusing_a_large_message(tmp_path):
    """Found by the fault campaign: a connection kept from a batch sent while the server
    announced SIZE 30 KB refused a 54 KB digest after the limit was lifted, failing the reader
    for good on what the server said an hour before."""
    from digest.devtools.faultsmtp import FaultPlan, FaultySMTPServer, read_events

    with FaultySMTPServer(tmp_path / "events.jsonl", FaultPlan(1, 0.0, 0.0, 0.0)) as server:
        server.set_size_limit(1000)
        with SMTPTransport(smtp_settings(server.port)) as transport:
            assert transport.send(SENDER, "a@example.org", MESSAGE).code == 250
            server.set_size_limit(0)  # lifted while the connection stays open
            big = MESSAGE + b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n" * 100
            assert transport.send(SENDER, "b@example.org", big).code == 250
            server.set_size_limit(1000)  # and a limit set since is the server's to refuse
            with pytest.raises(PermanentDeliveryError, match="552 5.3.4"):
                transport.send(SENDER, "c@example.org", big)
        assert sorted(e["rcpt"] for e in read_events(server.record)
                      if e["event"] == "accepted") == ["a@example.org", "b@example.org"]
