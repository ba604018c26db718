"""Bad input and security rules of the subscriber pages: expired and forged links, purposes
that do not mix, form tokens tied to one subscriber, key rotation, escaping, rate limits."""

from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from digest.errors import RateLimitError
from digest.models import Subscriber, utcnow
from digest.settings import get_settings, reset_settings_cache
from digest.subscribers import FilterSpec, upsert_subscriber
from digest.tokens import subscriber_token
from digest.web import create_app
from digest.web.ratelimit import EmailRateLimiter
from tests.conftest import REDIS_URL
from tests.factories import make_item
from tests.integration.web.support import (  # noqa: F401 (fixtures)
    client,
    csrf_of,
    db_session,
    link_in,
    taxo,
    wait_for_mail,
    web_settings,
)


def make_sub(session, email="ann@example.org", status="active"):
    sub, _ = upsert_subscriber(session, email, filters=[FilterSpec(["Policing"])], status=status, smtputf8=False)
    session.commit()
    return sub


def status_of(session, sub_id) -> str:
    session.expire_all()
    return session.get(Subscriber, sub_id).status


def aged_token(purpose: str, payload: dict, secret: str, age_seconds: int) -> str:
    """A token signed ``age_seconds`` ago, as a link sitting in an inbox would be."""

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - age_seconds

    return URLSafeTimedSerializer([secret], salt=f"digest.{purpose}", signer=PastSigner).dumps(
        payload
    )


# --- tokens -----------------------------------------------------------------------------------


def current_key() -> str:
    return get_settings().secret_key.get_secret_value()


def test_expired_confirm_link_says_so_and_a_new_link_can_be_asked_for(
    client, db_session, taxo, smtp_sink
):
    sub = make_sub(db_session, status="pending")
    old = aged_token("confirm", {"s": sub.id}, current_key(), 8 * 24 * 3600)
    page = client.get(f"/confirm/{old}")
    assert page.status_code == 400
    assert "This link has expired" in page.text
    assert status_of(db_session, sub.id) == "pending"

    response = client.post("/links", data={"csrf": csrf_of(page.text), "email": "ann@example.org"})
    assert response.status_code == 200 and "Check your inbox" in response.text
    fresh = link_in(wait_for_mail(smtp_sink, 1)[0], "confirm")
    assert client.get(fresh).status_code == 200
    assert status_of(db_session, sub.id) == "active"


def test_a_six_day_old_confirm_link_still_works(client, db_session, taxo):
    sub = make_sub(db_session, status="pending")
    token = aged_token("confirm", {"s": sub.id}, current_key(), 6 * 24 * 3600)
    assert client.get(f"/confirm/{token}").status_code == 200
    assert status_of(db_session, sub.id) == "active"


def test_new_link_form_answers_the_same_for_unknown_addresses(client, db_session, taxo, smtp_sink):
    make_sub(db_session)
    page = client.get("/confirm/forged-token")
    known = client.post("/links", data={"csrf": csrf_of(page.text), "email": "ann@example.org"})
    unknown = client.post(
        "/links", data={"csrf": csrf_of(page.text), "email": "nobody@example.org"}
    )
    assert known.status_code == unknown.status_code == 200
    assert known.text.replace("ann@example.org", "X") == unknown.text.replace(
        "nobody@example.org", "X"
    )
    assert [m.rcpt_tos for m in wait_for_mail(smtp_sink, 1)] == [["ann@example.org"]]


def test_new_link_form_rejects_a_bad_address_with_a_message(client, taxo, smtp_sink):
    page = client.get("/preferences/broken")
    response = client.post("/links", data={"csrf": csrf_of(page.text), "email": "ann@"})
    assert response.status_code == 422
    assert "Get a new link" in response.text and "There is a problem" in response.text
    forged = client.post("/links", data={"csrf": "x", "email": "ann@example.org"})
    assert forged.status_code == 422 and "could not be verified" in forged.text
    with pytest.raises(TimeoutError):
        smtp_sink.wait_for(1, timeout=0.5)


