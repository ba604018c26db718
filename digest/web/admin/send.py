"""The admin's ad-hoc send: choose the items and the segment, see a dry run (counts, the
forecast, the message one chosen reader would get), confirm, then watch the run.

The steps are the API's and the CLI's: ``AdhocQuery.check``,
``plan_adhoc_run(dry_run=True)``, ``forecast_run`` (``digest.delivery.forecast``),
``render_delivery`` of a dry-run row, and on confirm ``plan_adhoc_run`` of the same query
(read back from the dry run's parameters, so what is sent is what was counted) with its rows
enqueued through ``digest.delivery.periodic.queue_for`` after the commit.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from typing import Any

from sqladmin import expose
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from digest import delivery, selection
from digest.delivery.forecast import forecast_run
from digest.delivery.periodic import queue_for
from digest.delivery.progress import runs_eta
from digest.errors import DigestError, ValidationError
from digest.models import Delivery, DeliveryStatus, DigestRun, RunKind
from digest.web.admin.forms import AdminPage, status_of, taxonomy_names, text_field

SEND_FIELDS = ("themes", "locations", "content_types", "published_from", "published_to",
               "item_ids", "key")
FREQUENCIES = ("immediate", "daily", "weekly")
SHOWN_READERS = 200  # readers offered for the preview; the counts cover them all
REFRESH_SECONDS = 2
_KEY = re.compile(r"^[A-Za-z0-9:._-]{1,150}$")  # as the API's slot_key


def _names(text: str) -> tuple[str, ...]:
    """Names one a line (or separated by '|'), as typed: unknown ones fail in planning."""
    return tuple(n.strip() for line in text.splitlines() for n in line.split("|") if n.strip())


def _day(text: str, label: str, *, end: bool) -> datetime | None:
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise ValidationError(f"bad {label} date {text!r}: use YYYY-MM-DD") from exc
    return datetime.combine(day, time.max if end else time.min, tzinfo=UTC)


def _item_ids(text: str) -> tuple[int, ...]:
    ids = []
    for part in re.split(r"[\s,]+", text):
        if not part:
            continue
        if not part.isdigit() or not 0 < int(part) < 2**63:
            raise ValidationError(f"bad item id {part!r}: give whole numbers separated by "
                                  "commas or spaces")
        ids.append(int(part))
    return tuple(ids)


def query_from_form(form: FormData) -> selection.AdhocQuery:
    query = selection.AdhocQuery(
        themes=_names(text_field(form, "themes")),
        locations=_names(text_field(form, "locations")),
        content_types=_names(text_field(form, "content_types")),
        published_from=_day(text_field(form, "published_from"), "'published from'", end=False),
        published_to=_day(text_field(form, "published_to"), "'published to'", end=True),
        item_ids=_item_ids(text_field(form, "item_ids")),
        frequencies=tuple(str(f) for f in form.getlist("frequencies")),
        also_in_digests=text_field(form, "also_in_digests") == "on",
    )
    query.check()
    return query


class AdhocSendPage(AdminPage):
    name, icon = "Ad-hoc send", "fa-solid fa-bullhorn"

    @expose("/send", methods=["GET", "POST"], identity="adhoc-send")
    async def adhoc_send(self, request: Request) -> Response:
        """GET: the form. POST: its dry run, with the counts and the readers to preview."""
        values: dict[str, Any] = ({name: "" for name in SEND_FIELDS}
                                  | {"frequencies": [], "also_in_digests": False})
        if request.method == "GET":
            return await self._form(request, values)
        try:
            form = await self.checked_form(request)
            values |= {name: text_field(form, name) for name in SEND_FIELDS}
            values["frequencies"] = [str(f) for f in form.getlist("frequencies")]
            values["also_in_digests"] = text_field(form, "also_in_digests") == "on"
            key = text_field(form, "key")
            if key and not _KEY.match(key):
                raise ValidationError("bad key: use up to 150 letters, digits and : . _ -")
            query = query_from_form(form)
            run_id = await self.in_session(lambda s: self._dry_run(s, query))
        except DigestError as exc:
            return await self._form(request, values, error=str(exc), status_code=status_of(exc))
        target = request.url_for("admin:view-adhoc-dry-run", run_id=str(run_id))
        suffix = f"?key={key}" if key else ""
        return RedirectResponse(f"{target}{suffix}", status_code=303)

    async def _form(self, request: Request, values: dict[str, Any], error: str | None = None,
                    status_code: int = 200) -> Response:
        names = await self.in_session(taxonomy_names)
        return await self.page(request, "digest_send.html", status_code, values=values,
                               error=error, names=names, frequencies=FREQUENCIES)

    @staticmethod
    def _dry_run(session: Session, query: selection.AdhocQuery) -> int:
        planned = selection.plan_adhoc_run(session, query, dry_run=True)
        session.commit()
        assert planned.run_id is not None  # an ad-hoc run is always created
        return planned.run_id

    @expose("/send/dry-run/{run_id:int}", methods=["GET"], identity="adhoc-dry-run")
    async def adhoc_dry_run(self, request: Request) -> Response:
        run_id = int(request.path_params["run_id"])
        reader = request.query_params.get("reader", "")

        def read(session: Session) -> dict[str, Any] | None:
            run = session.get(DigestRun, run_id)
            if run is None or run.kind != RunKind.adhoc or not run.dry_run:
                return None
            rows = session.execute(
                select(Delivery.id, Delivery.email, Delivery.item_count)
                .where(Delivery.run_id == run_id, Delivery.status == DeliveryStatus.dry_run)
                .order_by(Delivery.id).limit(SHOWN_READERS)).all()
            chosen = int(reader) if reader.isdigit() else (rows[0].id if rows else None)
            if chosen is not None and chosen not in {r.id for r in rows}:
                chosen = None
            rendered = (delivery.render_delivery(session, chosen, settings=self.digest_settings)
                        if chosen is not None else None)
            return {"run": run, "rows": rows, "chosen": chosen, "rendered": rendered,
                    "progress": delivery.run_progress(session, run_id),
                    # recipients, messages, average size, duration at the limit and measured
                    "forecast": forecast_run(session, run_id, self.digest_settings).lines(),
                    "messages": sum(r.item_count for r in rows)}

        found = await self.in_session(read)
        if found is None:
            return await self.page(request, "digest_message.html", 404,
                                   title="No such dry run",
                                   message=f"There is no ad-hoc dry run #{run_id}.")
        return await self.page(request, "digest_dry_run.html", **found,
                               key=request.query_params.get("key", ""))

    @expose("/send/confirm/{run_id:int}", methods=["POST"], identity="adhoc-confirm")
    async def adhoc_confirm(self, request: Request) -> Response:
        """Send what dry run ``run_id`` counted: the same query, planned for real."""
        run_id = int(request.path_params["run_id"])
        try:
            form = await self.checked_form(request)
            key = text_field(form, "key")
            if key and not _KEY.match(key):
                raise ValidationError("bad key: use up to 150 letters, digits and : . _ -")
            planned = await self.in_session(lambda s: self._send(s, run_id, key))
        except DigestError as exc:
            return await self.page(request, "digest_message.html", status_of(exc),
                                   title="Not sent", message=str(exc))
        if planned.created and planned.pending_ids:
            # After the commit: a worker must find the rows.
            queue_for(self.digest_settings).deliver(planned.pending_ids)
        target = request.url_for("admin:view-adhoc-run", run_id=str(planned.run_id))
        return RedirectResponse(f"{target}{'' if planned.created else '?again=1'}",
                                status_code=303)

    @staticmethod
    def _send(session: Session, dry_run_id: int, key: str) -> selection.PlannedRun:
        dry = session.get(DigestRun, dry_run_id)
        if dry is None or dry.kind != RunKind.adhoc or not dry.dry_run:
            raise ValidationError(f"there is no ad-hoc dry run #{dry_run_id}; start again from "
                                  "the send form")
        query = selection.AdhocQuery.from_params(dry.params or {})
        query.check()
        planned = selection.plan_adhoc_run(session, query,
                                           slot_key=f"adhoc:{key}" if key else None)
        session.commit()
        return planned

    @expose("/send/run/{run_id:int}", methods=["GET"], identity="adhoc-run")
    async def adhoc_run(self, request: Request) -> Response:
        run_id = int(request.path_params["run_id"])

        def read(session: Session) -> dict[str, Any] | None:
            run = session.get(DigestRun, run_id)
            if run is None:
                return None
            progress = delivery.run_progress(session, run_id)
            return {"run": run, "progress": progress,
                    "eta": runs_eta(session, {run_id: progress},
                                    settings=self.digest_settings)[run_id].describe()}

        found = await self.in_session(read)
        if found is None:
            return await self.page(request, "digest_message.html", 404, title="No such run",
                                   message=f"There is no run #{run_id}.")
        progress = found["progress"]
        unfinished = sum(progress.get(s, 0) for s in ("pending", "sending", "deferred"))
        return await self.page(
            request, "digest_run.html", **found, unfinished=unfinished,
            again=request.query_params.get("again") == "1",
            refresh=REFRESH_SECONDS if unfinished or found["run"].status == "planned" else None,
            counts=[(k, v) for k, v in sorted(progress.items()) if k != "total"])
