"""Signed link tokens (itsdangerous) with one salt per purpose.

A token made for one purpose never opens another: a confirm token cannot unsubscribe. Old
secret keys listed in ``DIGEST_OLD_SECRET_KEYS`` still verify, so rotating the key does not
break links already in inboxes; new tokens are always signed with the current key.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from itsdangerous import BadSignature, SignatureExpired, Signer, URLSafeTimedSerializer, want_bytes

from digest.errors import TokenError
from digest.settings import Settings

Purpose = Literal["confirm", "feed", "manage", "unsubscribe", "view"]

# Confirmation links expire; links printed in digests keep working (they are the way out).
MAX_AGE: dict[str, int | None] = {
    "confirm": 7 * 24 * 3600,
    "feed": None,  # a feed reader polls the same URL for years
    "manage": None,
    "unsubscribe": None,
    "view": None,
}


def _keys(settings: Settings) -> tuple[str, ...]:
    # itsdangerous signs with the last key and accepts any of them.
    return (*(k.get_secret_value() for k in settings.old_secret_keys),
            settings.secret_key.get_secret_value())


@lru_cache(maxsize=64)
def _cached(purpose: Purpose, keys: tuple[str, ...]) -> tuple[URLSafeTimedSerializer, Signer]:
    # Built once per purpose and set of keys, not once per token: every message signs three.
    serializer = URLSafeTimedSerializer(list(keys), salt=f"digest.{purpose}")
    return serializer, serializer.make_signer()


def _serializer(purpose: Purpose, settings: Settings) -> URLSafeTimedSerializer:
    return _cached(purpose, _keys(settings))[0]


def make_token(purpose: Purpose, payload: dict[str, Any], settings: Settings) -> str:
    # What ``serializer.dumps`` does, with the signer kept (same bytes, same timestamp rule).
    serializer, signer = _cached(purpose, _keys(settings))
    return signer.sign(want_bytes(serializer.dump_payload(payload))).decode("utf-8")


def read_token(purpose: Purpose, token: str, settings: Settings,
               max_age: int | None = -1) -> dict[str, Any]:
    """The payload of a valid token; ``TokenError`` saying why otherwise."""
    if max_age == -1:
        max_age = MAX_AGE[purpose]
    try:
        payload = _serializer(purpose, settings).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise TokenError("this link has expired; ask for a new one") from exc
    except BadSignature as exc:
        raise TokenError(
            "this link is not valid (it may be incomplete or meant for something else)"
        ) from exc
    if not isinstance(payload, dict):
        raise TokenError("this link is not valid")
    return payload


def subscriber_token(purpose: Purpose, subscriber_id: int, settings: Settings) -> str:
    return make_token(purpose, {"s": subscriber_id}, settings)


def subscriber_from_token(purpose: Purpose, token: str, settings: Settings) -> int:
    payload = read_token(purpose, token, settings)
    sid = payload.get("s")
    if not isinstance(sid, int):
        raise TokenError("this link is not valid")
    return sid


def links_for(subscriber_id: int, settings: Settings) -> dict[str, str]:
    """Absolute URLs for the footer of every email sent to this subscriber."""
    base = settings.public_base_url.rstrip("/")
    manage = subscriber_token("manage", subscriber_id, settings)
    unsubscribe = subscriber_token("unsubscribe", subscriber_id, settings)
    return {
        "manage_url": f"{base}/preferences/{manage}",
        "unsubscribe_url": f"{base}/unsubscribe/{unsubscribe}",
        "feed_url": feed_url(subscriber_id, settings),
    }


def feed_url(subscriber_id: int, settings: Settings) -> str:
    """The reader's personal Atom feed; its own salt, so it opens nothing but the feed (a
    feed URL is pasted into feed readers and shared more freely than a manage link)."""
    base = settings.public_base_url.rstrip("/")
    return f"{base}/feed/{subscriber_token('feed', subscriber_id, settings)}.atom"