@pytest.mark.parametrize(
    "path", ["/confirm/{t}", "/preferences/{t}", "/unsubscribe/{t}", "/view/{t}"]
)
def test_forged_and_truncated_tokens_get_a_page_that_says_so(
    client, db_session, taxo, web_settings, path
):
    sub = make_sub(db_session)
    good = subscriber_token("manage", sub.id, web_settings)
    for token in (
        "nonsense",
        good[:-3],
        # A changed signature character; not the last one, whose low bits base64 ignores.
        good[:-10] + ("A" if good[-10] != "A" else "B") + good[-9:],
        "e30.e30.e30",
    ):
        response = client.get(path.format(t=token))
        assert response.status_code == 400, (path, token)
        assert "This link does not work" in response.text
    assert status_of(db_session, sub.id) == "active"


def test_a_confirm_token_cannot_unsubscribe_and_a_manage_token_cannot_confirm(
    client, db_session, taxo, web_settings
):
    sub = make_sub(db_session)
    confirm = subscriber_token("confirm", sub.id, web_settings)
    assert (
        client.post(f"/unsubscribe/{confirm}", data={"List-Unsubscribe": "One-Click"}).status_code
        == 400
    )
    assert status_of(db_session, sub.id) == "active"
    pending = make_sub(db_session, "pat@example.org", status="pending")
    manage = subscriber_token("manage", pending.id, web_settings)
    assert client.get(f"/confirm/{manage}").status_code == 400
    assert status_of(db_session, pending.id) == "pending"


def test_an_unsubscribe_token_cannot_open_the_preferences_page(
    client, db_session, taxo, web_settings
):
    sub = make_sub(db_session)
    token = subscriber_token("unsubscribe", sub.id, web_settings)
    response = client.get(f"/preferences/{token}")
    assert response.status_code == 400
    assert "ann@example.org" not in response.text


def test_a_form_token_from_one_subscriber_cannot_change_another(
    client, db_session, taxo, web_settings
):
    ann = make_sub(db_session)
    eve = make_sub(db_session, "eve@example.org")
    eve_page = client.get(f"/preferences/{subscriber_token('manage', eve.id, web_settings)}")
    ann_path = f"/preferences/{subscriber_token('manage', ann.id, web_settings)}"
    response = client.post(
        ann_path, data={"csrf": csrf_of(eve_page.text), "mode": "everything", "timezone": "UTC"}
    )
    assert response.status_code == 403
    db_session.expire_all()
    assert len(db_session.get(Subscriber, ann.id).filters) == 1
    assert client.post(ann_path, data={"mode": "everything"}).status_code == 403


def test_key_rotation_keeps_old_links_working_and_signs_new_ones_with_the_new_key(
    web_settings, db_session, taxo, monkeypatch
):
    sub = make_sub(db_session)
    old_link = f"/preferences/{subscriber_token('manage', sub.id, web_settings)}"

    monkeypatch.setenv("DIGEST_SECRET_KEY", "the-new-key")
    monkeypatch.setenv("DIGEST_OLD_SECRET_KEYS", f'["{web_settings.secret_key.get_secret_value()}"]')
    reset_settings_cache()
    rotated = get_settings()
    with TestClient(create_app(rotated), base_url="https://testserver") as c:
        assert c.get(old_link).status_code == 200
        new_link = f"/preferences/{subscriber_token('manage', sub.id, rotated)}"
        assert new_link != old_link and c.get(new_link).status_code == 200

    monkeypatch.setenv("DIGEST_OLD_SECRET_KEYS", "[]")  # rotation finished
    reset_settings_cache()
    with TestClient(create_app(get_settings()), base_url="https://testserver") as c:
        assert c.get(old_link).status_code == 400
        assert c.get(new_link).status_code == 200


# --- escaping ---------------------------------------------------------------------------------


