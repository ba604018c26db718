"""``digest preview``: the digest a subscriber would get, or a planned delivery's message."""

from __future__ import annotations

from pathlib import Path

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.cli._common import console, ensure_db, parse_when, session_scope
from digest.errors import ValidationError
from digest.settings import get_settings


def preview(
    email: str | None = typer.Argument(None, help="The subscriber whose next digest to show."),
    delivery: int | None = typer.Option(
        None, "--delivery", help="Show this delivery's message instead (a dry run's too)."),
    as_of: str | None = typer.Option(None, help="Clock for the window (ISO date/time)."),
    out: Path = typer.Option(None, help="Folder for the files (default: <var>/preview)."),  # noqa: B008
) -> None:
    """Write the HTML and text digest this subscriber would get, or that a planned delivery
    carries; sends and changes nothing."""
    from digest.delivery import render_delivery
    from digest.mail import preview as preview_digest
    from digest.models import Subscriber
    from digest.subscribers import canonical_email

    if (email is None) == (delivery is None):
        raise ValidationError("give a subscriber's address or --delivery ID (one of the two)")
    ensure_db()
    settings = get_settings()
    with session_scope() as session:
        if delivery is not None:
            rendered = render_delivery(session, delivery, settings=settings)
            if rendered is None:
                raise ValidationError(f"no delivery {delivery} that carries items; see "
                                      "'digest deliveries'")
            stem, count = f"delivery-{delivery}", _delivery_item_count(session, delivery)
        else:
            assert email is not None  # exactly one of the two was given (checked above)
            address = canonical_email(email, smtputf8=settings.smtputf8)
            sub = session.scalars(
                select(Subscriber).where(Subscriber.email == address)).one_or_none()
            if sub is None:
                raise ValidationError(f"no subscriber {address}; see 'digest subscribers list'")
            # The same composition path as the mail itself (template, themes, period, "more").
            shown = preview_digest(session, sub, as_of=parse_when(as_of), settings=settings)
            rendered, stem, count = shown.rendered, address.replace("@", "_at_"), shown.item_count
    folder = out or settings.var_dir / "preview"
    folder.mkdir(parents=True, exist_ok=True)
    html_path, text_path = folder / f"{stem}.html", folder / f"{stem}.txt"
    html_path.write_text(rendered.html, encoding="utf-8")
    text_path.write_text(rendered.text, encoding="utf-8")
    console.print(f"{count} item(s); subject: {rendered.subject}", markup=False, highlight=False)
    console.print(f"HTML: {html_path}\ntext: {text_path}", markup=False, highlight=False)


def _delivery_item_count(session: Session, delivery_id: int) -> int:
    from digest.models import Delivery

    return session.scalar(select(Delivery.item_count).where(Delivery.id == delivery_id)) or 0
