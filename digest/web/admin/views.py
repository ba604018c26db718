"""The admin's views, one per table. Read-mostly: changes go through the project's functions
(suppress, unsuppress, erase, re-queue, lift a domain's pause), so the same validation and
the same state rules apply as everywhere else."""

from __future__ import annotations

import html

import anyio
from sqladmin import ModelView, action
from sqladmin.filters import OperationColumnFilter, StaticValuesFilter
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from digest import delivery, records, subscribers
from digest.delivery.periodic import queue_for
from digest.delivery.progress import empty_run
from digest.models import (
    Complaint,
    Delivery,
    DeliveryStatus,
    DigestRun,
    DomainPause,
    Item,
    RunStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
)
from digest.settings import Settings
from digest.tokens import links_for
from digest.web.admin import explain as explain_pages


def _ids(request: Request) -> list[int]:
    return [int(p) for p in request.query_params.get("pks", "").split(",") if p.strip().isdigit()]


def _back(request: Request, view: ModelView) -> RedirectResponse:
    return RedirectResponse(request.url_for("admin:list", identity=view.identity), status_code=302)


def _session(view: ModelView):
    return view.session_maker(expire_on_commit=False)


# The most rows a list page counts for its pagination: sqladmin counts every row the list
# shows (a scan of ten million deliveries a page load); counted up to this bound, with
# ORDER BY id DESC LIMIT on the primary key, a page costs the same at any size, and the
# pages past it are reached by filtering or searching.
COUNT_BOUND = 10_000


class BoundedCount:
    """For the views of the large tables: the pagination counts at most ``COUNT_BOUND``
    rows (the list's own query, filters and search included, with a LIMIT)."""

    async def count(self, request: Request, stmt=None) -> int:
        froms = stmt.get_final_froms() if stmt is not None else []
        inner = getattr(froms[0], "element", None) if len(froms) == 1 else None
        if inner is None:  # not the list's count (sqladmin's own shape changed): as is
            return await super().count(request, stmt)  # type: ignore[misc]
        # Without the page's ORDER BY: the rows are counted in whichever order an index
        # gives them (a filter on status reads the status index, not the primary key).
        bounded = select(func.count()).select_from(
            inner.order_by(None).limit(COUNT_BOUND).subquery())
        return await super().count(request, bounded)  # type: ignore[misc]


