"""Delivery state machine against a real SMTP server (aiosmtpd) on SQLite and PostgreSQL."""

from __future__ import annotations

import email
from datetime import timedelta
from email import policy

import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

from digest.delivery import run_progress, send_deliveries
from digest.devtools import InMemoryTransport
from digest.errors import ConfigError, PermanentDeliveryError, SendSetupError
from digest.models import (
    Delivery,
    DigestRun,
    DomainPause,
    Subscriber,
    Suppression,
    SuppressionReason,
    utcnow,
)
from digest.records import (
    due_for_retry,
    pause_domain,
    recover_expired_leases,
    requeue_failed,
    resume_domain,
)
from digest.selection import plan_scheduled_run
from digest.subscribers import unsubscribe
from tests.factories import T0, Taxo, make_item, make_subscriber


@pytest.fixture
def planned(session, smtp_sink, settings):
    """Two subscribers, one policing item each would get; a weekly run planned."""
    t = Taxo(session)
    make_item(session, "<script>alert(1)</script>Police & courts", themes=[t.policing])
    make_subscriber(session, "one@example.org", {"themes": [t.policing]})
    make_subscriber(session, "two@example.org")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    return run


def _rows(session):
    session.expire_all()
    return {d.email: d for d in session.scalars(select(Delivery))}


def test_sent_messages_are_well_formed_and_logged(session, smtp_sink, planned, settings):
    result = send_deliveries(planned.pending_ids, settings=settings)
    assert (result.claimed, result.sent) == (2, 2)
    rows = _rows(session)
    for received in smtp_sink.wait_for(2):
        raw = received.data
        assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line ends only
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
        msg = email.message_from_bytes(raw, policy=policy.default)
        assert not msg.defects
        row = rows[msg["To"]]
        assert row.status == "sent" and row.smtp_code == 250 and row.message_id == msg["Message-ID"]
        assert msg["Message-ID"].endswith("@newsroom.example.org>")
        for header in ("From", "To", "Subject", "Date", "List-Id", "List-Unsubscribe"):
            assert msg[header], header
        html = msg.get_body(("html",)).get_content()
        text = msg.get_body(("plain",)).get_content()
        assert "<script>" not in html and "Police &amp; courts" in html
        assert "Police & courts" in text
    assert session.get(DigestRun, planned.run_id).status == "done"


def test_running_the_same_batch_twice_sends_each_message_once(session, smtp_sink, planned, settings):
    send_deliveries(planned.pending_ids, settings=settings)
    again = send_deliveries(planned.pending_ids, settings=settings)
    assert again.claimed == 0
    assert len(smtp_sink.wait_for(2)) == 2


def test_4xx_is_deferred_with_backoff_then_sent_when_due(session, smtp_sink, planned, settings):
    smtp_sink.script("one@example.org", "451 4.7.1 Greylisted, come back later")
    first = send_deliveries(planned.pending_ids, settings=settings)
    row = _rows(session)["one@example.org"]
    assert first.outcomes[row.id] == "deferred"
    assert row.status == "deferred" and row.smtp_code == 451 and "Greylisted" in row.smtp_reply
    # The server's words alone in smtp_reply; ours (which step, which server) in the note.
    assert row.smtp_reply.startswith("451 ") and "at RCPT TO: 451 " in row.note
    assert row.next_attempt_at > utcnow()
    # Not due yet: nothing is claimed.
    assert send_deliveries([row.id], settings=settings).claimed == 0
    later = row.next_attempt_at + timedelta(seconds=1)
    assert send_deliveries([row.id], now=later, settings=settings).sent == 1
    row = _rows(session)["one@example.org"]
    assert row.status == "sent" and row.attempts == 2


def test_5xx_fails_with_its_code_and_unknown_user_is_suppressed(session, smtp_sink, planned, settings):
    smtp_sink.script("one@example.org", "550 5.1.1 <one@example.org>: user unknown")
    smtp_sink.script("two@example.org", "552 5.3.4 Message size exceeds fixed limit")
    send_deliveries(planned.pending_ids, settings=settings)
    rows = _rows(session)
    assert rows["one@example.org"].status == "failed" and rows["one@example.org"].smtp_code == 550
    assert rows["two@example.org"].status == "failed" and rows["two@example.org"].smtp_code == 552
    # 5.1.x is the address's fault; other 5xx fail without suppressing (5.7.x and content
    # refusals pause the domain instead: see the section at the end).
    assert session.scalars(select(Suppression.email)).all() == ["one@example.org"]
    statuses = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
    assert statuses == {"one@example.org": "suppressed", "two@example.org": "active"}
    assert smtp_sink.messages == []


