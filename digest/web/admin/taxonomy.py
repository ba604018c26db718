"""The admin's Taxonomy page: rename, merge and move terms, and the review list of feed
categories nothing could file (file or dismiss each). Every change goes through
``digest.taxonomy_edit``, as the CLI's and the API's do; a refusal is shown in the page with
what was typed kept. The forms post the admin's CSRF token (``AdminPage.checked_form``)."""

from __future__ import annotations

from typing import Any

from sqladmin import expose
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from digest import taxonomy_edit
from digest.errors import DigestError, ValidationError
from digest.web.admin.forms import AdminPage, status_of, taxonomy_names, text_field

ACTIONS = ("rename", "merge", "move", "file", "dismiss")
FIELDS = ("action", "facet", "name", "new_name", "names", "into", "from_facet", "to_facet",
          "keep_existing_type")


def apply(session: Session, values: dict[str, str]) -> str:
    """Carry out one posted action; the sentence saying what was done."""
    action = values.get("action", "")
    facet = values.get("facet", "")
    if action == "rename":
        term = taxonomy_edit.rename(session, taxonomy_edit.facet_of(facet), values["name"],
                                    values["new_name"])
        done = f"Renamed {values['name']!r} to {term.name!r}."
    elif action == "merge":
        names = [n for n in values.get("names", "").splitlines() if n.strip()]
        term = taxonomy_edit.merge(session, taxonomy_edit.facet_of(facet), names,
                                   values["into"])
        done = f"Merged {', '.join(map(repr, names))} into {term.name!r}."
    elif action == "move":
        from_facet = taxonomy_edit.facet_of(values["from_facet"])
        report = taxonomy_edit.move(session, values["name"], from_facet,
                                    taxonomy_edit.facet_of(values["to_facet"]),
                                    keep_existing_type=values.get("keep_existing_type") == "on")
        done = report.summary(from_facet) + "."
    elif action == "file":
        filed = taxonomy_edit.file_review(session, values["name"],
                                          taxonomy_edit.facet_of(facet))
        done = f"Filed {filed.term.name!r}: {filed.items} item(s) tagged."
    elif action == "dismiss":
        taxonomy_edit.dismiss_review(session, values["name"])
        done = f"Dismissed {values['name']!r}."
    else:
        raise ValidationError(f"unknown action {action!r}; use one of: {', '.join(ACTIONS)}")
    session.commit()
    return done


class TaxonomyPage(AdminPage):
    name, icon = "Taxonomy", "fa-solid fa-tags"
    category = "Subscriber tools"

    @expose("/taxonomy", methods=["GET", "POST"], identity="taxonomy")
    async def taxonomy(self, request: Request) -> Response:
        values: dict[str, str] = {}
        error = done = None
        status_code = 200
        if request.method == "POST":
            try:
                form = await self.checked_form(request)
                values = {name: text_field(form, name) for name in FIELDS if name in form}
                done = await self.in_session(lambda s: apply(s, values))
                values = {}
            except DigestError as exc:
                error, status_code = str(exc), status_of(exc)
            except KeyError as exc:
                error, status_code = f"the form lacks the field {exc.args[0]!r}", 422
        names, reviews = await self.in_session(_lists)
        return await self.page(request, "digest_taxonomy.html", status_code, values=values,
                               error=error, done=done, names=names, reviews=reviews)


def _lists(session: Session) -> tuple[dict[str, list[str]], list[Any]]:
    return taxonomy_names(session), taxonomy_edit.review_list(session)
