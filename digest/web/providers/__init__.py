"""Provider webhooks: ``POST /webhooks/{ses,mailgun,sendgrid,postmark}`` (docs/providers.md).

Each endpoint is 404 until its provider's setting is given. A request is checked
(``signatures``) before anything is read from it: a forged one is refused (401/403) and
logged; one seen before (the SNS MessageId, the Mailgun token, the SendGrid signature, the
Postmark record) is refused as a replay (403), remembered in ``provider_events`` in the same
transaction as what it did, so a request that failed half-way can be retried. The events are
acted on by ``digest.bounces.providers`` (the same classifier and delivery record as a bounce
by mail).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from digest.bounces.providers import (
    ProviderEvent,
    mailgun_events,
    postmark_events,
    process_event,
    sendgrid_events,
    ses_events,
)
from digest.errors import BounceError, WebhookRefused
from digest.models import ProviderEvent as SeenEvent
from digest.settings import Settings
from digest.web.deps import SessionDep, SettingsDep
from digest.web.providers import signatures

log = logging.getLogger(__name__)
# Not in the API's OpenAPI schema: these are called by the providers, not with the API token.
router = APIRouter(prefix="/webhooks", tags=["provider webhooks"], include_in_schema=False)
PROVIDER_EVENTS_KEPT_DAYS = 30  # how long an event id is remembered for replay refusal
MAX_BODY = 1024 * 1024  # a provider's post is a few KB; SendGrid batches up to ~1,000 events


def _now(request: Request) -> float:
    """The request's clock: ``app.state.clock`` when a test set one, else the time."""
    clock: Callable[[], float] = getattr(request.app.state, "clock", time.time)
    return clock()


async def _body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(413, f"webhook body larger than {MAX_BODY // 1024} KB")
    return body