def test_dropped_connection_is_deferred_and_the_rest_of_the_batch_still_goes(session, smtp_sink, planned, settings):
    smtp_sink.script("one@example.org", "drop")
    result = send_deliveries(planned.pending_ids, settings=settings)
    rows = _rows(session)
    assert rows["one@example.org"].status == "deferred" and rows["one@example.org"].smtp_code is None
    assert rows["two@example.org"].status == "sent"
    assert result.deferred == 1 and result.sent == 1


def test_connection_refused_defers_everything_and_loses_nothing(session, settings, planned, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setattr(settings, "smtp_port", closed_port)
    with pytest.raises(SendSetupError, match="2 deliveries put back.*cannot connect"):
        send_deliveries(planned.pending_ids, settings=settings)
    rows = _rows(session).values()
    assert {d.status for d in rows} == {"deferred"}
    # Our server being down is nobody's reader's fault: no attempt is used up.
    assert {d.attempts for d in rows} == {0}


def test_a_refused_login_puts_the_batch_back_with_the_reason_and_raises(
        session, settings, planned, monkeypatch, tls_files, server_tls_context):
    from digest.devtools import MailSink

    with MailSink(tls_context=server_tls_context, logins={"digest": "s3cret"}) as tls_sink:
        for name, value in {"smtp_port": tls_sink.port, "smtp_starttls": True,
                            "smtp_tls_ca_file": tls_files["ca"], "smtp_user": "digest",
                            "smtp_password": SecretStr("wrong")}.items():
            monkeypatch.setattr(settings, name, value)
        with pytest.raises(ConfigError, match="refused the login"):
            send_deliveries(planned.pending_ids, settings=settings)
        rows = _rows(session)
        # Not stuck in 'sending' until the lease lapses: back in the queue, reason logged.
        assert {d.status for d in rows.values()} == {"deferred"}
        assert all("refused the login of 'digest'" in d.note for d in rows.values())
        assert all(d.next_attempt_at > utcnow() for d in rows.values())
        # Once the operator fixes the password, the retry sends them.
        monkeypatch.setattr(settings, "smtp_password", SecretStr("s3cret"))
        again = send_deliveries(planned.pending_ids, now=utcnow() + timedelta(hours=1),
                                settings=settings)
        assert again.sent == 2
        assert sorted(m.rcpt_tos[0] for m in tls_sink.wait_for(2)) == [
            "one@example.org", "two@example.org"]
        assert all(m.tls and m.login == "digest" for m in tls_sink.messages)


def test_gives_up_after_the_maximum_attempts(session, smtp_sink, planned, settings, monkeypatch):
    monkeypatch.setattr(settings, "max_attempts", 2)
    row_id = _rows(session)["one@example.org"].id
    smtp_sink.script("one@example.org", "421 4.3.2 busy", "421 4.3.2 busy")
    send_deliveries([row_id], settings=settings)
    send_deliveries([row_id], now=utcnow() + timedelta(days=1), settings=settings)
    row = _rows(session)["one@example.org"]
    assert row.status == "failed" and row.note.startswith("gave up after 2 attempts: ")
    assert row.smtp_reply == "421 4.3.2 busy"  # the server's last answer, as it said it


def test_unsubscribing_after_planning_cancels_the_unsent_digest(session, smtp_sink, planned, settings):
    sub = session.scalars(select(Subscriber).where(Subscriber.email == "one@example.org")).one()
    unsubscribe(session, sub)
    session.commit()
    send_deliveries(planned.pending_ids, settings=settings)
    rows = _rows(session)
    assert rows["one@example.org"].status == "cancelled"
    assert [m.rcpt_tos for m in smtp_sink.wait_for(1)] == [["two@example.org"]]


def test_suppression_is_checked_again_at_send_time(session, smtp_sink, planned, settings):
    # Suppressed behind the subscriber's back (row only), after planning.
    session.add(Suppression(email="two@example.org", reason=SuppressionReason.complaint, detail="", created_at=utcnow()))
    session.commit()
    send_deliveries(planned.pending_ids, settings=settings)
    assert _rows(session)["two@example.org"].status == "cancelled"
    assert [m.rcpt_tos for m in smtp_sink.wait_for(1)] == [["one@example.org"]]


def test_address_with_a_line_break_is_refused_and_nothing_is_sent(session, smtp_sink, planned, settings):
    row = _rows(session)["one@example.org"]
    # Planted directly: validation never lets such an address in through the front door.
    session.execute(update(Delivery).where(Delivery.id == row.id)
                    .values(email="one@example.org\r\nBcc: victim@example.org"))
    session.commit()
    send_deliveries(planned.pending_ids, settings=settings)
    row = _rows(session)["one@example.org\r\nBcc: victim@example.org"]
    assert row.status == "failed" and "line break" in row.note and row.smtp_reply is None
    assert [m.rcpt_tos for m in smtp_sink.wait_for(1)] == [["two@example.org"]]


def test_expired_lease_goes_back_to_deferred_and_admin_can_requeue_failures(session, planned, settings):
    transport = InMemoryTransport()
    transport.script("one@example.org", "550 5.2.2 mailbox full")
    send_deliveries(planned.pending_ids, transport=transport, settings=settings)
    rows = _rows(session)
    # A later claim of "two" (another token, nothing journalled for it) whose worker died.
    session.execute(update(Delivery).where(Delivery.id == rows["two@example.org"].id).values(
        status="sending", lease_until=utcnow() - timedelta(seconds=1), claim_token="died"))
    session.commit()
    assert recover_expired_leases(session) == [rows["two@example.org"].id]
    assert requeue_failed(session, [rows["one@example.org"].id]) == 1
    session.commit()
    assert {d.status for d in _rows(session).values()} == {"deferred"}
    assert run_progress(session, planned.run_id) == {"deferred": 2, "total": 2}


def test_a_dry_runs_rows_are_never_sent(session, smtp_sink, settings):
    from digest.selection import AdhocQuery, plan_adhoc_run

    t = Taxo(session)
    make_item(session, "p", themes=[t.policing])
    make_subscriber(session, "dry@example.org", {"themes": [t.policing]})
    session.commit()
    planned = plan_adhoc_run(session, AdhocQuery(themes=("Policing",)), dry_run=True)
    session.commit()
    assert planned.planned == 1
    assert send_deliveries(planned.pending_ids, settings=settings).claimed == 0
    assert session.get(DigestRun, planned.run_id).status == "done"
    assert smtp_sink.messages == []
    # Progress and the log say what would have gone out, not that something is waiting.
    session.expire_all()
    assert run_progress(session, planned.run_id) == {"dry_run": 1, "total": 1}
    row = session.get(Delivery, planned.pending_ids[0])
    assert (row.status, row.item_count, row.attempts) == ("dry_run", 1, 0)
    # Nor will the retry or lease-recovery sweeps ever pick it up.
    later = utcnow() + timedelta(days=1)
    assert recover_expired_leases(session, now=later) == []
    assert due_for_retry(session, now=later) == []
    assert requeue_failed(session, planned.pending_ids) == 0


# --- policy refusals (5.7.x) pause the recipient's domain --------------------------------------

BLOCKED = "550 5.7.1 Service unavailable, client host [192.0.2.10] blocked using Spamhaus"


@pytest.fixture
def mixed(session, smtp_sink, settings):
    """Three subscribers at blocked.example, one at open.example; a weekly run planned."""
    t = Taxo(session)
    make_item(session, "Police reform", themes=[t.policing])
    for address in ("a1@blocked.example", "a2@blocked.example", "b1@open.example",
                    "a3@blocked.example"):
        make_subscriber(session, address)
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    return run


def _blocked(session) -> list[Delivery]:
    """The blocked.example rows in the order a batch sends them (by id)."""
    return sorted((d for d in _rows(session).values() if d.email.endswith("@blocked.example")),
                  key=lambda d: d.id)


def _pause(session) -> DomainPause | None:
    session.expire_all()
    return session.get(DomainPause, "blocked.example")


def test_a_policy_refusal_defers_the_row_and_pauses_its_domain_for_the_rest_of_the_batch(
        session, smtp_sink, mixed, settings):
    first, *rest = _blocked(session)
    smtp_sink.script(first.email, BLOCKED)
    before = utcnow()
    result = send_deliveries(mixed.pending_ids, settings=settings)
    after = utcnow()

    pause = _pause(session)
    assert pause is not None and pause.delivery_id == first.id and pause.reason == BLOCKED
    assert before + timedelta(minutes=60) <= pause.paused_until <= after + timedelta(minutes=60)
    rows = _rows(session)
    refused = rows[first.email]
    assert (refused.status, refused.smtp_code, refused.attempts) == ("deferred", 550, 1)
    assert refused.smtp_reply == BLOCKED and refused.next_attempt_at == pause.paused_until
    assert f"at RCPT TO: {BLOCKED}" in refused.note
    # The next rows of that domain never reached the server, and it did not cost them a try.
    until = f"{pause.paused_until:%Y-%m-%dT%H:%M:%SZ}"
    for d in rest:
        row = rows[d.email]
        assert (row.status, row.attempts, row.next_attempt_at) == (
            "deferred", 0, pause.paused_until)
        assert row.smtp_reply is None  # never asked
        assert row.note == (f"not sent: blocked.example is paused until {until} after it "
                                  f"refused us: {BLOCKED}")
    # Another domain in the same batch still gets its mail.
    assert rows["b1@open.example"].status == "sent"
    assert [m.rcpt_tos for m in smtp_sink.wait_for(1)] == [["b1@open.example"]]
    assert (result.claimed, result.deferred, result.sent, result.failed) == (4, 3, 1, 0)
    # A policy refusal is about us, not the address: nothing is suppressed.
    assert session.scalars(select(Suppression)).all() == []
    assert set(session.scalars(select(Subscriber.status))) == {"active"}


def test_a_later_batch_during_the_pause_does_not_contact_the_server_and_all_go_once_after(
        session, smtp_sink, mixed, settings):
    first, *rest = _blocked(session)
    smtp_sink.script(first.email, BLOCKED)
    send_deliveries([first.id, _rows(session)["b1@open.example"].id], settings=settings)
    pause = _pause(session)
    connections = smtp_sink.sessions
    assert connections == 1

    # Rows of the domain not tried yet, in a batch of their own ten minutes later: the pause
    # is read from the database, and the server is not even connected to.
    result = send_deliveries([d.id for d in rest], now=utcnow() + timedelta(minutes=10), settings=settings)
    assert (result.claimed, result.deferred) == (2, 2)
    assert smtp_sink.sessions == connections
    rows = _rows(session)
    for d in rest:
        assert (rows[d.email].status, rows[d.email].attempts) == ("deferred", 0)
        assert rows[d.email].note.startswith("not sent: blocked.example is paused until ")

    # Nothing is due before the pause ends; at its end all three are, and go out once.
    ids = [first.id, *(d.id for d in rest)]
    assert due_for_retry(session, now=pause.paused_until - timedelta(seconds=1)) == []
    assert due_for_retry(session, now=pause.paused_until) == ids
    assert send_deliveries(ids, now=pause.paused_until - timedelta(seconds=1), settings=settings).claimed == 0
    after = send_deliveries(ids, now=pause.paused_until + timedelta(seconds=1), settings=settings)
    assert (after.claimed, after.sent) == (3, 3)
    received = smtp_sink.wait_for(4)
    assert sorted(m.rcpt_tos[0] for m in received) == [
        "a1@blocked.example", "a2@blocked.example", "a3@blocked.example", "b1@open.example"]
    rows = _rows(session)
    assert {rows[d.email].status for d in (first, *rest)} == {"sent"}
    assert [rows[d.email].attempts for d in (first, *rest)] == [2, 1, 1]
    assert session.get(DigestRun, mixed.run_id).status == "done"
    assert send_deliveries(ids, now=pause.paused_until + timedelta(hours=1), settings=settings).claimed == 0


def test_policy_refusals_count_toward_max_attempts_but_paused_skips_never_do(
        session, smtp_sink, mixed, settings, monkeypatch):
    monkeypatch.setattr(settings, "max_attempts", 2)
    first, *rest = _blocked(session)
    ids = [first.id, *(d.id for d in rest)]
    smtp_sink.script(first.email, BLOCKED, BLOCKED)
    send_deliveries(ids, settings=settings)
    first_end = _pause(session).paused_until

    # The pause ends and the receiver refuses again: the refused row has used both attempts;
    # the pause starts again and the others are skipped a second time.
    send_deliveries(ids, now=first_end + timedelta(seconds=1), settings=settings)
    pause = _pause(session)
    assert first_end + timedelta(minutes=60, seconds=1) <= pause.paused_until
    assert pause.paused_until <= first_end + timedelta(minutes=61)
    rows = _rows(session)
    assert rows[first.email].status == "failed"
    assert rows[first.email].note.startswith("gave up after 2 attempts: ")
    assert rows[first.email].smtp_reply == BLOCKED
    assert [(rows[d.email].status, rows[d.email].attempts) for d in rest] == [("deferred", 0)] * 2

    # Skipped twice, they still have every attempt: after the second pause they go out.
    result = send_deliveries(ids, now=pause.paused_until + timedelta(seconds=1), settings=settings)
    assert (result.claimed, result.sent) == (2, 2)
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.wait_for(2)) == [
        "a2@blocked.example", "a3@blocked.example"]
    assert session.scalars(select(Suppression)).all() == []