class SubscriberAdmin(BoundedCount, ModelView, model=Subscriber):
    digest_settings: Settings
    name, name_plural, icon = "Subscriber", "Subscribers", "fa-solid fa-user"
    can_create = can_edit = can_delete = False
    column_list = [
        Subscriber.id,
        Subscriber.email,
        Subscriber.status,
        Subscriber.frequency,
        "choices",
        Subscriber.timezone,
        Subscriber.created_at,
        Subscriber.confirmed_at,
    ]
    column_details_list = [
        Subscriber.id,
        Subscriber.email,
        Subscriber.status,
        Subscriber.frequency,
        "choices",
        Subscriber.timezone,
        Subscriber.weekday,
        Subscriber.hour,
        Subscriber.group_by,
        Subscriber.watermark,
        Subscriber.soft_bounces,
        Subscriber.created_at,
        Subscriber.confirmed_at,
        Subscriber.unsubscribed_at,
    ]
    column_labels = {"choices": "Filters"}
    column_searchable_list = [Subscriber.email]
    column_sortable_list = [Subscriber.id, Subscriber.email, Subscriber.created_at]
    column_default_sort = [(Subscriber.id, True)]
    column_filters = [
        StaticValuesFilter(Subscriber.status, [(s.value, s.value) for s in SubscriberStatus]),
        StaticValuesFilter(
            Subscriber.frequency, [(f, f) for f in ("immediate", "daily", "weekly")]
        ),
        OperationColumnFilter(Subscriber.timezone),
    ]
    column_formatters = column_formatters_detail = {
        "choices": lambda m, _a: (
            "; ".join(subscribers.describe_filter(f) for f in m.filters) or "everything"
        ),
    }

    @staticmethod
    def _with_filters(stmt):
        return stmt.options(*subscribers.with_filters())

    def list_query(self, request: Request):
        return self._with_filters(select(Subscriber))

    def details_query(self, request: Request):
        return self._with_filters(super().details_query(request))

    @action(
        name="suppress",
        label="Suppress (send nothing)",
        confirmation_message="Send nothing more to the selected addresses?",
    )
    async def suppress(self, request: Request) -> Response:
        return await _change_addresses(
            self, request, Subscriber,
            lambda session, email: subscribers.suppress(session, email, SuppressionReason.admin,
                                                        "suppressed in the admin"))

    @action(name="unsuppress", label="Unsuppress")
    async def unsuppress(self, request: Request) -> Response:
        return await _change_addresses(self, request, Subscriber, subscribers.unsuppress)

    @action(
        name="erase",
        label="Erase (delete all their data)",
        confirmation_message="Erase the selected subscribers, their filters, delivery log and "
        "bounce reports? Their addresses stay suppressed. This cannot be undone.",
    )
    async def erase(self, request: Request) -> Response:
        return await _change_addresses(
            self, request, Subscriber,
            lambda session, email: subscribers.erase_subscriber(
                session, subscribers.find_subscriber(session, email)))

    @action(name="preferences", label="Open preferences page", add_in_list=False)
    async def preferences(self, request: Request) -> Response:
        ids = _ids(request)
        if len(ids) != 1:
            return _back(request, self)
        settings = self.digest_settings
        url = links_for(ids[0], settings)["manage_url"]
        # Relative: the admin may be reached on another host name than public_base_url.
        path = url[len(settings.public_base_url.rstrip("/")) :]
        return RedirectResponse(path, status_code=302)

    @action(name="explain", label="Explain an item", add_in_list=False)
    async def explain(self, request: Request) -> Response:
        """Why an item did or did not reach this reader (digest.selection.explain)."""
        ids = _ids(request)
        if len(ids) != 1:
            return _back(request, self)
        url = str(request.url_for(f"admin:action-{self.identity}-explain"))

        def work() -> tuple[int, str]:
            with _session(self) as session:
                return explain_pages.subscriber_page(
                    session, self.digest_settings, ids[0],
                    request.query_params.get("item", "")[:2000], url)

        status, html = await anyio.to_thread.run_sync(work)
        return HTMLResponse(html, status_code=status)


class ItemAdmin(ModelView, model=Item):
    name, name_plural, icon = "Item", "Items", "fa-solid fa-newspaper"
    can_create = can_edit = can_delete = False
    column_list = [
        Item.id,
        Item.title,
        Item.published_at,
        Item.ingested_at,
        Item.content_type,
        Item.is_backfill,
        Item.source,
    ]
    column_details_list = [
        Item.id,
        Item.guid,
        Item.url,
        Item.title,
        Item.summary,
        Item.published_at,
        Item.ingested_at,
        Item.content_type,
        Item.themes,
        Item.locations,
        Item.is_backfill,
        Item.source,
    ]
    column_searchable_list = [Item.title, Item.guid]
    column_sortable_list = [Item.id, Item.published_at, Item.ingested_at]
    column_default_sort = [(Item.id, True)]
    column_formatters = {
        Item.content_type: lambda m, _a: m.content_type.name if m.content_type else ""
    }


def _include_empty(request: Request) -> bool:
    return request.query_params.get("include_empty", "") in ("1", "true", "on")


