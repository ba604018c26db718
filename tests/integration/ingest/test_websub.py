"""WebSub push against the real web app on uvicorn and the tests' own hub (tests.websubhub),
on SQLite and PostgreSQL: subscribing, the hub's verification, signed pushes stored through
the same ingest as a poll and alerting at once, forged, unsigned, oversized and misdirected
pushes refused, leases renewed, hubs that never verify or refuse given up on (ADR 0035).
Time is the injected ``now`` (and the app's ``app.state.clock``), never a sleep."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from email.utils import format_datetime

import httpx
import pytest
from sqlalchemy import select

from digest import db
from digest.ingest.registry import add_source, set_paused
from digest.ingest.websub import VERIFY_WITHIN, maintain, poll_every
from digest.models import Item, Source, WebSubState, utcnow
from digest.subscribers import FilterSpec, upsert_subscriber
from tests.factories import Taxo
from tests.feeds import entry, rss
from tests.helpers import free_port
from tests.websubhub import Hub

TOPIC = "https://newsroom.example.org/feed.xml"
MAX_PUSH_BYTES = 4096


def pushed_feed(title: str, guid: str) -> bytes:
    extra = (f"<link>https://newsroom.example.org/items/{guid}</link>"
             f"<pubDate>{format_datetime(utcnow())}</pubDate><category>Policing</category>")
    return rss(entry(title, guid, extra)).encode()


@pytest.fixture
def served(settings, smtp_sink):
    """The app on uvicorn on an ephemeral port, DIGEST_PUBLIC_BASE_URL pointing at it,
    private hubs allowed (the hub is on 127.0.0.1), alerts to the SMTP sink."""
    import uvicorn

    from digest.web import create_app

    port = free_port()
    s = settings.model_copy(update={
        "public_base_url": f"http://127.0.0.1:{port}", "sources_allow_private": True,
        "source_max_bytes": MAX_PUSH_BYTES,
        "smtp_host": smtp_sink.host, "smtp_port": smtp_sink.port})
    app = create_app(s)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield app, s
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def hub():
    h = Hub().start()
    yield h
    h.stop()


def session_for(s):
    return db._sessionmaker(s.database_url)()


def register(s, hub_url: str) -> int:
    """A feed source whose feed advertised ``hub_url`` (what the poll's discovery records)."""
    with session_for(s) as session:
        source = add_source(session, TOPIC, settings=s, kind="feed", every="15m")
        source.hub_url, source.topic_url = hub_url, TOPIC
        session.commit()
        return source.id


def load(s, source_id: int) -> Source:
    with session_for(s) as session:
        source = session.get(Source, source_id)
        assert source is not None
        session.expunge(source)
        return source


def subscribed(s, hub: Hub) -> Source:
    source_id = register(s, hub.url)
    assert maintain(s).subscribed == [source_id]
    [verification] = hub.wait_for_verifications(1)
    assert verification.confirmed and verification.mode == "subscribe"
    source = load(s, source_id)
    assert source.websub_state is WebSubState.verified
    return source


def items_of(s, source_id: int) -> list[Item]:
    with session_for(s) as session:
        return list(session.scalars(select(Item).where(Item.source_id == source_id)))


def test_a_pushed_item_reaches_an_immediate_subscriber_without_any_poll(served, hub, smtp_sink):
    app, s = served
    with session_for(s) as session:
        Taxo(session)
        upsert_subscriber(session, "now@example.org", frequency="immediate",
                          filters=[FilterSpec(["Policing"])], smtputf8=False)
        session.commit()
    source = subscribed(s, hub)
    assert source.websub_callback and source.websub_secret
    callback = f"{s.public_base_url}/websub/{source.websub_callback}"
    assert hub.requests[0]["hub.callback"] == callback
    assert hub.requests[0]["hub.lease_seconds"] == str(s.websub_lease_seconds)

    assert hub.publish(TOPIC, pushed_feed("Pushed: police academy opens", "push-1")) == [202]

    [message] = smtp_sink.wait_for(1, timeout=15)
    assert message.rcpt_tos == ["now@example.org"]
    assert "Pushed: police academy opens" in message.parsed().get_body(("plain",)).get_content()
    [item] = items_of(s, source.id)
    assert item.title == "Pushed: police academy opens"
    after = load(s, source.id)
    assert after.polls == 0 and after.last_attempt_at is None  # no poll was involved
    assert after.websub_last_push_at is not None and after.items_added == 1
    # A hub that pushes: the source is polled only as a safety net.
    assert poll_every(after, now=utcnow()) >= 6 * 3600


def test_forged_and_unsigned_pushes_are_ignored_logged_and_counted(served, hub, caplog):
    app, s = served
    source = subscribed(s, hub)
    caplog.set_level(logging.WARNING, logger="digest.ingest.websub")

    forged = hub.publish(TOPIC, pushed_feed("Forged", "forged-1"), signature="forged")
    unsigned = hub.publish(TOPIC, pushed_feed("Unsigned", "unsigned-1"), signature="none")
    wrong_method = hub.publish(TOPIC, pushed_feed("Odd", "odd-1"), method="md5")

    # Answered 2xx as the spec allows (nothing to learn about the secret), but not stored.
    assert forged == unsigned == wrong_method == [202]
    assert items_of(s, source.id) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(f"source {source.id}" in w and "does not match" in w for w in warnings) == 2
    assert any(f"source {source.id}" in w and "no X-Hub-Signature" in w for w in warnings)
    metrics = httpx.get(f"{s.public_base_url}/metrics").text
    assert 'digest_websub_pushes_total{outcome="bad_signature"} 2.0' in metrics
    assert 'digest_websub_pushes_total{outcome="unsigned"} 1.0' in metrics

    # The same body signed with our secret, in any of the spec's methods, is stored.
    assert hub.publish(TOPIC, pushed_feed("Signed", "signed-1"), method="sha512") == [202]
    assert [i.title for i in items_of(s, source.id)] == ["Signed"]


def test_a_signed_push_that_is_no_feed_stores_nothing_and_says_why(served, hub):
    app, s = served
    source = subscribed(s, hub)

    assert hub.publish(TOPIC, b"<html><body>not a feed</body></html>",
                       content_type="text/html") == [202]
    assert items_of(s, source.id) == []
    after = load(s, source.id)
    assert after.websub_error.startswith("a pushed document could not be read: ")
    assert after.websub_last_push_at is None


def test_a_push_to_an_unknown_callback_is_gone_and_a_verification_for_it_not_found(
        served, hub):
    app, s = served
    source = subscribed(s, hub)
    unknown = f"{s.public_base_url}/websub/no-such-callback"

    assert hub.push(unknown, pushed_feed("Lost", "lost-1"), secret="x", topic=TOPIC) == 410
    verify = {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.challenge": "c",
              "hub.lease_seconds": "60"}
    assert httpx.get(unknown, params=verify).status_code == 404
    # Our callback, but a topic we never asked for: not ours to confirm either.
    ours = f"{s.public_base_url}/websub/{source.websub_callback}"
    other = {**verify, "hub.topic": "https://elsewhere.example.org/feed"}
    assert httpx.get(ours, params=other).status_code == 404
    assert httpx.get(ours, params={**verify, "hub.lease_seconds": "x"}).status_code == 404
    with session_for(s) as session:
        assert session.scalars(select(Item)).all() == []


def test_an_oversized_push_body_is_refused_unread(served, hub):
    app, s = served
    source = subscribed(s, hub)
    big = pushed_feed("Big", "big-1").replace(b"<title>Big", b"<title>Big" + b"x" * 100_000)

    assert hub.publish(TOPIC, big) in ([413], [0])  # 0: the app closed before reading it all
    # Without a Content-Length (chunked), the read stops at the limit too.
    chunks = (b"x" * 1024 for _ in range(64))
    chunked = httpx.post(f"{s.public_base_url}/websub/{source.websub_callback}",
                         content=chunks, headers={"X-Hub-Signature": "sha256=00"})
    assert chunked.status_code == 413
    assert items_of(s, source.id) == []
    metrics = httpx.get(f"{s.public_base_url}/metrics").text
    assert 'digest_websub_pushes_total{outcome="too_large"}' in metrics


def test_a_hub_that_never_verifies_is_given_up_on_and_the_source_polled_as_usual(settings):
    s = settings.model_copy(update={"sources_allow_private": True})
    silent = Hub(verify=False).start()
    try:
        source_id = register(s, silent.url)
        t0 = utcnow()
        assert maintain(s, now=t0).subscribed == [source_id]
        assert load(s, source_id).websub_state is WebSubState.requested
        # The poller's safety-net wait, as if the hub had been pushing.
        with session_for(s) as session:
            session.get(Source, source_id).next_poll_at = t0 + timedelta(hours=6)
            session.commit()
        assert maintain(s, now=t0 + VERIFY_WITHIN - timedelta(minutes=1)).failed == []

        later = t0 + VERIFY_WITHIN
        assert maintain(s, now=later).failed == [source_id]
        source = load(s, source_id)
        assert source.websub_state is WebSubState.denied
        assert "did not verify the subscription within 15 minutes" in source.websub_error
        assert poll_every(source, now=later) == source.every_seconds
        assert source.next_poll_at <= later + timedelta(seconds=source.every_seconds)
        # Asked again, with a new callback, once the retry wait is over.
        assert maintain(s, now=later + timedelta(hours=5)).subscribed == []
        assert maintain(s, now=later + timedelta(hours=6)).subscribed == [source_id]
        assert load(s, source_id).websub_callback != source.websub_callback
    finally:
        silent.stop()


def test_a_refusing_or_private_hub_or_a_loopback_callback_leaves_the_error_in_words(
        settings):
    refusing = Hub(answer=500).start()
    allowed = settings.model_copy(update={"sources_allow_private": True})
    try:
        # Private addresses are refused unless allowed (the hub is on 127.0.0.1).
        private_id = register(allowed, refusing.url)
        assert maintain(settings).failed == [private_id]
        assert refusing.requests == []
        assert "DIGEST_SOURCES_ALLOW_PRIVATE" in load(settings, private_id).websub_error

        with session_for(allowed) as session:
            session.get(Source, private_id).websub_requested_at -= timedelta(hours=6)
            session.commit()
        assert maintain(allowed).failed == [private_id]
        source = load(allowed, private_id)
        assert source.websub_state is WebSubState.denied
        assert "refused the subscribe request: HTTP 500" in source.websub_error
        # A callback on a loopback address (the default base URL) is no use to a hub.
        local = settings.model_copy(update={"public_base_url": "http://127.0.0.1:8000"})
        with session_for(local) as session:
            session.get(Source, private_id).websub_requested_at -= timedelta(hours=6)
            session.commit()
        assert maintain(local).failed == [private_id]
        assert "DIGEST_PUBLIC_BASE_URL (http://127.0.0.1:8000)" in load(
            local, private_id).websub_error
        assert len(refusing.requests) == 1
    finally:
        refusing.stop()


def test_a_lapsed_lease_is_subscribed_afresh(served, hub):
    app, s = served
    source = subscribed(s, hub)
    lapsed = source.websub_lease_until + timedelta(minutes=1)
    assert poll_every(source, now=lapsed) == source.every_seconds  # polling meanwhile
    app.state.clock = lapsed.timestamp

    assert maintain(s, now=lapsed).subscribed == [source.id]
    second = hub.wait_for_verifications(2)[1]
    assert second.confirmed
    after = load(s, source.id)
    assert after.websub_state is WebSubState.verified
    assert after.websub_callback != source.websub_callback  # a fresh subscription
    assert after.websub_lease_until == lapsed + timedelta(seconds=s.websub_lease_seconds)
    assert poll_every(after, now=lapsed) >= 6 * 3600


def test_a_lease_in_its_last_day_is_renewed_with_the_same_callback_and_secret(served, hub):
    app, s = served
    source = subscribed(s, hub)
    assert maintain(s, now=source.websub_lease_until - timedelta(days=2)).renewed == []
    near_end = source.websub_lease_until - timedelta(hours=12)
    app.state.clock = near_end.timestamp

    assert maintain(s, now=near_end).renewed == [source.id]
    assert hub.wait_for_verifications(2)[1].confirmed
    first, again = hub.requests
    assert (again["hub.callback"], again["hub.secret"]) == (first["hub.callback"],
                                                            first["hub.secret"])
    after = load(s, source.id)
    assert after.websub_state is WebSubState.verified
    assert after.websub_lease_until == near_end + timedelta(seconds=s.websub_lease_seconds)
    # Renewed once: the next pass leaves it alone.
    assert maintain(s, now=near_end + timedelta(minutes=5)).renewed == []
    assert len(hub.requests) == 2


def test_a_hub_that_denies_the_subscription_leaves_the_source_polled(served, hub):
    app, s = served
    source = subscribed(s, hub)
    callback = f"{s.public_base_url}/websub/{source.websub_callback}"

    assert hub.deny(callback, TOPIC, "this topic takes no subscribers") == 200
    after = load(s, source.id)
    assert after.websub_state is WebSubState.denied
    assert "this topic takes no subscribers" in after.websub_error
    assert poll_every(after, now=utcnow()) == after.every_seconds
    assert hub.publish(TOPIC, pushed_feed("After denial", "denied-1")) == [410]


def test_pausing_a_source_unsubscribes_it_and_resuming_subscribes_again(served, hub):
    app, s = served
    source = subscribed(s, hub)
    with session_for(s) as session:
        set_paused(session, source.id, True)
        session.commit()

    assert maintain(s).unsubscribed == [source.id]
    second = hub.wait_for_verifications(2)[1]
    assert (second.mode, second.confirmed) == ("unsubscribe", True)
    assert hub.subscriptions == {}
    assert load(s, source.id).websub_state is WebSubState.unsubscribed

    with session_for(s) as session:
        set_paused(session, source.id, False)
        session.commit()
    assert maintain(s).subscribed == [source.id]
    assert hub.wait_for_verifications(3)[2].confirmed
    assert load(s, source.id).websub_state is WebSubState.verified