def test_unknown_user_still_suppresses_and_pauses_nothing(session, smtp_sink, mixed, settings):
    first, *rest = _blocked(session)
    smtp_sink.script(first.email, "550 5.1.1 <a1@blocked.example>: Recipient address rejected")
    result = send_deliveries(mixed.pending_ids, settings=settings)
    assert (result.failed, result.sent) == (1, 3)
    assert _pause(session) is None
    assert session.scalars(select(Suppression.email)).all() == [first.email]
    assert _rows(session)[first.email].status == "failed"


def test_pausing_a_paused_domain_extends_it_and_never_shortens_it(session):
    t = utcnow()
    hour = timedelta(hours=1)
    assert pause_domain(session, "Blocked.Example", t + hour, "550 5.7.1 first", now=t) == t + hour
    assert pause_domain(session, "blocked.example", t + hour / 2, "550 5.7.1 second",
                        now=t) == t + hour
    assert pause_domain(session, "blocked.example", t + 2 * hour, "550 5.7.1 third",
                        now=t) == t + 2 * hour
    session.commit()
    rows = [(p.domain, p.paused_until, p.reason, p.created_at)
            for p in session.scalars(select(DomainPause))]
    assert rows == [("blocked.example", t + 2 * hour, "550 5.7.1 third", t)]
    # Once it has run out, a new refusal is a new pause, starting then.
    later = t + 3 * hour
    pause_domain(session, "blocked.example", later + hour, "550 5.7.1 again", now=later)
    session.commit()
    pause = _pause(session)
    assert (pause.paused_until, pause.created_at) == (later + hour, later)
    # An internationalised domain is found in either of its forms.
    pause_domain(session, "bücher.example", t + hour, "550 5.7.1 blocked", now=t)
    session.commit()
    assert resume_domain(session, "XN--BCHER-KVA.example") == ("bücher.example", 0)


