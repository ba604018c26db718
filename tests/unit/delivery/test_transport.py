"""The SMTP transport's refusals made before any connection, and the in-memory transport."""

from __future__ import annotations

import pytest

from digest.delivery import SMTPTransport
from digest.devtools import InMemoryTransport
from digest.errors import (
    ConfigError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    ValidationError,
)
from digest.settings import Settings
from tests.factories import MESSAGE, SENDER, smtp_settings


def test_ssl_and_starttls_together_are_refused_even_when_set_after_the_settings_loaded():
    # Loading such settings is refused already (tests/test_put_back.py); an object changed
    # afterwards is still refused by the transport, before it connects.
    settings = smtp_settings(25, smtp_ssl=True)
    settings.smtp_starttls = True
    with pytest.raises(ConfigError, match="exclude each other"):
        SMTPTransport(settings)


def test_a_password_is_never_sent_in_clear_to_a_remote_server():
    # Refused when the settings load (tests/test_put_back.py), and by the transport for an
    # object changed after loading.
    settings = Settings(smtp_host="127.0.0.1", smtp_port=587, smtp_user="digest",
                        smtp_password="s3cret")
    settings = settings.model_copy(update={"smtp_host": "smtp.example.net"})
    with pytest.raises(ConfigError, match="DIGEST_SMTP_STARTTLS.*in clear"):
        SMTPTransport(settings)
    # Over TLS, or to this machine's own relay, it is fine.
    SMTPTransport(settings.model_copy(update={"smtp_starttls": True}))
    SMTPTransport(settings.model_copy(update={"smtp_host": "127.0.0.1"}))


# --- the in-memory fake for unit tests of callers -------------------------------------


def test_in_memory_transport_records_sends_and_plays_scripted_replies():
    transport = InMemoryTransport()
    transport.script("Reader@example.org", "451 4.3.0 Later", "550 5.1.1 No such user", "drop")
    with transport:
        with pytest.raises(TemporaryDeliveryError) as later:
            transport.send(SENDER, "reader@example.org", MESSAGE)
        with pytest.raises(PermanentDeliveryError) as gone:
            transport.send(SENDER, "reader@example.org", MESSAGE)
        with pytest.raises(TemporaryDeliveryError) as dropped:
            transport.send(SENDER, "reader@example.org", MESSAGE)
        result = transport.send(SENDER, "reader@example.org", MESSAGE)
    assert (later.value.code, gone.value.code, dropped.value.code) == (451, 550, None)
    assert (gone.value.step, gone.value.reply) == ("RCPT TO", "550 5.1.1 No such user")
    assert (dropped.value.step, dropped.value.reply) == (None, None)
    assert result.code == 250
    assert transport.sent == [(SENDER, "reader@example.org", MESSAGE)]
    with pytest.raises(ValidationError, match="SMTP code"):
        transport.script("x@example.org", "try later")
