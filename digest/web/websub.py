"""The WebSub callback: ``GET /websub/{token}`` (a hub verifies our intent) and
``POST /websub/{token}`` (a hub pushes the topic's new content). No login: the token is an
unguessable capability and every push must carry our per-subscription secret's HMAC
(``digest.ingest.websub``, ADR 0035).

Answers, per the W3C Recommendation: a verification we did not ask for is 404; a push to a
callback we do not know (or left) is 410, which lets the hub drop the subscription; a body
over ``DIGEST_SOURCE_MAX_BYTES`` is 413, read no further. A push that is unsigned or wrongly
signed is ignored (nothing stored, a warning with the source id, counted) and still answered
202, as the spec allows: the hub learns nothing it could use to probe the secret, and a
legitimate hub with a stale secret stops retrying a body we will never take; polling
catches up on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import APIRouter, BackgroundTasks, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from digest.ingest.websub import Push, receive_push, verify_intent
from digest.web.deps import SessionDep, SettingsDep

log = logging.getLogger(__name__)
router = APIRouter(prefix="/websub", tags=["websub"], include_in_schema=False)


def add_metrics(app: FastAPI) -> None:
    """``digest_websub_pushes_total{outcome}``: pushes this web process answered (a process
    counter, unlike the database figures of ``/metrics``: a refused push leaves no row)."""
    app.state.websub_pushes = Counter(
        "digest_websub_pushes", "WebSub pushes received, by what became of them (stored, "
        "unsigned, bad_signature, unreadable, gone, too_large).", ["outcome"],
        registry=app.state.metrics_registry)


def _count(request: Request, outcome: str) -> None:
    counter = getattr(request.app.state, "websub_pushes", None)
    if counter is not None:
        counter.labels(outcome).inc()


def _now(request: Request) -> datetime:
    """The request's clock: ``app.state.clock`` when a test set one, else the time."""
    clock: Callable[[], float] = getattr(request.app.state, "clock", time.time)
    return datetime.fromtimestamp(clock(), UTC)


@router.get("/{token}")
def verify(token: str, request: Request, session: SessionDep) -> Response:
    answer = verify_intent(session, token, request.query_params, now=_now(request))
    if answer is None:
        session.rollback()
        return PlainTextResponse("no such pending subscription", status_code=404)
    session.commit()
    return PlainTextResponse(answer)


async def _capped_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


@router.post("/{token}")
async def push(token: str, request: Request, background: BackgroundTasks,
               session: SessionDep, settings: SettingsDep) -> Response:
    body = await _capped_body(request, settings.source_max_bytes)
    if body is None:
        log.warning("websub: push to callback %s… refused: larger than %s bytes "
                    "(DIGEST_SOURCE_MAX_BYTES)", token[:6], settings.source_max_bytes)
        _count(request, "too_large")
        return PlainTextResponse(f"the body is over the {settings.source_max_bytes}-byte "
                                 "limit", status_code=413)

    def work() -> Push:
        result = receive_push(session, token, body,
                              signature=request.headers.get("x-hub-signature"),
                              content_type=request.headers.get("content-type"),
                              settings=settings, now=_now(request))
        session.commit()
        if result.new_item_ids:
            # After the commit, and after the answer: the hub waits for no alert being sent.
            background.add_task(request.app.state.queue.publish_items, result.new_item_ids)
        return result.outcome

    outcome = await run_in_threadpool(work)
    _count(request, outcome.value)
    if outcome is Push.gone:
        return PlainTextResponse("no subscription has this callback", status_code=410)
    return Response(status_code=202)