class RunAdmin(ModelView, model=DigestRun):
    digest_settings: Settings  # set by mount_admin: the forecast reads the rate limit
    name, name_plural, icon = "Run", "Runs", "fa-solid fa-paper-plane"
    can_create = can_edit = can_delete = False
    list_template = "digest_runs_list.html"
    column_list = [
        DigestRun.id,
        DigestRun.kind,
        DigestRun.slot_key,
        DigestRun.status,
        DigestRun.dry_run,
        "progress",
        "eta",
        DigestRun.created_at,
        DigestRun.finished_at,
    ]
    column_details_list = [
        DigestRun.id,
        DigestRun.kind,
        DigestRun.slot_key,
        DigestRun.status,
        DigestRun.dry_run,
        "progress",
        "eta",
        "forecast",
        DigestRun.planned_count,
        DigestRun.skipped_count,
        DigestRun.params,
        DigestRun.cutoff,
        DigestRun.created_at,
        DigestRun.finished_at,
    ]
    column_labels = {"progress": "Deliveries", "eta": "Progress / ETA", "forecast": "Forecast"}
    column_sortable_list = [DigestRun.id, DigestRun.created_at]
    column_default_sort = [(DigestRun.id, True)]
    column_filters = [
        StaticValuesFilter(
            DigestRun.kind, [(k, k) for k in ("weekly", "daily", "immediate", "adhoc")]
        ),
        StaticValuesFilter(DigestRun.status, [(s, s) for s in ("planned", "sending", "done")]),
    ]
    column_formatters = column_formatters_detail = {
        "progress": lambda m, _a: delivery.describe_progress(getattr(m, "_progress", {})),
        "eta": lambda m, _a: m._eta.describe() if getattr(m, "_eta", None) else "",
        "forecast": lambda m, _a: "; ".join(m._forecast.lines())
        if getattr(m, "_forecast", None) else "",
    }

    def _attach_progress(self, runs: list[DigestRun], forecast: bool = False) -> None:
        """One grouped query for the whole page, not one per run; ``forecast``: a dry run's
        forecast too (it builds up to 50 messages: the details page only)."""
        from digest.delivery.forecast import forecast_run
        from digest.delivery.progress import runs_eta

        with _session(self) as session:
            progress = delivery.runs_progress(session, [r.id for r in runs])
            etas = runs_eta(session, {r.id: progress[r.id] for r in runs
                                      if r.status in (RunStatus.sending, RunStatus.planning)},
                            settings=self.digest_settings)
            for run in runs:
                # Not columns: read by the formatters of these pages only.
                run._progress = progress[run.id]  # type: ignore[attr-defined]
                run._eta = etas.get(run.id)  # type: ignore[attr-defined]
                run._forecast = (  # type: ignore[attr-defined]
                    forecast_run(session, run.id, self.digest_settings)
                    if forecast and run.dry_run else None)

    def list_query(self, request: Request):
        # Runs that came to nothing (the hourly slots nobody was due in) are folded, as in
        # 'digest runs' and the API; ?include_empty=1 shows them.
        if _include_empty(request):
            return select(DigestRun)
        return select(DigestRun).where(~empty_run())

    async def list_context(self, request: Request) -> dict[str, object]:
        def count() -> int:
            with _session(self) as session:
                return session.scalar(select(func.count()).select_from(DigestRun)
                                      .where(empty_run())) or 0

        return {"include_empty": _include_empty(request),
                "empty_runs": await anyio.to_thread.run_sync(count)}

    async def list(self, request: Request):
        pagination = await super().list(request)
        await anyio.to_thread.run_sync(self._attach_progress, list(pagination.rows))
        return pagination

    async def get_object_for_details(self, request: Request):
        run = await super().get_object_for_details(request)
        if run is not None:
            await anyio.to_thread.run_sync(self._attach_progress, [run], True)
        return run

    @action(
        name="resend-failed",
        label="Resend to the failed ones",
        confirmation_message="Send the failed deliveries of the selected finished runs once "
        "more (same items, to the readers still subscribed and not suppressed)?",
    )
    async def resend_failed(self, request: Request) -> Response:
        from digest.errors import ValidationError
        from digest.selection.resend import plan_resend_failed

        ids = _ids(request)

        def work() -> list[str]:
            refused = []
            for run_id in ids:
                with _session(self) as session:
                    try:
                        planned = plan_resend_failed(session, run_id)
                    except ValidationError as exc:
                        refused.append(str(exc))
                        continue
                    session.commit()
                if planned.created:  # after the commit; a repeat plans and sends nothing
                    queue_for(self.digest_settings).deliver(planned.pending_ids)
            return refused

        refused = await anyio.to_thread.run_sync(work)
        if refused:
            items = "".join(f"<li>{html.escape(r)}</li>" for r in refused)
            back = html.escape(str(request.url_for("admin:list", identity=self.identity)))
            return HTMLResponse(f"<p>Not resent:</p><ul>{items}</ul><p><a href=\"{back}\">"
                                "Back to the runs</a></p>", status_code=422)
        return _back(request, self)