def _json(body: bytes, provider: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise HTTPException(400, f"the {provider} webhook body is not JSON; point the "
                            "provider's webhook at this URL unchanged") from exc


def _refused(provider: str, request: Request, exc: WebhookRefused) -> HTTPException:
    client = request.client.host if request.client else "?"
    log.warning("%s webhook refused from %s: %s", provider, client, exc)
    headers = {"WWW-Authenticate": 'Basic realm="webhooks"'} if exc.status == 401 else None
    return HTTPException(exc.status, str(exc), headers=headers)


async def _process(provider: str, event_id: str | None, events: list[ProviderEvent],
                   request: Request, session: Session, settings: Settings) -> JSONResponse:
    def work() -> JSONResponse:
        now = datetime.fromtimestamp(_now(request), UTC)
        if event_id and not _first_time(session, provider, event_id, now):
            session.rollback()
            log.warning("%s webhook refused: event %s was processed before (a replay)",
                        provider, event_id[:64])
            return JSONResponse({"detail": f"this {provider} event was processed before: "
                                 "refused as a replay"}, status_code=403)
        outcomes = [process_event(session, e, settings=settings).as_dict() for e in events]
        session.commit()
        for e, o in zip(events, outcomes, strict=True):
            log.info("%s %s %s: %s", provider, e.name, o.get("email") or e.recipient or "-",
                     o["reason"])
        return JSONResponse({"events": outcomes})

    return await run_in_threadpool(work)


def _first_time(session: Session, provider: str, event_id: str, now: datetime) -> bool:
    """Remember the event; False when it was remembered before (a replay). Events older
    than PROVIDER_EVENTS_KEPT_DAYS are forgotten on the way (an index range, usually empty)."""
    session.execute(delete(SeenEvent).where(
        SeenEvent.provider == provider,
        SeenEvent.seen_at < now - timedelta(days=PROVIDER_EVENTS_KEPT_DAYS)))
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (insert(SeenEvent).values(provider=provider, event_id=event_id[:128], seen_at=now)
            .on_conflict_do_nothing().returning(SeenEvent.event_id))
    return session.scalar(stmt) is not None


@router.post("/ses", summary="Amazon SES notifications through SNS (HTTPS subscription)")
async def ses_webhook(request: Request, session: SessionDep, settings: SettingsDep):
    if not settings.sns_topic_arns:
        raise HTTPException(404, "Not Found")
    message = _json(await _body(request), "SNS")
    if not isinstance(message, dict):
        raise HTTPException(400, "the SNS message is not a JSON object")
    try:
        await run_in_threadpool(signatures.verify_sns, message, settings.sns_cert_hosts)
        if message.get("TopicArn") not in settings.sns_topic_arns:
            raise WebhookRefused(f"SNS topic {str(message.get('TopicArn'))[:200]!r} is not in "
                                 "DIGEST_SNS_TOPIC_ARNS", 403)
    except WebhookRefused as exc:
        raise _refused("ses", request, exc) from exc
    kind = message["Type"]
    if kind == "SubscriptionConfirmation":
        return await run_in_threadpool(_confirm, message, settings)
    if kind == "UnsubscribeConfirmation":
        log.warning("SNS unsubscribed this endpoint from %s", message.get("TopicArn"))
        return {"events": []}
    try:
        events = ses_events(str(message.get("Message") or ""))
    except BounceError as exc:
        raise HTTPException(400, str(exc)) from exc
    return await _process("ses", str(message.get("MessageId") or ""), events, request,
                          session, settings)


def _confirm(message: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Confirm a subscription to an allowed topic by fetching its SubscribeURL."""
    url = str(message.get("SubscribeURL") or "")
    if not signatures.allowed_url(url, settings.sns_cert_hosts):
        log.warning("SNS SubscribeURL %r is not on an allowed SNS host: not confirmed", url[:200])
        raise HTTPException(403, "the SubscribeURL is not on an allowed SNS host")
    try:
        httpx.get(url, timeout=10.0, follow_redirects=False).raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("confirming the SNS subscription to %s failed: %s",
                    message.get("TopicArn"), exc)
        raise HTTPException(503, "the subscription could not be confirmed; SNS will ask "
                            "again") from exc
    log.info("confirmed the SNS subscription to %s", message.get("TopicArn"))
    return {"confirmed": message.get("TopicArn")}


@router.post("/mailgun", summary="Mailgun webhooks (signed with the webhook signing key)")
async def mailgun_webhook(request: Request, session: SessionDep, settings: SettingsDep):
    if settings.mailgun_signing_key is None:
        raise HTTPException(404, "Not Found")
    payload = _json(await _body(request), "Mailgun")
    if not isinstance(payload, dict):
        raise HTTPException(400, "the Mailgun webhook body is not a JSON object")
    signature = payload.get("signature")
    try:
        token = signatures.verify_mailgun(
            signature if isinstance(signature, dict) else {},
            settings.mailgun_signing_key.get_secret_value(), now=_now(request),
            max_age=settings.webhook_max_age_seconds)
    except WebhookRefused as exc:
        raise _refused("mailgun", request, exc) from exc
    return await _process("mailgun", token, mailgun_events(payload), request, session, settings)


@router.post("/sendgrid", summary="SendGrid signed event webhook")
async def sendgrid_webhook(request: Request, session: SessionDep, settings: SettingsDep):
    if not settings.sendgrid_public_key:
        raise HTTPException(404, "Not Found")
    body = await _body(request)
    try:
        event_id = signatures.verify_sendgrid(
            body, request.headers.get("X-Twilio-Email-Event-Webhook-Signature"),
            request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp"),
            settings.sendgrid_public_key, now=_now(request),
            max_age=settings.webhook_max_age_seconds)
    except WebhookRefused as exc:
        raise _refused("sendgrid", request, exc) from exc
    payload = _json(body, "SendGrid")
    if not isinstance(payload, list):
        raise HTTPException(400, "the SendGrid webhook body is not a JSON array of events")
    return await _process("sendgrid", event_id, sendgrid_events(payload), request, session,
                          settings)


@router.post("/postmark", summary="Postmark webhooks (HTTP basic auth)")
async def postmark_webhook(request: Request, session: SessionDep, settings: SettingsDep):
    password = settings.postmark_webhook_password
    if password is None or not settings.postmark_webhook_user:
        raise HTTPException(404, "Not Found")
    try:
        signatures.verify_basic(request.headers.get("Authorization"),
                                settings.postmark_webhook_user, password.get_secret_value())
    except WebhookRefused as exc:
        raise _refused("postmark", request, exc) from exc
    payload = _json(await _body(request), "Postmark")
    if not isinstance(payload, dict):
        raise HTTPException(400, "the Postmark webhook body is not a JSON object")
    record = str(payload.get("RecordType") or "")
    ident = payload.get("ID") or payload.get("MessageID")
    rcpt = payload.get("Email") or payload.get("Recipient") or ""
    event_id = f"{record}:{ident}:{rcpt}" if ident else None
    return await _process("postmark", event_id, postmark_events(payload), request, session,
                          settings)
