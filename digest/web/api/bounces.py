"""Bounce reports posted by the MTA, tied to their delivery and acted on."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request

from digest.web.deps import SessionDep, SettingsDep

router = APIRouter()


@router.post(
    "/bounces",
    tags=["bounces"],
    openapi_extra={
        "requestBody": {"required": True,
                        "content": {"message/rfc822": {"schema": {"type": "string"}}}}
    },
    description="A bounce (RFC 3464 delivery-status report) as the raw message, e.g. piped "
    "from the MTA's bounce address. Tied to its delivery by the VERP return path "
    "(bounces+<delivery id>@...), else by the returned Message-ID. 5.1.x suppresses the "
    "address; soft bounces count toward the threshold; 5.7.x is recorded only. An ARF "
    "feedback report (a complaint) suppresses its reader. Sending the same report twice "
    "records nothing new.",
)
async def receive_bounce(request: Request, session: SessionDep, settings: SettingsDep,
                         envelope_to: str | None = Query(default=None, max_length=320)):
    from starlette.concurrency import run_in_threadpool

    from digest.bounces import MAX_BOUNCE_BYTES, process_bounce_message

    raw = await request.body()
    if len(raw) > MAX_BOUNCE_BYTES:
        raise HTTPException(413, f"bounce larger than {MAX_BOUNCE_BYTES // (1024 * 1024)} MB")

    def work() -> dict:
        outcome = process_bounce_message(session, raw, envelope_to=envelope_to,
                                         settings=settings)
        session.commit()
        return outcome.as_dict()

    return await run_in_threadpool(work)
