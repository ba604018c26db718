"""Checking that a provider's webhook request is authentic and fresh (ADR 0026).

- Amazon SNS: the message's signature (SignatureVersion 1: RSA SHA-1, 2: RSA SHA-256) over
  its canonical string, against the signing certificate at ``SigningCertURL``, which must be
  https on an SNS host (``DIGEST_SNS_CERT_HOSTS``); certificates are fetched once and cached.
- Mailgun: HMAC-SHA256 of timestamp + token with the webhook signing key.
- SendGrid: ECDSA P-256 / SHA-256 over timestamp + the raw body, with the verification key.
- Postmark: HTTP basic auth.

Each function raises ``WebhookRefused`` (with the HTTP status to answer) or returns.
Freshness is checked with the caller's ``now``; "seen before" is the router's, in the
database (``provider_events``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from digest.errors import WebhookRefused

# The fields each SNS message type signs, in this order (AWS: "Verifying the signatures of
# Amazon SNS messages"); Subject only when the message has one.
SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                "TopicArn", "Type"),
}
_SNS_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_CERT_LIMIT = 64 * 1024
_certificates: dict[str, rsa.RSAPublicKey] = {}
_certificates_lock = threading.Lock()


def allowed_url(url: str, patterns: list[str]) -> bool:
    """Whether ``url``'s scheme://host[:port] matches one of ``patterns``, where ``*`` stands
    for one DNS label or a port number (``https://sns.*.amazonaws.com``)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number
        return False
    if not parts.hostname or parts.username or parts.password:
        return False
    origin = f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")
    for pattern in patterns:
        regex = "".join("[A-Za-z0-9-]+" if c == "*" else re.escape(c) for c in pattern)
        if re.fullmatch(regex, origin, re.I):
            return True
    return False


def sns_string_to_sign(message: dict[str, Any]) -> bytes:
    kind = str(message.get("Type") or "")
    if kind not in SNS_SIGNED:
        raise WebhookRefused(f"unknown SNS message type {kind!r}", 403)
    fields = [name for name in SNS_SIGNED[kind] if name != "Subject" or "Subject" in message]
    missing = [name for name in fields if not isinstance(message.get(name), str)]
    if missing:
        raise WebhookRefused(f"the SNS message lacks {', '.join(missing)}", 403)
    return "".join(f"{name}\n{message[name]}\n" for name in fields).encode()


def verify_sns(message: dict[str, Any], cert_hosts: list[str]) -> None:
    """The SNS message is signed by Amazon, or WebhookRefused."""
    algorithm = _SNS_HASHES.get(str(message.get("SignatureVersion") or ""))
    if algorithm is None:
        raise WebhookRefused("unsupported SNS SignatureVersion (1 and 2 are known)", 403)
    cert_url = str(message.get("SigningCertURL") or message.get("SigningCertUrl") or "")
    if not allowed_url(cert_url, cert_hosts) or not urlsplit(cert_url).path.endswith(".pem"):
        raise WebhookRefused("the SNS signing certificate is not on an allowed https SNS host "
                             f"({cert_url[:200]!r})", 403)
    try:
        signature = base64.b64decode(str(message.get("Signature") or ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookRefused("the SNS signature is not base64", 403) from exc
    data = sns_string_to_sign(message)
    try:
        certificate_key(cert_url).verify(signature, data, padding.PKCS1v15(), algorithm())
    except InvalidSignature as exc:
        raise WebhookRefused("the SNS signature does not match the message", 403) from exc


def certificate_key(url: str) -> rsa.RSAPublicKey:
    """The RSA key of the certificate at ``url`` (fetched once per process)."""
    with _certificates_lock:
        key = _certificates.get(url)
    if key is not None:
        return key
    try:
        response = httpx.get(url, timeout=10.0, follow_redirects=False)
        response.raise_for_status()
        if len(response.content) > _CERT_LIMIT:
            raise WebhookRefused("the SNS signing certificate is too large", 403)
        public = x509.load_pem_x509_certificate(response.content).public_key()
    except httpx.HTTPError as exc:
        # Not the sender's fault that we could not fetch it: 503 makes SNS retry later.
        raise WebhookRefused(f"the SNS signing certificate could not be fetched ({exc})",
                             503) from exc
    except ValueError as exc:
        raise WebhookRefused("the SNS signing certificate is not a PEM certificate", 403) from exc
    if not isinstance(public, rsa.RSAPublicKey):
        raise WebhookRefused("the SNS signing certificate holds no RSA key", 403)
    with _certificates_lock:
        if len(_certificates) > 32:  # a handful of regions in practice
            _certificates.clear()
        _certificates[url] = public
    return public


def verify_mailgun(signature: dict[str, Any], key: str, *, now: float, max_age: int) -> str:
    """The token of a Mailgun signature that checks out, or WebhookRefused."""
    timestamp, token = str(signature.get("timestamp") or ""), str(signature.get("token") or "")
    given = str(signature.get("signature") or "")
    if not timestamp.isdigit() or not token or not given:
        raise WebhookRefused("the Mailgun signature (timestamp, token, signature) is missing", 401)
    expected = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given.lower()):
        raise WebhookRefused("the Mailgun signature does not match", 403)
    _fresh(int(timestamp), now, max_age, "Mailgun")
    return token


def sendgrid_key(setting: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key as its settings page shows it (base64 of the DER public
    key), or PEM; ConfigError-free: a bad key refuses every request, logged by the router."""
    text = setting.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text))
    except (ValueError, binascii.Error) as exc:
        raise WebhookRefused("DIGEST_SENDGRID_PUBLIC_KEY is not a public key: copy the "
                             "verification key from SendGrid's Mail Settings", 403) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise WebhookRefused("DIGEST_SENDGRID_PUBLIC_KEY is not an elliptic-curve key", 403)
    return key


def verify_sendgrid(body: bytes, signature: str | None, timestamp: str | None,
                    public_key: str, *, now: float, max_age: int) -> str:
    """An id for a SendGrid post whose signature checks out, or WebhookRefused."""
    if not signature or not timestamp or not timestamp.isdigit():
        raise WebhookRefused("the SendGrid signature headers (X-Twilio-Email-Event-Webhook-"
                             "Signature, -Timestamp) are missing", 401)
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookRefused("the SendGrid signature is not base64", 403) from exc
    try:
        sendgrid_key(public_key).verify(raw, timestamp.encode() + body,
                                        ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise WebhookRefused("the SendGrid signature does not match", 403) from exc
    _fresh(int(timestamp), now, max_age, "SendGrid")
    return hashlib.sha256(raw).hexdigest()


def verify_basic(authorization: str | None, user: str, password: str) -> None:
    """HTTP basic credentials match, or WebhookRefused (401)."""
    scheme, _, encoded = (authorization or "").partition(" ")
    try:
        given = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, ValueError, UnicodeError):
        given = ""
    given_user, sep, given_password = given.partition(":")
    # Both compared, whatever the first says: the time taken tells nothing.
    user_ok = secrets.compare_digest(given_user.encode(), user.encode())
    password_ok = secrets.compare_digest(given_password.encode(), password.encode())
    if not (scheme.lower() == "basic" and sep and user_ok and password_ok):
        raise WebhookRefused("the Postmark webhook's basic auth credentials are wrong or "
                             "missing", 401)


def _fresh(timestamp: int, now: float, max_age: int, provider: str) -> None:
    if abs(now - timestamp) > max_age:
        raise WebhookRefused(f"the {provider} signature's timestamp is {int(now - timestamp)} s "
                             f"from now (more than {max_age} s): refused as a replay", 403)
