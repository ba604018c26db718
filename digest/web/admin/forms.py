"""The admin's own pages (sqladmin ``BaseView`` + Jinja templates in ``templates/``): add a
subscriber with filters, import and export CSV. Ad-hoc sends are in ``send.py``.

Every change goes through ``digest.subscribers`` (``upsert_subscriber``, ``import_csv``,
``export_csv``), so the admin validates exactly as the API and the CLI do; a refusal is shown
in the form, with what was typed kept. Every form posts a signed CSRF token (the subscriber
pages' ``check_csrf``, subject ``admin``) on top of the admin's SameSite=Strict session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from sqladmin import BaseView, expose
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from digest import subscribers, taxonomy
from digest.errors import DigestError, TokenError, ValidationError
from digest.models import Frequency, Subscriber, SubscriberStatus
from digest.settings import Settings
from digest.web.pages.csrf import check_csrf, make_csrf

CSRF_SUBJECT = "admin"
MAX_CSV_BYTES = 5 * 1024 * 1024  # as the API's import
T = TypeVar("T")


class AdminPage(BaseView):
    """A page of ours in the admin: settings and a session factory set by ``mount_admin``."""

    digest_settings: Settings
    session_maker: sessionmaker[Session]

    async def in_session(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` in a worker thread (the session is synchronous)."""
        def run() -> T:
            with self.session_maker(expire_on_commit=False) as session:
                return work(session)

        return await anyio.to_thread.run_sync(run)

    async def page(self, request: Request, template: str, status_code: int = 200,
                   **context: Any) -> Response:
        context.setdefault("csrf", make_csrf(self.digest_settings, CSRF_SUBJECT))
        return await self.templates.TemplateResponse(
            request, template, context, status_code=status_code)

    async def checked_form(self, request: Request) -> FormData:
        """The posted form, once its CSRF token is good (a ``TokenError`` otherwise)."""
        form = await request.form(max_part_size=MAX_CSV_BYTES)
        check_csrf(self.digest_settings, form.get("csrf"), CSRF_SUBJECT)
        return form


def status_of(exc: DigestError) -> int:
    """403 for a form whose CSRF token fails, 422 for what was typed."""
    return 403 if isinstance(exc, TokenError) else 422


def text_field(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else default


def parse_filters(text: str) -> list[subscribers.FilterSpec]:
    """One filter a line, in the CLI's form (``themes=A|B;locations=C;types=News``)."""
    specs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            specs.append(subscribers.parse_filter(line))
        except ValidationError as exc:
            raise ValidationError(f"filter line {number}: {exc}") from exc
    return specs


def taxonomy_names(session: Session) -> dict[str, list[str]]:
    return {facet: taxonomy.list_names(session, facet)
            for facet in ("theme", "location", "content_type")}


SUBSCRIBER_FIELDS = ("email", "frequency", "timezone", "weekday", "hour", "status", "group_by",
                     "filters")


class AddSubscriberPage(AdminPage):
    name, icon = "Add a subscriber", "fa-solid fa-user-plus"
    category = "Subscriber tools"

    @expose("/subscriber-tools/add", methods=["GET", "POST"], identity="add-subscriber")
    async def add_subscriber(self, request: Request) -> Response:
        values = {"frequency": "weekly", "timezone": "UTC", "weekday": "0", "hour": "8",
                  "status": "active", "group_by": "theme", "email": "", "filters": ""}
        error = None
        status_code = 200
        if request.method == "POST":
            try:
                form = await self.checked_form(request)
                values |= {name: text_field(form, name) for name in SUBSCRIBER_FIELDS
                           if name in form}
                sub_id = await self.in_session(lambda s: self._add(s, values))
                return RedirectResponse(
                    request.url_for("admin:details", identity="subscriber", pk=str(sub_id)),
                    status_code=303)
            except DigestError as exc:
                error, status_code = str(exc), status_of(exc)
        names = await self.in_session(taxonomy_names)
        return await self.page(
            request, "digest_add_subscriber.html", status_code, values=values, error=error,
            names=names, weekdays=subscribers.WEEKDAYS,
            frequencies=[f.value for f in Frequency],
            statuses=[s.value for s in SubscriberStatus if s.value != "erased"],
            timezones=subscribers.timezone_names())

    def _add(self, session: Session, values: dict[str, str]) -> int:
        smtputf8 = self.digest_settings.smtputf8
        address = subscribers.canonical_email(values["email"], smtputf8=smtputf8)
        existing = session.scalar(select(Subscriber.id).where(Subscriber.email == address))
        if existing is not None:
            raise ValidationError(f"a subscriber with this address exists (id {existing}); "
                                  "change them from their page")
        sub, created = subscribers.upsert_subscriber(
            session, address, smtputf8=smtputf8, filters=parse_filters(values["filters"]),
            frequency=values["frequency"], timezone=values["timezone"],
            weekday=values["weekday"], hour=values["hour"], status=values["status"],
            group_by=values["group_by"], suppression_detail="suppressed in the admin")
        if not created:  # added by someone else since our look-up
            session.rollback()
            raise ValidationError("a subscriber with this address was just added; see the list")
        session.commit()
        return sub.id


class CsvPage(AdminPage):
    name, icon = "Import / export CSV", "fa-solid fa-file-csv"
    category = "Subscriber tools"

    @expose("/subscriber-tools/csv", methods=["GET", "POST"], identity="subscriber-csv")
    async def subscriber_csv(self, request: Request) -> Response:
        report, error, status_code = None, None, 200
        if request.method == "POST":
            try:
                form = await self.checked_form(request)
                text = await _csv_text(form)
                report = await self.in_session(lambda s: self._import(s, text))
            except DigestError as exc:
                error, status_code = str(exc), status_of(exc)
        return await self.page(request, "digest_csv.html", status_code, report=report,
                               error=error, columns=subscribers.csv_io.CSV_FIELDS)

    def _import(self, session: Session, text: str) -> subscribers.ImportReport:
        report = subscribers.import_csv(session, text, smtputf8=self.digest_settings.smtputf8)
        session.commit()
        return report

    @expose("/subscriber-tools/csv/export", methods=["GET"], identity="subscriber-csv-export")
    async def subscriber_csv_export(self, request: Request) -> Response:
        body = await self.in_session(subscribers.export_csv)
        return Response(body, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'})


async def _csv_text(form: FormData) -> str:
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        raw = await upload.read(MAX_CSV_BYTES + 1)
    else:
        raw = text_field(form, "text").encode()
    if not raw.strip():
        raise ValidationError("choose a CSV file or paste its text")
    if len(raw) > MAX_CSV_BYTES:
        raise ValidationError(f"the CSV is larger than {MAX_CSV_BYTES // (1024 * 1024)} MB; "
                              "split it or use 'digest subscribers import'")
    try:
        # utf-8-sig: spreadsheets often save a byte-order mark first.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"the CSV is not UTF-8 (byte {exc.start}); save it as UTF-8 "
                              "and try again") from exc