def test_resuming_a_domain_lifts_the_pause_and_its_waiting_deliveries_go_at_once(
        session, smtp_sink, mixed, settings):
    first, *rest = _blocked(session)
    smtp_sink.script(first.email, BLOCKED)
    send_deliveries(mixed.pending_ids, settings=settings)
    assert resume_domain(session, "open.example") is None
    assert resume_domain(session, " Blocked.Example ") == ("blocked.example", 3)
    session.commit()
    assert _pause(session) is None
    due = due_for_retry(session, now=utcnow())
    assert due == [first.id, *(d.id for d in rest)]
    assert send_deliveries(due, settings=settings).sent == 3
    assert len(smtp_sink.wait_for(4)) == 4


# --- SMTPUTF8: a subscriber with a non-ASCII local part ----------------------------------


@pytest.fixture
def utf8_planned(session, smtp_sink, monkeypatch, settings):
    """DIGEST_SMTPUTF8 on; Zoë (stored in canonical form) and Ann get a weekly digest."""
    from digest.subscribers import canonical_email

    monkeypatch.setattr(settings, "smtputf8", True)
    t = Taxo(session)
    make_item(session, "Police & courts", themes=[t.policing])
    zoe = canonical_email("Zoe\u0308@Example.ORG", smtputf8=settings.smtputf8)
    make_subscriber(session, zoe)
    make_subscriber(session, "ann@example.org")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    assert zoe == "zoë@example.org" and len(run.pending_ids) == 2
    return run


