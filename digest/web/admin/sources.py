"""The admin's Sources page: every registered source with its health in words and colour
(green ok; grey new or paused; amber failing; red stale, failing for
``DIGEST_SOURCE_STALE_HOURS``), its last error, last success, next poll and items added; a form
to add one; pause, resume, poll-now and remove buttons.

Every change goes through ``digest.ingest.registry`` and a poll through
``digest.ingest.polling``, as in the CLI and the API, so the same refusals apply (shown above
the table, with what was typed kept in the add form). Forms post the admin's signed CSRF token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
from sqladmin import expose
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from digest.errors import DigestError, NotFoundError, ValidationError
from digest.ingest import polling, registry
from digest.models import Source, SourceKind, utcnow
from digest.web.admin.forms import AdminPage, status_of, text_field

SOURCE_FIELDS = ("url", "kind", "every", "content_type", "location", "language",
                 "backfill_pages")
ACTIONS = ("pause", "resume", "poll", "remove")
# What each health word says beside its colour (colour alone would not reach everyone).
HEALTH_WORDS = {
    "ok": "OK",
    "new": "New: not polled yet",
    "paused": "Paused",
    "failing": "Failing",
    "stale": "Stale: failing too long",
}


@dataclass(frozen=True)
class SourceRow:
    """A source as the table shows it (read inside the session, shown after it)."""

    id: int
    url: str
    kind: str
    every: str
    paused: bool
    health: str
    health_words: str
    last_error: str | None
    last_status: int | None
    failing_since: datetime | None
    consecutive_failures: int
    last_success_at: datetime | None
    last_attempt_at: datetime | None
    next_poll_at: datetime | None
    items_added: int
    polls: int
    not_modified: int
    websub_state: str | None

    @classmethod
    def of(cls, source: Source, *, now: datetime, stale_hours: float) -> SourceRow:
        word = registry.health(source, now=now, stale_hours=stale_hours)
        return cls(
            id=source.id, url=source.url, kind=str(source.kind),
            every=registry.format_interval(source.every_seconds), paused=source.paused,
            health=word, health_words=HEALTH_WORDS[word], last_error=source.last_error,
            last_status=source.last_status, failing_since=source.failing_since,
            consecutive_failures=source.consecutive_failures or 0,
            last_success_at=source.last_success_at, last_attempt_at=source.last_attempt_at,
            next_poll_at=None if source.paused else source.next_poll_at,
            items_added=source.items_added or 0, polls=source.polls or 0,
            not_modified=source.not_modified or 0,
            websub_state=str(source.websub_state) if source.websub_state else None)


def _blank_values() -> dict[str, str]:
    return {"url": "", "kind": SourceKind.feed.value, "every": "15m", "content_type": "",
            "location": "", "language": "", "backfill_pages": "0"}


def _backfill(text: str) -> int:
    if not text.isdigit():
        raise ValidationError(f"bad backfill pages {text!r}: give a whole number from 0 to 1000")
    return int(text)


class SourcesPage(AdminPage):
    name, icon = "Sources", "fa-solid fa-rss"

    @expose("/sources", methods=["GET", "POST"], identity="sources")
    async def sources(self, request: Request) -> Response:
        """The table; a POST adds a source."""
        values, notice, error, status_code = _blank_values(), None, None, 200
        if request.method == "POST":
            try:
                form = await self.checked_form(request)
                values |= {name: text_field(form, name) for name in SOURCE_FIELDS
                           if name in form}
                added = await self.in_session(lambda s: self._add(s, values))
                notice, values = f"Added source {added}; it is polled at once.", _blank_values()
            except DigestError as exc:
                error, status_code = str(exc), status_of(exc)
        return await self._page(request, status_code, values=values, notice=notice,
                                error=error)

    @expose("/sources/{source_id}/{action}", methods=["POST"], identity="source-action")
    async def source_action(self, request: Request) -> Response:
        """Pause, resume, poll now or remove one source, then the table with what happened."""
        notice, error, status_code = None, None, 200
        try:
            await self.checked_form(request)
            action = request.path_params["action"]
            source_id = request.path_params["source_id"]
            if action not in ACTIONS or not str(source_id).isdigit():
                raise ValidationError(f"unknown source action {action!r}; use one of: "
                                      f"{', '.join(ACTIONS)}")
            if action == "poll":
                notice, error = await self._poll(int(source_id))
            else:
                notice = await self.in_session(
                    lambda s: self._change(s, int(source_id), action))
        except DigestError as exc:
            error = str(exc)
            status_code = 404 if isinstance(exc, NotFoundError) else status_of(exc)
        return await self._page(request, status_code, values=_blank_values(), notice=notice,
                                error=error)

    async def _page(self, request: Request, status_code: int, **context: Any) -> Response:
        settings = self.digest_settings
        now = utcnow()
        rows = await self.in_session(lambda s: [
            SourceRow.of(source, now=now, stale_hours=settings.source_stale_hours)
            for source in registry.list_sources(s)])
        return await self.page(request, "digest_sources.html", status_code, rows=rows,
                               kinds=[k.value for k in SourceKind],
                               stale_hours=settings.source_stale_hours, **context)

    def _add(self, session: Session, values: dict[str, str]) -> int:
        source = registry.add_source(
            session, values["url"], settings=self.digest_settings, kind=values["kind"],
            every=values["every"] or "15m", content_type=values["content_type"] or None,
            location=values["location"] or None, language=values["language"] or None,
            backfill_pages=_backfill(values["backfill_pages"] or "0"))
        session.commit()
        return source.id

    def _change(self, session: Session, source_id: int, action: str) -> str:
        if action == "remove":
            url = registry.remove_source(session, source_id).url
            session.commit()
            return f"Removed source {source_id} ({url}); the items it brought stay."
        source = registry.set_paused(session, source_id, action == "pause")
        session.commit()
        return (f"Paused source {source_id}: it is not polled until resumed." if source.paused
                else f"Resumed source {source_id}: it is polled at once.")

    async def _poll(self, source_id: int) -> tuple[str | None, str | None]:
        """What polling the source now did: a notice, or the poll's error in words."""
        await self.in_session(lambda s: registry.get_source(s, source_id))  # 404 first
        outcomes = await anyio.to_thread.run_sync(
            lambda: polling.poll_due(self.digest_settings, source_ids=[source_id]))
        outcome = next((o for o in outcomes if o.source_id == source_id), None)
        if outcome is None:
            return (f"Source {source_id} is being polled by another poller right now; "
                    "see the table in a moment.", None)
        if outcome.status == "failed":
            return None, f"Polling source {source_id} failed: {outcome.error}"
        said = {"stored": f"{outcome.new_items} new item(s) stored",
                "not_modified": "not modified since the last poll (304)",
                "skipped": f"skipped ({outcome.error or 'not due'})"}
        return f"Polled source {source_id}: {said.get(outcome.status, outcome.status)}.", None