def test_user_and_feed_text_is_escaped_on_every_page(client, db_session, taxo, web_settings):
    from digest.models import Theme
    from digest.taxonomy import slugify

    evil = '<script>alert("x")</script>'
    db_session.add(Theme(slug=slugify(f"Evil {evil}"), name=f"Evil {evil}"))
    db_session.commit()
    sub, _ = upsert_subscriber(
        db_session, "ann@example.org", filters=[FilterSpec([f"Evil {evil}"])]
    , smtputf8=False)
    make_item(
        db_session,
        f"Title {evil}<img src=x onerror=alert(1)>",
        themes=[sub.filters[0].themes[0]],
        ingested_at=utcnow(),
    )
    db_session.commit()
    pages = [
        client.get("/subscribe").text,
        client.get(f"/preferences/{subscriber_token('manage', sub.id, web_settings)}").text,
        client.get(f"/confirm/{subscriber_token('confirm', sub.id, web_settings)}").text,
    ]
    for html in pages:
        assert "<script>" not in html and "<img src=x" not in html
        assert "&lt;script&gt;" in html
    assert "Title &lt;script&gt;" in pages[1]  # the item preview

    # An address with markup in it is refused, and the refusal escapes it too.
    form = {"csrf": csrf_of(pages[0]), "email": '"<b>x</b>"@example.org', "mode": "everything"}
    response = client.post("/subscribe", data=form)
    assert response.status_code == 422 and "<b>x</b>" not in response.text


# --- rate limits ------------------------------------------------------------------------------


@pytest.fixture
def strict_limit(web_settings, monkeypatch):
    monkeypatch.setenv("DIGEST_EMAIL_RATE_LIMIT", "2/minute;3/hour")
    reset_settings_cache()
    yield get_settings()


def test_confirmation_emails_past_the_limit_answer_429_and_send_nothing(
    strict_limit, db_session, taxo, smtp_sink
):
    with TestClient(create_app(strict_limit), base_url="https://testserver") as c:

        def ask(email):
            form = {
                "csrf": csrf_of(c.get("/subscribe").text),
                "email": email,
                "mode": "everything",
                "timezone": "UTC",
            }
            return c.post("/subscribe", data=form)

        assert [ask("ann@example.org").status_code for _ in range(2)] == [200, 200]
        limited = ask("ann@example.org")
        assert limited.status_code == 429
        assert 0 < int(limited.headers["Retry-After"]) <= 60
        assert "try again in" in limited.text
        assert len(wait_for_mail(smtp_sink, 2)) == 2
        with pytest.raises(TimeoutError):
            smtp_sink.wait_for(3, timeout=1)
        # Counted per address: someone else is not held up, and an unknown address is
        # limited the same way (a 429 says nothing about who is subscribed).
        assert ask("bob@example.org").status_code == 200
        page = c.get("/confirm/x")
        for _ in range(2):
            assert (
                c.post(
                    "/links", data={"csrf": csrf_of(page.text), "email": "nobody@example.org"}
                ).status_code
                == 200
            )
        assert (
            c.post(
                "/links", data={"csrf": csrf_of(page.text), "email": "nobody@example.org"}
            ).status_code
            == 429
        )


def test_rate_limit_counts_in_redis_when_the_broker_is_redis(web_settings):
    settings = web_settings.model_copy(
        update={"broker_url": REDIS_URL, "email_rate_limit": "2/minute"}
    )
    first, second = EmailRateLimiter(settings), EmailRateLimiter(settings)  # two web processes
    assert type(first.storage).__name__ == "RedisStorage"
    address = f"{uuid.uuid4().hex}@example.org"
    first.check(address)
    second.check(address)
    with pytest.raises(RateLimitError) as raised:
        first.check(address)
    assert raised.value.retry_after > 0


def test_bad_rate_limit_setting_is_a_config_error(web_settings):
    from digest.errors import ConfigError

    with pytest.raises(ConfigError, match="DIGEST_EMAIL_RATE_LIMIT"):
        EmailRateLimiter(web_settings.model_copy(update={"email_rate_limit": "lots"}))


def test_pages_send_no_referrer_and_forbid_framing(client, taxo):
    response = client.get("/subscribe")
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'none'
    assert response.headers["X-Frame-Options"] == "DENY"


def test_subscribers_are_listed_nowhere_on_public_pages(client, db_session, taxo, web_settings):
    make_sub(db_session, "hidden@example.org")
    other = make_sub(db_session, "visitor@example.org")
    html = client.get(f"/preferences/{subscriber_token('manage', other.id, web_settings)}").text
    assert "hidden@example.org" not in html
    assert "hidden@example.org" not in client.get("/subscribe").text
