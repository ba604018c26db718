"""Provider webhooks (/webhooks/...): each provider's documented sample, signed in the test
with a key the test makes, is accepted and acted on; a forged, stale or replayed one is
refused; an unconfigured provider's endpoint is 404. On SQLite and PostgreSQL.

The samples (tests/data/providers) are about run 7's deliveries 101-104
(tests/bounce_reports.py). For SNS the test serves a self-signed certificate from a local
HTTP server, allowed by DIGEST_SNS_CERT_HOSTS, so the real verification code fetches it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from digest.models import Complaint, Delivery, DeliveryStatus, Subscriber, Suppression
from digest.web import create_app
from tests.bounce_reports import seed_sample_deliveries
from tests.conftest import TEST_DATA

DATA = TEST_DATA / "providers"
TOPIC = "arn:aws:sns:us-east-1:123456789012:digest-ses-events"
NOW = 1_760_346_000  # the tests' clock (app.state.clock), 2025-10-13
MAILGUN_KEY = "key-test-mailgun-signing-0123456789"


def sample(name: str):
    return json.loads((DATA / name).read_text())


def listed(session, address: str) -> tuple[str, str | None]:
    session.expire_all()
    status = session.scalar(select(Subscriber.status).where(Subscriber.email == address))
    reason = session.scalar(select(Suppression.reason).where(Suppression.email == address))
    return str(status), (str(reason) if reason else None)


def make_client(settings, **update) -> TestClient:
    app = create_app(settings.model_copy(update=update))
    app.state.clock = lambda: float(NOW)
    return TestClient(app, base_url="https://testserver")


@pytest.fixture
def run7(session):
    return seed_sample_deliveries(session)


# --- Amazon SES through SNS ---------------------------------------------------------------


class CertServer:
    """A local HTTP server: the SNS signing certificate, and a SubscribeURL that counts."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + dt.timedelta(days=3650))
                .sign(self.key, hashes.SHA256()))
        pem = cert.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.fetched.append(self.path)
                body = pem if self.path.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def sign(self, message: dict, version: str = "1") -> dict:
        """``message`` signed as SNS signs it (AWS's documented canonical string)."""
        message = dict(message, SignatureVersion=version,
                       SigningCertURL=f"{self.base}/SimpleNotificationService-test.pem")
        if message["Type"] == "Notification":
            names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        else:
            names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn",
                     "Type"]
        text = "".join(f"{n}\n{message[n]}\n" for n in names if n in message)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), algorithm)
        message["Signature"] = base64.b64encode(signature).decode()
        return message


@pytest.fixture(scope="module")
def sns():
    server = CertServer()
    yield server
    server.httpd.shutdown()