class DeliveryAdmin(BoundedCount, ModelView, model=Delivery):
    digest_settings: Settings  # set by mount_admin, as for SubscriberAdmin
    name, name_plural, icon = "Delivery", "Deliveries", "fa-solid fa-envelope"
    can_create = can_edit = can_delete = False
    column_list = [
        Delivery.id,
        Delivery.run_id,
        Delivery.email,
        Delivery.status,
        Delivery.item_count,
        Delivery.attempts,
        Delivery.smtp_code,
        Delivery.smtp_reply,
        Delivery.note,
        Delivery.sent_at,
    ]
    column_details_list = [
        Delivery.id,
        Delivery.run_id,
        Delivery.subscriber_id,
        Delivery.email,
        Delivery.status,
        Delivery.item_count,
        Delivery.attempts,
        Delivery.next_attempt_at,
        Delivery.smtp_code,
        Delivery.smtp_reply,
        Delivery.note,
        Delivery.message_id,
        Delivery.created_at,
        Delivery.updated_at,
        Delivery.sent_at,
    ]
    # The server's words and ours side by side (states.py says who writes which).
    column_labels = {Delivery.smtp_reply: "SMTP reply", Delivery.note: "Note"}
    column_searchable_list = [Delivery.email, Delivery.smtp_reply, Delivery.note,
                              Delivery.message_id]
    column_sortable_list = [Delivery.id, Delivery.run_id, Delivery.status, Delivery.sent_at]
    column_default_sort = [(Delivery.id, True)]
    column_filters = [
        StaticValuesFilter(Delivery.status, [(s.value, s.value) for s in DeliveryStatus]),
        OperationColumnFilter(Delivery.smtp_reply, title="SMTP reply"),
        OperationColumnFilter(Delivery.note, title="Note"),
        OperationColumnFilter(Delivery.smtp_code, title="SMTP code"),
        OperationColumnFilter(Delivery.run_id, title="Run"),
    ]

    @action(
        name="requeue",
        label="Re-queue failed deliveries",
        confirmation_message="Try the selected failed deliveries again?",
    )
    async def requeue(self, request: Request) -> Response:
        ids = _ids(request)

        def work() -> None:
            with _session(self) as session:
                records.requeue_failed(session, ids)
                session.commit()
            # After the commit; rows that were not failed are not claimed.
            queue_for(self.digest_settings).deliver(ids)

        await anyio.to_thread.run_sync(work)
        return _back(request, self)


    @action(name="explain", label="Explain its items", add_in_list=False)
    async def explain(self, request: Request) -> Response:
        """The delivery's items, each linked to why it reached (or not) the reader."""
        ids = _ids(request)
        if len(ids) != 1:
            return _back(request, self)
        url = str(request.url_for("admin:action-subscriber-explain"))

        def work() -> tuple[int, str]:
            with _session(self) as session:
                return explain_pages.delivery_page(session, ids[0], url)

        status, html = await anyio.to_thread.run_sync(work)
        return HTMLResponse(html, status_code=status)

    @action(name="message", label="Show the message", add_in_list=False)
    async def message(self, request: Request) -> Response:
        ids = _ids(request)
        if len(ids) != 1:
            return _back(request, self)

        def work():
            with _session(self) as session:
                return delivery.render_delivery(session, ids[0], settings=self.digest_settings)

        rendered = await anyio.to_thread.run_sync(work)
        if rendered is None:
            return HTMLResponse("<p>This delivery carries no items (skipped): there is no "
                                "message to show.</p>", status_code=404)
        # The mail as readers get it; nothing in it may run or load from elsewhere.
        return HTMLResponse(rendered.html, headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "img-src data:; base-uri 'none'; form-action 'none'"})