def test_a_digest_to_a_utf8_address_goes_out_with_smtputf8_and_is_logged_sent(
        session, smtp_sink, utf8_planned, settings):
    result = send_deliveries(utf8_planned.pending_ids, settings=settings)
    assert result.sent == 2
    received = {tuple(m.rcpt_tos): m for m in smtp_sink.wait_for(2)}
    zoe, ann = received[("zoë@example.org",)], received[("ann@example.org",)]
    assert zoe.smtputf8 and not ann.smtputf8
    assert zoe.mail_from.startswith("bounces+") and zoe.mail_from.isascii()
    assert zoe.parsed()["To"].addresses[0].addr_spec == "zoë@example.org"
    assert ann.data.isascii() and ann.parsed()["To"] == "ann@example.org"
    rows = _rows(session)
    assert rows["zoë@example.org"].status == "sent" and rows["zoë@example.org"].smtp_code == 250
    assert rows["zoë@example.org"].message_id == zoe.parsed()["Message-ID"]


def test_a_server_without_smtputf8_fails_the_utf8_address_only_and_suppresses_nothing(
        session, utf8_planned, monkeypatch, settings):
    from digest.devtools import MailSink

    with MailSink(smtputf8=False) as plain_sink:
        monkeypatch.setattr(settings, "smtp_port", plain_sink.port)
        result = send_deliveries(utf8_planned.pending_ids, settings=settings)
        assert (result.sent, result.failed) == (1, 1)
        assert [m.rcpt_tos for m in plain_sink.wait_for(1)] == [["ann@example.org"]]
        assert plain_sink.sessions == 1  # the refusal did not cost the connection
    rows = _rows(session)
    zoe = rows["zoë@example.org"]
    assert zoe.status == "failed" and zoe.smtp_code is None
    assert "does not offer SMTPUTF8, which the address zoë@example.org needs" in zoe.note
    assert rows["ann@example.org"].status == "sent"
    # The address is fine; the server is not: nothing is suppressed.
    assert session.scalars(select(Suppression.email)).all() == []


