"""The SMTP transport against a real local SMTP server (aiosmtpd MailSink)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import dkim
import pytest

from digest.delivery import SendResult, SMTPTransport, transport_from_settings
from digest.devtools import MailSink
from digest.errors import (
    ConfigError,
    HeaderInjectionError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    ValidationError,
)
from digest.mail import DkimSigner, build_message, make_message_id
from digest.settings import Settings, get_settings
from tests.factories import MESSAGE, SENDER, smtp_settings


@pytest.fixture
def sink():
    with MailSink() as running:
        yield running


@pytest.fixture
def transport(sink):
    with SMTPTransport(smtp_settings(sink.port)) as t:
        yield t


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_successful_send_returns_250_and_the_data_reply_and_the_sink_has_the_bytes(
    sink, transport
):
    result = transport.send(SENDER, "reader@example.org", MESSAGE)
    assert isinstance(result, SendResult)
    assert result.code == 250
    assert "queued as 1" in result.reply
    [received] = sink.wait_for(1)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["reader@example.org"]
    assert received.data == MESSAGE


def test_one_connection_is_reused_for_many_sends_and_closed_with_quit(sink):
    with SMTPTransport(smtp_settings(sink.port)) as transport:
        for i in range(3):
            transport.send(SENDER, f"reader{i}@example.org", MESSAGE)
        assert sink.sessions == 1
        assert transport.connections_opened == 1
        assert sink.quits == 0
    assert [m.rcpt_tos for m in sink.wait_for(3)] == [[f"reader{i}@example.org"] for i in range(3)]
    _eventually(lambda: sink.quits == 1)


def test_no_connection_is_opened_before_the_first_send(sink):
    with SMTPTransport(smtp_settings(sink.port)):
        pass
    assert sink.sessions == 0


def test_451_at_rcpt_is_temporary_with_its_code_and_the_next_send_succeeds(sink, transport):
    sink.script("reader@example.org", "451 4.3.0 Try again later")
    with pytest.raises(TemporaryDeliveryError) as caught:
        transport.send(SENDER, "reader@example.org", MESSAGE)
    assert caught.value.code == 451
    assert "451 4.3.0 Try again later" in str(caught.value)
    assert sink.messages == []

    assert transport.send(SENDER, "reader@example.org", MESSAGE).code == 250
    assert len(sink.wait_for(1)) == 1
    assert sink.sessions == 1  # the refused transaction was reset, the connection kept


def test_550_unknown_user_is_permanent_with_code_and_reply_text(sink, transport):
    sink.script("gone@example.org", "550 5.1.1 No such user")
    with pytest.raises(PermanentDeliveryError) as caught:
        transport.send(SENDER, "gone@example.org", MESSAGE)
    assert caught.value.code == 550
    assert (caught.value.step, caught.value.reply) == ("RCPT TO", "550 5.1.1 No such user")
    assert "550 5.1.1 No such user" in str(caught.value)
    assert "gone@example.org" in str(caught.value)
    assert transport.send(SENDER, "reader@example.org", MESSAGE).code == 250
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["reader@example.org"]]


def test_dropped_connection_is_temporary_and_the_next_send_reconnects(sink, transport):
    transport.send(SENDER, "first@example.org", MESSAGE)
    sink.script("reader@example.org", "drop")
    with pytest.raises(TemporaryDeliveryError, match="connection to SMTP server .* lost") as caught:
        transport.send(SENDER, "reader@example.org", MESSAGE)
    assert caught.value.code is None

    assert transport.send(SENDER, "reader@example.org", MESSAGE).code == 250
    assert sink.sessions == 2
    assert transport.connections_opened == 2
    assert [m.rcpt_tos for m in sink.wait_for(2)] == [["first@example.org"], ["reader@example.org"]]


def test_connection_refused_is_temporary():
    with SMTPTransport(smtp_settings(closed_port())) as transport:
        with pytest.raises(TemporaryDeliveryError, match="cannot connect to SMTP server") as caught:
            transport.send(SENDER, "reader@example.org", MESSAGE)
    assert "ConnectionRefusedError" in str(caught.value)


def test_server_going_away_between_sends_is_temporary_then_recovers_on_a_new_server():
    port = closed_port()
    with SMTPTransport(smtp_settings(port)) as transport:
        with MailSink(port=port) as first:
            transport.send(SENDER, "a@example.org", MESSAGE)
            assert len(first.wait_for(1)) == 1
        with pytest.raises(TemporaryDeliveryError):
            transport.send(SENDER, "b@example.org", MESSAGE)
        with MailSink(port=port) as second:
            assert transport.send(SENDER, "c@example.org", MESSAGE).code == 250
            assert [m.rcpt_tos for m in second.wait_for(1)] == [["c@example.org"]]


def test_built_and_signed_message_arrives_byte_for_byte_and_still_verifies(
        sink, transport, dkim_key):
    pem, record = dkim_key
    text = ".\n..two\n.lead\nFrom the newsroom\nend.\n.\n"
    html = "<p>" + "é" * 30_000 + "</p>"
    message = build_message(
        from_addr="Newsroom <digest@newsroom.example.org>",
        to_addr="Zoë <zoe@example.org>",
        subject="Digest 🚓",
        html=html,
        text=text,
        message_id=make_message_id("x1", "newsroom.example.org"),
        unsubscribe_url="https://digest.example.org/u/t",
        date=datetime(2025, 10, 14, tzinfo=UTC),
    )
    signed = DkimSigner("sel", "newsroom.example.org", pem).sign(message)
    assert transport.send(SENDER, "zoe@example.org", signed).code == 250

    [received] = sink.wait_for(1)
    assert received.data == signed

    def dnsfunc(name, timeout=5):
        return record if name == b"sel._domainkey.newsroom.example.org." else None

    assert dkim.verify(received.data, dnsfunc=dnsfunc) is True
    plain, rich = received.parsed().iter_parts()
    assert plain.get_content().replace("\r\n", "\n") == text
    assert rich.get_content() == html


def test_message_over_one_megabyte_is_accepted(sink, transport):
    big = MESSAGE + (b"y" * 900 + b"\r\n") * 1500
    assert len(big) > 1_300_000
    assert transport.send(SENDER, "reader@example.org", big).code == 250
    assert sink.wait_for(1)[0].data == big


def test_line_breaks_or_non_ascii_local_parts_in_envelope_are_refused_before_connecting(
    sink, transport
):
    with pytest.raises(HeaderInjectionError):
        transport.send(SENDER, "reader@example.org\r\nRCPT TO:<victim@example.org>", MESSAGE)
    with pytest.raises(HeaderInjectionError):
        transport.send("a@example.org\nRSET", "reader@example.org", MESSAGE)
    with pytest.raises(ValidationError, match="SMTPUTF8"):
        transport.send(SENDER, "zoë@example.org", MESSAGE)
    assert sink.sessions == 0 and sink.messages == []


def test_internationalised_recipient_domain_goes_out_in_idna_form(sink, transport):
    assert transport.send(SENDER, "zoe@exämple.org", MESSAGE).code == 250
    assert sink.wait_for(1)[0].rcpt_tos == ["zoe@xn--exmple-cua.org"]


def test_login_against_a_server_without_auth_is_a_configuration_error(sink):
    settings = smtp_settings(sink.port, smtp_user="digest", smtp_password="secret")
    with SMTPTransport(settings) as transport:
        with pytest.raises(ConfigError, match="DIGEST_SMTP_USER"):
            transport.send(SENDER, "reader@example.org", MESSAGE)
    assert sink.messages == []


def test_starttls_against_a_server_without_it_is_a_configuration_error(sink):
    with SMTPTransport(smtp_settings(sink.port, smtp_starttls=True)) as transport:
        with pytest.raises(ConfigError, match="DIGEST_SMTP_STARTTLS"):
            transport.send(SENDER, "reader@example.org", MESSAGE)


# --- TLS and AUTH against a real TLS server ---------------------------------------------


def login_settings(port: int, tls_files, password: str, **extra) -> Settings:
    mode = {} if extra.get("smtp_ssl") else {"smtp_starttls": True}
    return smtp_settings(port, smtp_tls_ca_file=tls_files["ca"], smtp_user="digest",
                         smtp_password=password, **mode, **extra)


def test_starttls_and_login_deliver_over_an_encrypted_authenticated_session(
        tls_files, server_tls_context):
    with MailSink(tls_context=server_tls_context, logins={"digest": "s3cret"}) as tls_sink:
        settings = login_settings(tls_sink.port, tls_files, "s3cret")
        with SMTPTransport(settings) as transport:
            assert transport.send(SENDER, "reader@example.org", MESSAGE).code == 250
            assert transport.send(SENDER, "second@example.org", MESSAGE).code == 250
            assert transport.connections_opened == 1
        received = tls_sink.wait_for(2)
    assert [(m.tls, m.login, m.data) for m in received] == [(True, "digest", MESSAGE)] * 2


def test_implicit_tls_and_login_deliver(tls_files, server_tls_context):
    with MailSink(tls_context=server_tls_context, implicit_tls=True,
                  logins={"digest": "s3cret"}) as tls_sink:
        settings = login_settings(tls_sink.port, tls_files, "s3cret", smtp_ssl=True)
        with SMTPTransport(settings) as transport:
            assert transport.send(SENDER, "reader@example.org", MESSAGE).code == 250
        [received] = tls_sink.wait_for(1)
    assert (received.tls, received.login) == (True, "digest")


def test_a_server_that_requires_starttls_refuses_a_plain_session_and_nothing_is_sent(
        server_tls_context):
    with MailSink(tls_context=server_tls_context) as tls_sink:
        with SMTPTransport(smtp_settings(tls_sink.port)) as transport:
            with pytest.raises(PermanentDeliveryError, match="STARTTLS"):
                transport.send(SENDER, "reader@example.org", MESSAGE)
        assert tls_sink.messages == []


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_a_certificate_from_an_untrusted_ca_is_a_configuration_error(
        tls_files, server_tls_context, mode):
    with MailSink(tls_context=server_tls_context, implicit_tls=mode == "ssl") as tls_sink:
        settings = smtp_settings(tls_sink.port, smtp_tls_ca_file=tls_files["other_ca"],
                                 **{f"smtp_{mode}": True})
        with SMTPTransport(settings) as transport:
            with pytest.raises(ConfigError, match="not trusted.*DIGEST_SMTP_TLS_CA_FILE"):
                transport.send(SENDER, "reader@example.org", MESSAGE)
        assert tls_sink.messages == []


def test_a_certificate_for_another_name_is_a_configuration_error(tls_files, server_tls_context):
    # The certificate names localhost and 127.0.0.1, not 127.0.0.2 (the same machine).
    with MailSink(host="127.0.0.2", tls_context=server_tls_context) as tls_sink:
        settings = Settings(smtp_host="127.0.0.2", smtp_port=tls_sink.port, smtp_timeout=5,
                            smtp_starttls=True, smtp_tls_ca_file=tls_files["ca"])
        with SMTPTransport(settings) as transport:
            with pytest.raises(ConfigError, match="not trusted.*DIGEST_SMTP_HOST"):
                transport.send(SENDER, "reader@example.org", MESSAGE)


def test_a_wrong_password_is_a_configuration_error_and_nothing_is_sent(
        tls_files, server_tls_context):
    with MailSink(tls_context=server_tls_context, logins={"digest": "s3cret"}) as tls_sink:
        settings = login_settings(tls_sink.port, tls_files, "wrong")
        with SMTPTransport(settings) as transport:
            with pytest.raises(ConfigError, match="refused the login of 'digest'.*DIGEST_SMTP_PASSWORD"):
                transport.send(SENDER, "reader@example.org", MESSAGE)
        assert tls_sink.messages == []


def test_an_unreadable_ca_file_is_a_configuration_error(tmp_path, sink):
    missing = tmp_path / "no-such-ca.pem"
    with SMTPTransport(smtp_settings(sink.port, smtp_starttls=True,
                                     smtp_tls_ca_file=missing)) as transport:
        with pytest.raises(ConfigError, match="DIGEST_SMTP_TLS_CA_FILE"):
            transport.send(SENDER, "reader@example.org", MESSAGE)


def test_transport_from_settings_reaches_the_smtp_sink_fixture(smtp_sink):
    # The fixture points DIGEST_SMTP_* at the sink: the settings read from them reach it.
    with transport_from_settings(get_settings()) as transport:
        assert transport.send(SENDER, "reader@example.org", MESSAGE).code == 250
    [received] = smtp_sink.wait_for(1)
    assert received.path is not None and received.path.read_bytes() == MESSAGE


def _eventually(condition, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- SMTPUTF8: recipients with a non-ASCII local part ----------------------------------


def utf8_message(to_addr: str) -> bytes:
    return build_message(
        from_addr="Digest <digest@newsroom.example.org>", to_addr=to_addr, subject="Grüße",
        html="<p>Hallo</p>", text="Hallo\n", smtputf8=True,
        message_id=make_message_id("d.1.7", "newsroom.example.org"),
        date=datetime(2025, 10, 14, 9, 30, tzinfo=UTC),
    )


def test_a_non_ascii_local_part_goes_out_with_smtputf8_and_arrives_as_it_was_written(sink):
    data = utf8_message("Zoë <zoë@example.org>")
    with SMTPTransport(smtp_settings(sink.port, smtputf8=True)) as transport:
        assert transport.send(SENDER, "zoë@example.org", data).code == 250
    [received] = sink.wait_for(1)
    assert received.rcpt_tos == ["zoë@example.org"]
    assert received.mail_from == SENDER
    assert "SMTPUTF8" in received.mail_options and "BODY=8BITMIME" in received.mail_options
    assert received.data == data
    [to] = received.parsed()["To"].addresses
    assert to.addr_spec == "zoë@example.org"


def test_an_internationalised_domain_stays_in_idna_form_next_to_a_utf8_local_part(sink):
    with SMTPTransport(smtp_settings(sink.port, smtputf8=True)) as transport:
        transport.send(SENDER, "иван@пример.рф", utf8_message("иван@пример.рф"))
    [received] = sink.wait_for(1)
    assert received.rcpt_tos == ["иван@xn--e1afmkfd.xn--p1ai"]
    assert received.smtputf8
    assert received.parsed()["To"].addresses[0].addr_spec == "иван@xn--e1afmkfd.xn--p1ai"


def test_a_non_ascii_envelope_sender_also_asks_for_smtputf8(sink):
    with SMTPTransport(smtp_settings(sink.port, smtputf8=True)) as transport:
        transport.send("rücklauf@newsroom.example.org", "reader@example.org", MESSAGE)
    [received] = sink.wait_for(1)
    assert received.mail_from == "rücklauf@newsroom.example.org" and received.smtputf8


def test_without_smtputf8_at_the_server_that_recipient_fails_and_the_next_one_is_delivered():
    with MailSink(smtputf8=False) as plain_sink:
        settings = smtp_settings(plain_sink.port, smtputf8=True)
        with SMTPTransport(settings) as transport:
            with pytest.raises(PermanentDeliveryError) as refused:
                transport.send(SENDER, "zoë@example.org", utf8_message("zoë@example.org"))
            assert transport.send(SENDER, "reader@example.org", MESSAGE).code == 250
            assert transport.connections_opened == 1
        message = str(refused.value)
        assert "does not offer SMTPUTF8, which the address zoë@example.org needs" in message
        assert refused.value.code is None and refused.value.reply is None
        [received] = plain_sink.wait_for(1)
        assert received.rcpt_tos == ["reader@example.org"] and received.mail_options == [
            f"SIZE={len(MESSAGE)}"]
        assert plain_sink.sessions == 1


def test_ascii_addresses_never_ask_for_smtputf8_even_after_a_utf8_send(sink):
    with SMTPTransport(smtp_settings(sink.port, smtputf8=True)) as transport:
        transport.send(SENDER, "reader@example.org", MESSAGE)
        transport.send(SENDER, "zoë@example.org", utf8_message("zoë@example.org"))
        transport.send(SENDER, "zoe@exämple.org", MESSAGE)
    first, utf8, idn = sink.wait_for(3)
    assert first.mail_options == [f"SIZE={len(MESSAGE)}"] and not first.smtputf8
    assert utf8.smtputf8
    assert idn.mail_options == [f"SIZE={len(MESSAGE)}"]
    assert idn.rcpt_tos == ["zoe@xn--exmple-cua.org"]


def test_with_smtputf8_off_a_non_ascii_local_part_is_refused_naming_the_setting(sink, transport):
    with pytest.raises(ValidationError, match="recipient 'zoë@example.org' .*DIGEST_SMTPUTF8"):
        transport.send(SENDER, "zoë@example.org", MESSAGE)
    with pytest.raises(ValidationError) as invalid:
        transport.send(SENDER, "zoë@@example.org", MESSAGE)
    assert "DIGEST_SMTPUTF8" not in str(invalid.value)
    assert sink.sessions == 0