def notification(ses_sample: str, message_id: str) -> dict:
    return {"Type": "Notification", "MessageId": message_id, "TopicArn": TOPIC,
            "Message": (DATA / ses_sample).read_text(), "Timestamp": "2025-10-13T08:31:40.000Z",
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"}


@pytest.fixture
def ses(settings, sns):
    with make_client(settings, sns_topic_arns=[TOPIC, sample(
            "sns-subscription-confirmation.json")["TopicArn"]],
            sns_cert_hosts=["http://127.0.0.1:*"]) as client:
        yield client


def test_an_sns_subscription_confirmation_signed_by_its_certificate_is_confirmed(ses, sns):
    message = sample("sns-subscription-confirmation.json")
    message["SubscribeURL"] = message["SubscribeURL"].replace(
        "https://sns.us-west-2.amazonaws.com", sns.base)
    forged = dict(sns.sign(message), Token="0" * 64)
    before = len(sns.fetched)
    assert ses.post("/webhooks/ses", json=forged).status_code == 403
    assert not [p for p in sns.fetched[before:] if "ConfirmSubscription" in p]
    answer = ses.post("/webhooks/ses", json=sns.sign(message))
    assert answer.status_code == 200, answer.text
    assert [p for p in sns.fetched[before:] if "ConfirmSubscription" in p]


def test_an_ses_bounce_through_sns_suppresses_and_fails_and_its_replay_is_refused(
        ses, sns, session, run7):
    message = sns.sign(notification("ses-bounce.json", "b7a8a2f2-0001"), version="1")
    answer = ses.post("/webhooks/ses", json=message)
    assert answer.status_code == 200, answer.text
    [event] = answer.json()["events"]
    assert (event["delivery_id"], event["kind"], event["matched_by"]) == (101, "hard", "verp")
    assert listed(session, "gone@example.net") == ("suppressed", "hard_bounce")
    assert session.get(Delivery, 101).status == DeliveryStatus.failed
    replay = ses.post("/webhooks/ses", json=message)
    assert replay.status_code == 403 and "replay" in replay.json()["detail"]


def test_an_ses_complaint_signed_with_sha256_suppresses_the_reader_as_a_complaint(
        ses, sns, session, run7):
    message = sns.sign(notification("ses-complaint.json", "b7a8a2f2-0002"), version="2")
    answer = ses.post("/webhooks/ses", json=message)
    assert answer.status_code == 200, answer.text
    assert answer.json()["events"][0]["matched_by"] == "message-id"
    assert listed(session, "full@example.com") == ("suppressed", "complaint")
    assert [(c.delivery_id, c.source) for c in session.scalars(select(Complaint))] == [
        (102, "ses")]
    # The certificate was fetched once for every message of this module (cached).
    assert [p for p in sns.fetched if p.endswith(".pem")] == ["/SimpleNotificationService-test.pem"]


def test_an_ses_delivery_changes_nothing(ses, sns, session, run7):
    answer = ses.post("/webhooks/ses", json=sns.sign(notification("ses-delivery.json", "d-1")))
    assert answer.status_code == 200, answer.text
    assert answer.json()["events"][0]["result"] == "delivered"
    assert listed(session, "moved@example.net") == ("active", None)


def test_sns_messages_that_are_forged_or_point_elsewhere_are_refused(ses, sns, session, run7):
    good = sns.sign(notification("ses-bounce.json", "f-1"))
    tampered = dict(good, Message=good["Message"].replace("Permanent", "Transient"))
    elsewhere = dict(good, SigningCertURL="https://sns.evil.example.com/cert.pem")
    other_topic = sns.sign(dict(notification("ses-bounce.json", "f-2"),
                                TopicArn="arn:aws:sns:us-east-1:999999999999:other"))
    for message in (tampered, elsewhere, other_topic, dict(good, SignatureVersion="3")):
        assert ses.post("/webhooks/ses", json=message).status_code == 403
    assert listed(session, "gone@example.net") == ("active", None)


# --- Mailgun ------------------------------------------------------------------------------


def mailgun(name: str, *, token: str | None = None, timestamp: int = NOW,
            key: str = MAILGUN_KEY) -> dict:
    payload = sample(name)
    token = token or payload["signature"]["token"]
    digest = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    payload["signature"] = {"timestamp": str(timestamp), "token": token, "signature": digest}
    return payload


@pytest.fixture
def mg(settings):
    with make_client(settings, mailgun_signing_key=SecretStr(MAILGUN_KEY)) as client:
        yield client


def test_a_signed_mailgun_permanent_failure_suppresses_the_reader_and_its_replay_is_refused(
        mg, session, run7):
    payload = mailgun("mailgun-failed-permanent.json")
    answer = mg.post("/webhooks/mailgun", json=payload)
    assert answer.status_code == 200, answer.text
    [event] = answer.json()["events"]
    assert (event["delivery_id"], event["kind"], event["status_code"]) == (103, "hard", "5.1.1")
    assert listed(session, "strict@example.org") == ("suppressed", "hard_bounce")
    assert mg.post("/webhooks/mailgun", json=payload).status_code == 403


def test_mailgun_posts_that_are_forged_or_stale_are_refused_and_logged(mg, session, run7,
                                                                      caplog):
    forged = mailgun("mailgun-failed-permanent.json", key="not-the-key")
    stale = mailgun("mailgun-failed-permanent.json", timestamp=NOW - 3600)
    unsigned = sample("mailgun-failed-permanent.json")
    del unsigned["signature"]
    assert mg.post("/webhooks/mailgun", json=forged).status_code == 403
    assert mg.post("/webhooks/mailgun", json=stale).status_code == 403
    assert mg.post("/webhooks/mailgun", json=unsigned).status_code == 401
    refusals = [r.getMessage() for r in caplog.records if "webhook refused" in r.getMessage()]
    assert len(refusals) == 3 and "does not match" in refusals[0]
    assert listed(session, "strict@example.org") == ("active", None)


def test_mailgun_complaints_suppress_and_its_own_list_and_deliveries_change_nothing(
        mg, session, run7):
    own_list = mg.post("/webhooks/mailgun", json=mailgun("mailgun-failed-suppress-bounce.json"))
    assert own_list.json()["events"][0]["kind"] == "sender"
    assert listed(session, "strict@example.org") == ("active", None)
    delivered = mg.post("/webhooks/mailgun", json=mailgun("mailgun-delivered.json"))
    assert delivered.json()["events"][0]["result"] == "delivered"
    complained = mg.post("/webhooks/mailgun", json=mailgun("mailgun-complained.json"))
    assert complained.json()["events"][0]["matched_by"] == "message-id"
    assert listed(session, "strict@example.org") == ("suppressed", "complaint")


# --- SendGrid -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sendgrid_key():
    return ec.generate_private_key(ec.SECP256R1())


def sendgrid_headers(key, body: bytes, timestamp: int = NOW) -> dict[str, str]:
    signature = key.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp),
            "Content-Type": "application/json"}