def test_a_5_1_x_refusal_of_our_sender_at_mail_from_suppresses_no_reader(session, planned, settings):
    class SenderRefused:
        """A server that refuses our envelope sender (5.1.8: bad sender domain)."""

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return None

        def send(self, mail_from, rcpt, data):
            raise PermanentDeliveryError(
                f"SMTP server 10.5.1.1:25 refused {rcpt} at MAIL FROM: 553 5.1.8 Sender domain "
                "does not exist", 553, step="MAIL FROM", reply="553 5.1.8 Sender domain does not exist")

    # A refusal at MAIL FROM is about us: the batch goes back, the operator is told.
    with pytest.raises(SendSetupError, match="MAIL FROM: 553 5.1.8"):
        send_deliveries(planned.pending_ids, transport=SenderRefused(), settings=settings)
    assert session.scalars(select(Suppression.email)).all() == []
    rows = _rows(session).values()
    assert {d.status for d in rows} == {"deferred"} and {d.attempts for d in rows} == {0}
    assert all("put back" in d.note and "5.1.8" in d.note for d in rows)


def test_load_batch_reads_each_reader_as_the_orm_subscriber_gives_it(session, settings):
    from digest.delivery import load_batch
    from digest.mail.compose import Reader

    t = Taxo(session)
    make_item(session, "Police news", themes=[t.policing, t.elections], locations=[t.serbia])
    # Two filters, names repeated across them and out of alphabetical order between them.
    make_subscriber(session, "many@example.org",
                    {"themes": [t.policing, t.elections], "locations": [t.serbia]},
                    {"themes": [t.gender, t.policing], "locations": [t.bishkek, t.montenegro]},
                    tz="Europe/Belgrade")
    make_subscriber(session, "none@example.org")
    session.commit()
    run = plan_scheduled_run(session, "weekly", now=T0, everyone=True, settings=settings)
    session.commit()
    loaded = load_batch(session, sorted(run.pending_ids))
    assert len(loaded) == 2
    # The objects make_subscriber built keep their lists in insertion order until reloaded
    # (the session does not expire on commit); the ORM's reading is the reloaded one.
    session.expire_all()
    for delivery, _items in loaded:
        row = session.get(Delivery, delivery.id)
        assert delivery.subscriber == Reader.of(row.subscriber)
        assert (delivery.email, delivery.run.kind, delivery.attempts) == (
            row.email, row.run.kind, row.attempts)
    many = next(d for d, _ in loaded if d.email == "many@example.org")
    assert many.subscriber.themes == ("Elections", "Policing", "Gender equality")
    assert many.subscriber.locations == (
        "OSCE Mission to Serbia", "OSCE Mission to Montenegro", "OSCE Programme Office in Bishkek")
