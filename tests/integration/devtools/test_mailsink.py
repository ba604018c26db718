"""The local SMTP server, driven by the standard library's smtplib client."""

from __future__ import annotations

import re
import smtplib
import threading

import pytest

from digest.devtools import MailSink
from digest.errors import ValidationError
from digest.settings import get_settings

MESSAGE = (
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"\r\n.leading dot\r\nbody\r\n"
)


@pytest.fixture
def sink(tmp_path):
    with MailSink(outbox=tmp_path / "outbox") as running:
        yield running


def client(sink: MailSink) -> smtplib.SMTP:
    conn = smtplib.SMTP(sink.host, sink.port, timeout=5)
    conn.ehlo()
    return conn


def test_port_zero_picks_a_free_port_and_two_sinks_run_side_by_side():
    with MailSink() as one, MailSink() as two:
        assert one.port != 0 and two.port != 0 and one.port != two.port
        for sink in (one, two):
            with client(sink) as conn:
                conn.sendmail("a@example.org", ["b@example.org"], MESSAGE)
            assert len(sink.wait_for(1)) == 1


def test_messages_are_kept_in_memory_and_written_to_the_outbox_exactly_as_received(sink, tmp_path):
    with client(sink) as conn:
        conn.sendmail("a@example.org", ["b@example.org", "c@example.org"], MESSAGE)
        conn.sendmail("a@example.org", ["d@example.org"], MESSAGE)
    first, second = sink.wait_for(2)
    assert first.mail_from == "a@example.org"
    assert first.rcpt_tos == ["b@example.org", "c@example.org"]
    assert first.data == MESSAGE  # CRLF kept, dot-stuffing undone
    assert first.path.parent == tmp_path / "outbox"
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-1\.eml", first.path.name)
    assert second.path.name.endswith("-2.eml")
    assert first.path.read_bytes() == MESSAGE
    assert first.parsed()["Subject"] == "Grüße"


def test_without_an_outbox_nothing_is_written(tmp_path):
    with MailSink() as sink, client(sink) as conn:
        conn.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        assert sink.wait_for(1)[0].path is None
    assert list(tmp_path.iterdir()) == []


def test_messages_over_one_megabyte_are_accepted(sink):
    big = MESSAGE + (b"z" * 990 + b"\r\n") * 2000
    with client(sink) as conn:
        assert conn.has_extn("size") and int(conn.esmtp_features["size"]) > len(big)
        conn.sendmail("a@example.org", ["b@example.org"], big)
    assert sink.wait_for(1)[0].data == big


def test_smtputf8_is_not_offered_when_turned_off():
    with MailSink(smtputf8=False) as sink, client(sink) as conn:
        assert not conn.has_extn("smtputf8")
        # smtplib refuses to send the option itself, so say it by hand.
        reply = conn.docmd("MAIL FROM:<a@example.org> SMTPUTF8")
        assert reply == (501, b"Error: SMTPUTF8 disabled")


def test_scripted_replies_are_used_one_per_attempt_then_normal_acceptance(sink):
    sink.script("B@example.org", "451 4.3.0 Try again later", "550 5.1.1 No such user")
    with client(sink) as conn:
        replies = []
        for _ in range(3):
            conn.mail("a@example.org")
            replies.append(conn.rcpt("b@example.org"))
            conn.rset()
    assert replies == [
        (451, b"4.3.0 Try again later"),
        (550, b"5.1.1 No such user"),
        (250, b"2.1.5 OK"),
    ]


def test_script_only_affects_its_recipient(sink):
    sink.script("b@example.org", "550 5.1.1 No such user")
    with client(sink) as conn:
        conn.mail("a@example.org")
        assert conn.rcpt("c@example.org")[0] == 250


def test_drop_closes_the_connection_without_a_reply(sink):
    sink.script("b@example.org", "drop")
    conn = client(sink)
    conn.mail("a@example.org")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        conn.rcpt("b@example.org")
    conn.close()
    with client(sink) as again:  # the server itself keeps running
        again.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert len(sink.wait_for(1)) == 1


def test_badly_formed_scripted_replies_are_refused(sink):
    with pytest.raises(ValidationError, match="must be 'drop' or start with an SMTP code"):
        sink.script("b@example.org", "please fail")