@pytest.fixture
def sg(settings, sendgrid_key):
    public = sendgrid_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with make_client(settings, sendgrid_public_key=base64.b64encode(public).decode()) as client:
        yield client


def test_a_signed_sendgrid_post_maps_each_event_and_its_replay_is_refused(
        sg, sendgrid_key, session, run7):
    body = (DATA / "sendgrid-events.json").read_bytes()
    answer = sg.post("/webhooks/sendgrid", content=body,
                     headers=sendgrid_headers(sendgrid_key, body))
    assert answer.status_code == 200, answer.text
    results = [(e["result"], e["kind"], e["complaint"]) for e in answer.json()["events"]]
    assert results == [("unmatched", None, False), ("unmatched", None, False),
                       ("delivered", None, False), ("recorded", "hard", False),
                       ("recorded", "sender", False), ("recorded", None, True)]
    assert listed(session, "gone@example.net") == ("suppressed", "hard_bounce")
    assert listed(session, "full@example.com") == ("suppressed", "complaint")
    assert listed(session, "strict@example.org") == ("active", None)  # SendGrid's own list
    assert listed(session, "moved@example.net") == ("active", None)
    again = sg.post("/webhooks/sendgrid", content=body,
                    headers=sendgrid_headers(sendgrid_key, body))
    # ECDSA signatures differ each time: a re-signed post is new, and changes nothing new.
    assert again.status_code == 200
    same = answer.request.headers
    replay = sg.post("/webhooks/sendgrid", content=body, headers={
        k: same[k] for k in ("X-Twilio-Email-Event-Webhook-Signature",
                             "X-Twilio-Email-Event-Webhook-Timestamp")})
    assert replay.status_code == 403


def test_sendgrid_posts_that_are_forged_or_stale_are_refused(sg, sendgrid_key, session, run7):
    body = (DATA / "sendgrid-events.json").read_bytes()
    headers = sendgrid_headers(sendgrid_key, body)
    tampered = body.replace(b'"spamreport"', b'"delivered" ')
    assert sg.post("/webhooks/sendgrid", content=tampered, headers=headers).status_code == 403
    stale = sendgrid_headers(sendgrid_key, body, timestamp=NOW - 3600)
    assert sg.post("/webhooks/sendgrid", content=body, headers=stale).status_code == 403
    other = sendgrid_headers(ec.generate_private_key(ec.SECP256R1()), body)
    assert sg.post("/webhooks/sendgrid", content=body, headers=other).status_code == 403
    assert sg.post("/webhooks/sendgrid", content=body).status_code == 401
    assert listed(session, "full@example.com") == ("active", None)


