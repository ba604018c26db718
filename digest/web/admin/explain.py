"""The admin's "Explain an item" page: the form (an item's id, URL or guid) and
``digest.selection.explain``'s answer, the sentences and each filter's facets as a table.
Plain HTML, every value escaped, no script."""

from __future__ import annotations

from html import escape

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import ValidationError
from digest.models import Delivery, Item, Subscriber
from digest.records.contents import delivery_contents
from digest.selection.explain import FACET_WORDS, Explanation, explain, find_item
from digest.settings import Settings

STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .5rem;"
         "text-align:left;vertical-align:top}.no{color:#a00}.ok{color:#070}")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}"
            f"</title><style>{STYLE}</style></head><body><main><h1>{escape(title)}</h1>"
            f"{body}</main></body></html>")


def _form(action_url: str, subscriber_id: int, item: str) -> str:
    return (f'<form method=get action="{escape(action_url)}">'
            f'<input type=hidden name=pks value="{subscriber_id}">'
            '<label>Item (id, URL or guid) <input name=item required size=60 '
            f'value="{escape(item)}"></label> <button type=submit>Explain</button></form>')


def _facets_table(e: Explanation) -> str:
    if not e.filters:
        return "<p>No filter: everything matches.</p>"
    rows = []
    for n, f in enumerate(e.filters, 1):
        for facet in f.facets:
            mark = "ok" if facet.matched else "no"
            rows.append(
                f"<tr><td>{n}: {escape(f.description)}</td><td>{FACET_WORDS[facet.facet]}</td>"
                f"<td>{escape(', '.join(facet.wanted) or 'any')}</td>"
                f"<td>{escape(', '.join(facet.item_has) or 'none')}</td>"
                f"<td class={mark}>{'matched' if facet.matched else 'no match'}"
                f"{escape(' by ' + ', '.join(facet.hits)) if facet.hits else ''}</td></tr>")
    return ("<table><tr><th>Filter</th><th>Facet</th><th>Wants</th><th>The item has</th>"
            f"<th>Verdict</th></tr>{''.join(rows)}</table>")


def subscriber_page(session: Session, settings: Settings, subscriber_id: int, item_ref: str,
                    action_url: str) -> tuple[int, str]:
    """(HTTP status, HTML) of the explain page of one subscriber, for ``item_ref`` if given."""
    sub = session.get(Subscriber, subscriber_id)
    if sub is None:
        return 404, _page("Explain", f"<p>No subscriber with id {subscriber_id}.</p>")
    title = f"Why an item did or did not reach {sub.email}"
    form = _form(action_url, sub.id, item_ref)
    if not item_ref.strip():
        return 200, _page(title, form)
    try:
        item = find_item(session, item_ref)
    except ValidationError as exc:
        return 400, _page(title, f"{form}<p class=no role=alert>{escape(str(exc))}</p>")
    e = explain(session, sub, item, settings=settings)
    head, *rest = e.sentences
    lines = "".join(f"<li class={'ok' if r.ok else 'no'}>{escape(text)}</li>"
                    for r, text in zip(e.reasons, rest, strict=True))
    body = (f"{form}<h2>Verdict: {escape(e.verdict.value)}</h2><p>{escape(head)}</p>"
            f"<ul>{lines}</ul><h2>Filters, facet by facet</h2>{_facets_table(e)}")
    return 200, _page(title, body)


def delivery_page(session: Session, delivery_id: int,
                  subscriber_action_url: str) -> tuple[int, str]:
    """The items a delivery carries, each linked to its explanation for the delivery's reader."""
    d = session.get(Delivery, delivery_id)
    if d is None:
        return 404, _page("Explain", f"<p>No delivery with id {delivery_id}.</p>")
    contents = delivery_contents(session, Delivery.__table__.c.id == d.id)
    items = session.execute(
        select(Item.id, Item.title).join(contents, contents.c.item_id == Item.id)
        .where(contents.c.delivery_id == d.id).order_by(Item.id)).all()
    link = f"{escape(subscriber_action_url)}?pks={d.subscriber_id}&amp;item="
    rows = "".join(f'<li><a href="{link}{item_id}">{escape(title)}</a></li>'
                   for item_id, title in items) or "<li>none (skipped: nothing matched)</li>"
    body = (f"<p>Delivery {d.id} to {escape(d.email)}: {escape(str(d.status))}. Explain one "
            f"of its items, or any other item:</p><ul>{rows}</ul>"
            f"{_form(subscriber_action_url, d.subscriber_id, '')}")
    return 200, _page(f"Explain delivery {d.id}", body)