def test_sessions_and_quits_are_counted(sink):
    for _ in range(2):
        with client(sink) as conn:
            conn.noop()
    assert sink.sessions == 2
    assert sink.quits == 2


def test_wait_for_returns_once_enough_arrived_and_times_out_otherwise(sink):
    def send_later():
        with client(sink) as conn:
            conn.sendmail("a@example.org", ["b@example.org"], MESSAGE)

    thread = threading.Thread(target=send_later)
    thread.start()
    assert len(sink.wait_for(1, timeout=10)) == 1
    thread.join()
    with pytest.raises(TimeoutError, match="received 1 of 2 messages"):
        sink.wait_for(2, timeout=0.2)


def test_clear_forgets_received_messages(sink):
    with client(sink) as conn:
        conn.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    sink.wait_for(1)
    sink.clear()
    assert sink.messages == []


def test_starting_twice_is_refused(sink):
    with pytest.raises(RuntimeError, match="already running"):
        sink.start()


# --- the smtp_sink fixture survives whichever order fixtures are created in -----------


def test_smtp_sink_fixture_after_settings_updates_the_settings_object(sqlite_settings, smtp_sink):
    assert (sqlite_settings.smtp_host, sqlite_settings.smtp_port) == ("127.0.0.1", smtp_sink.port)
    assert get_settings().smtp_port == smtp_sink.port
    assert get_settings().database_url == sqlite_settings.database_url


def test_smtp_sink_fixture_before_settings_keeps_its_environment(smtp_sink, sqlite_settings):
    assert sqlite_settings.smtp_port == smtp_sink.port
    assert get_settings().smtp_port == smtp_sink.port


def test_smtp_sink_fixture_alone_points_settings_at_the_sink_and_its_outbox(smtp_sink, tmp_path):
    assert get_settings().smtp_port == smtp_sink.port
    assert smtp_sink.outbox == tmp_path / "outbox"


# --- SMTPUTF8 (RFC 6531) -----------------------------------------------------------------

UTF8_MESSAGE = (
    "From: a@example.org\r\nTo: =?utf-8?q?Zo=C3=AB?= <zoë@example.org>\r\nSubject: hi\r\n"
    "\r\nbody\r\n"
).encode()


def test_smtputf8_is_offered_by_default_and_a_utf8_envelope_and_header_arrive_intact(sink):
    with client(sink) as conn:
        assert conn.has_extn("smtputf8") and conn.has_extn("8bitmime")
        conn.sendmail("a@example.org", ["zoë@example.org"], UTF8_MESSAGE,
                      mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    [received] = sink.wait_for(1)
    assert received.rcpt_tos == ["zoë@example.org"]
    assert received.data == UTF8_MESSAGE
    assert received.smtputf8
    assert received.mail_options == [f"SIZE={len(UTF8_MESSAGE)}", "SMTPUTF8", "BODY=8BITMIME"]
    [to] = received.parsed()["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Zoë", "zoë@example.org")


def test_mail_options_are_recorded_and_empty_for_a_plain_ascii_transaction(sink):
    with client(sink) as conn:
        conn.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        conn.sendmail("a@example.org", ["c@example.org"], MESSAGE, mail_options=["BODY=8BITMIME"])
    plain, eight_bit = sink.wait_for(2)
    size = f"SIZE={len(MESSAGE)}"  # smtplib's sendmail states the size itself
    assert plain.mail_options == [size] and not plain.smtputf8
    assert eight_bit.mail_options == [size, "BODY=8BITMIME"] and not eight_bit.smtputf8
    assert plain.parsed()["Subject"] == "Grüße"


def test_a_store_override_taking_keyword_details_still_receives_every_message():
    # bench/pipeline.py's counting sink overrides _store with **details: new keywords
    # must reach it as keywords, never as extra positional arguments.
    class Counting(MailSink):
        def _store(self, mail_from, rcpt_tos, data, **details):
            self.details = details
            return 7

    with Counting() as sink, client(sink) as conn:
        conn.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert sink.details["mail_options"] == [f"SIZE={len(MESSAGE)}"]
    assert sink.details["tls"] is False