class SuppressionAdmin(ModelView, model=Suppression):
    name, name_plural, icon = "Suppression", "Suppression list", "fa-solid fa-ban"
    can_create = can_edit = can_delete = False
    column_list = [
        Suppression.id,
        Suppression.email,
        Suppression.reason,
        Suppression.detail,
        Suppression.created_at,
    ]
    column_searchable_list = [Suppression.email]
    column_sortable_list = [Suppression.id, Suppression.email, Suppression.created_at]
    column_default_sort = [(Suppression.id, True)]
    column_filters = [
        StaticValuesFilter(
            Suppression.reason,
            [(r.value, r.value) for r in SuppressionReason],
        )
    ]

    @action(
        name="unsuppress",
        label="Remove from the list",
        confirmation_message="Allow email to the selected addresses again?",
    )
    async def unsuppress(self, request: Request) -> Response:
        return await _change_addresses(self, request, Suppression, subscribers.unsuppress)


class DomainPauseAdmin(ModelView, model=DomainPause):
    """Domains paused after a policy refusal (5.7.x). Read-only but for delete, which lifts
    the pause at once (through ``records.resume_domain``: waiting deliveries become due)."""

    name, name_plural, icon = "Paused domain", "Paused domains", "fa-solid fa-circle-pause"
    can_create = can_edit = False
    can_delete = True
    column_list = [
        DomainPause.domain,
        DomainPause.paused_until,
        DomainPause.reason,
        DomainPause.created_at,
        DomainPause.delivery_id,
    ]
    column_labels = {DomainPause.paused_until: "Paused until (UTC)",
                     DomainPause.created_at: "Since (UTC)", DomainPause.delivery_id: "Delivery"}
    column_searchable_list = [DomainPause.domain, DomainPause.reason]
    column_sortable_list = [DomainPause.domain, DomainPause.paused_until, DomainPause.created_at]
    column_default_sort = [(DomainPause.paused_until, True)]

    async def delete_model(self, request: Request, pk) -> None:
        def work() -> None:
            with _session(self) as session:
                records.resume_domain(session, str(pk))
                session.commit()

        await anyio.to_thread.run_sync(work)


class ComplaintAdmin(ModelView, model=Complaint):
    """Readers who marked a digest as spam (ARF reports, provider events): each was suppressed
    with reason ``complaint`` when it came in. Read-only: lifting the suppression is the
    suppression list's action."""

    name, name_plural, icon = "Complaint", "Complaints", "fa-solid fa-flag"
    can_create = can_edit = can_delete = False
    column_list = [
        Complaint.id,
        Complaint.email,
        Complaint.source,
        Complaint.feedback_type,
        Complaint.delivery_id,
        Complaint.detail,
        Complaint.created_at,
    ]
    column_labels = {Complaint.delivery_id: "Delivery", Complaint.created_at: "Received (UTC)",
                     Complaint.feedback_type: "Feedback type"}
    column_searchable_list = [Complaint.email]
    column_sortable_list = [Complaint.id, Complaint.email, Complaint.created_at]
    column_default_sort = [(Complaint.id, True)]


async def _change_addresses(view, request: Request, model, change) -> Response:
    """Apply ``change(session, email)`` to the addresses of the selected rows of ``model``
    (in a worker thread: the session is synchronous), then go back to the list."""
    ids = _ids(request)

    def work() -> None:
        with _session(view) as session:
            for email in session.scalars(select(model.email).where(model.id.in_(ids))).all():
                change(session, email)
            session.commit()

    await anyio.to_thread.run_sync(work)
    return _back(request, view)


VIEWS = [SubscriberAdmin, ItemAdmin, RunAdmin, DeliveryAdmin, SuppressionAdmin, ComplaintAdmin,
         DomainPauseAdmin]