def test_remembered_events_are_forgotten_after_thirty_days_and_kept_before(mg, session, run7):
    from digest.models import ProviderEvent as SeenEvent

    now = dt.datetime.fromtimestamp(NOW, dt.UTC)
    session.add_all([SeenEvent(provider="mailgun", event_id="old", seen_at=now - dt.timedelta(
        days=31)), SeenEvent(provider="mailgun", event_id="recent", seen_at=now - dt.timedelta(
        days=29)), SeenEvent(provider="sendgrid", event_id="other", seen_at=now - dt.timedelta(
        days=31))])
    session.commit()
    assert mg.post("/webhooks/mailgun", json=mailgun("mailgun-delivered.json")).status_code == 200
    session.expire_all()
    kept = {(e.provider, e.event_id) for e in session.scalars(select(SeenEvent))}
    assert kept == {("mailgun", "recent"), ("sendgrid", "other"),
                    ("mailgun", sample("mailgun-delivered.json")["signature"]["token"])}


# --- Postmark -----------------------------------------------------------------------------


@pytest.fixture
def pm(settings):
    with make_client(settings, postmark_webhook_user="postmark",
                     postmark_webhook_password=SecretStr("s3cret-webhook-password")) as client:
        yield client


def test_postmark_events_with_the_right_credentials_are_acted_on_and_a_replay_refused(
        pm, session, run7):
    auth = ("postmark", "s3cret-webhook-password")
    bounce = pm.post("/webhooks/postmark", json=sample("postmark-bounce.json"), auth=auth)
    assert bounce.status_code == 200, bounce.text
    assert (bounce.json()["events"][0]["kind"], bounce.json()["events"][0]["matched_by"]) == (
        "hard", "recipient")
    assert listed(session, "gone@example.net") == ("suppressed", "hard_bounce")
    complaint = pm.post("/webhooks/postmark", json=sample("postmark-spam-complaint.json"),
                        auth=auth)
    assert complaint.json()["events"][0]["matched_by"] == "x-digest-delivery"
    assert listed(session, "moved@example.net") == ("suppressed", "complaint")
    delivered = pm.post("/webhooks/postmark", json=sample("postmark-delivery.json"), auth=auth)
    assert delivered.json()["events"][0]["result"] == "delivered"
    assert pm.post("/webhooks/postmark", json=sample("postmark-bounce.json"),
                   auth=auth).status_code == 403


def test_postmark_events_without_the_right_credentials_are_refused(pm, session, run7):
    for auth in (None, ("postmark", "wrong"), ("someone", "s3cret-webhook-password")):
        answer = pm.post("/webhooks/postmark", json=sample("postmark-spam-complaint.json"),
                         auth=auth)
        assert answer.status_code == 401
    assert listed(session, "moved@example.net") == ("active", None)


# --- off until configured -----------------------------------------------------------------


def test_every_provider_endpoint_is_404_until_configured(settings):
    with make_client(settings) as client:
        for provider in ("ses", "mailgun", "sendgrid", "postmark"):
            assert client.post(f"/webhooks/{provider}", json={}).status_code == 404



# --- /metrics -----------------------------------------------------------------------------


def test_metrics_count_complaints_by_where_they_came_from(mg, session, run7, settings):
    from prometheus_client.parser import text_string_to_metric_families

    from digest.bounces import process_bounce_message

    process_bounce_message(session, (TEST_DATA / "complaints" / "yahoo-cfl-abuse.eml")
                           .read_bytes(), settings=settings)
    session.commit()
    assert mg.post("/webhooks/mailgun", json=mailgun("mailgun-complained.json")).status_code == 200
    scraped = {(s.name, s.labels.get("source")): s.value
               for family in text_string_to_metric_families(mg.get("/metrics").text)
               for s in family.samples if s.name == "digest_complaints_total"}
    assert scraped == {("digest_complaints_total", "arf"): 1.0,
                       ("digest_complaints_total", "mailgun"): 1.0}
