"""Settings that are refused or allowed when they load: SMTP TLS and login combinations."""

from __future__ import annotations

import pytest
from pydantic import ValidationError as PydanticValidationError

from digest.settings import Settings


@pytest.mark.parametrize(("values", "words"), [
    ({"smtp_ssl": True, "smtp_starttls": True}, "exclude each other"),
    ({"smtp_user": "digest", "smtp_host": "mail.example.org"}, "in clear"),
], ids=["ssl-and-starttls", "password-in-clear"])
def test_contradictory_smtp_settings_are_refused_when_the_settings_load(values, words):
    with pytest.raises(PydanticValidationError, match=words):
        Settings(**values)


def test_a_login_over_loopback_without_tls_is_allowed_when_the_settings_load():
    assert Settings(smtp_user="digest", smtp_host="127.0.0.1").smtp_user == "digest"
