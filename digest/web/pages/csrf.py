"""CSRF tokens for the subscriber forms, without cookies.

A token is signed (itsdangerous, its own salt) and names what the form acts on: the
subscriber for the preferences form, "subscribe" or "links" for the anonymous forms. A
token taken from one subscriber's page is refused on another's. The link token in the URL
is what proves who may change what; this only stops other sites from posting the forms.
The RFC 8058 one-click unsubscribe POST needs none (mail providers send it without one).
"""

from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from digest.errors import TokenError
from digest.settings import Settings

MAX_AGE = 24 * 3600  # a form left open for a day is reloaded


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    keys = [k.get_secret_value() for k in settings.old_secret_keys]
    keys.append(settings.secret_key.get_secret_value())
    return URLSafeTimedSerializer(keys, salt="digest.csrf")


def subject_for(subscriber_id: int) -> str:
    return f"s:{subscriber_id}"


def make_csrf(settings: Settings, subject: str) -> str:
    return _serializer(settings).dumps(subject)


def check_csrf(settings: Settings, token: object, subject: str) -> None:
    """``token``: the form's value as sent (missing, or a file upload: refused as invalid)."""
    try:
        signed = _serializer(settings).loads(token if isinstance(token, str) else "",
                                             max_age=MAX_AGE)
    except SignatureExpired as exc:
        raise TokenError("this form is more than a day old; reload the page and try again") from exc
    except BadSignature as exc:
        raise TokenError("this form could not be verified; reload the page and try again") from exc
    if signed != subject:
        raise TokenError("this form belongs to another page; reload the page and try again")
