"""Small builders for test data: rows written straight through the models, and the plain
objects a stage takes (a render recipient, settings for a local SMTP server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from digest.models import ContentType, Item, Location, Subscriber, SubscriberFilter, Theme
from digest.render import Recipient
from digest.settings import Settings

T0 = datetime(2025, 10, 13, 7, 0, tzinfo=UTC)  # a Monday


class Taxo:
    """A fixed little taxonomy: a region with two missions, a standalone office, two types."""

    def __init__(self, session: Session):
        def add(model, **kw):
            obj = model(**kw)
            session.add(obj)
            return obj

        self.policing = add(Theme, slug="policing", name="Policing")
        self.gender = add(Theme, slug="gender-equality", name="Gender equality")
        self.elections = add(Theme, slug="elections", name="Elections")
        self.see = add(Location, slug="south-eastern-europe", name="South-Eastern Europe")
        session.flush()
        self.montenegro = add(Location, slug="osce-mission-to-montenegro",
                              name="OSCE Mission to Montenegro", parent_id=self.see.id)
        self.serbia = add(Location, slug="osce-mission-to-serbia", name="OSCE Mission to Serbia",
                          parent_id=self.see.id)
        self.bishkek = add(Location, slug="osce-programme-office-in-bishkek",
                           name="OSCE Programme Office in Bishkek")
        self.news = add(ContentType, slug="news", name="News")
        self.press = add(ContentType, slug="press-release", name="Press release")
        session.flush()


_n = 0


def make_item(session: Session, title: str = "", *, themes=(), locations=(), ctype=None,
              ingested_at: datetime = T0 - timedelta(days=1), published_at: datetime | None = None,
              backfill: bool = False) -> Item:
    global _n
    _n += 1
    item = Item(guid=f"test-{_n}-{title}", url=f"https://newsroom.example.org/items/{_n}",
                title=title or f"Item {_n}", summary=f"Summary of {title or _n}",
                published_at=published_at or ingested_at, ingested_at=ingested_at,
                updated_at=ingested_at, content_type=ctype, is_backfill=backfill, source="test")
    item.themes = list(themes)
    item.locations = list(locations)
    session.add(item)
    session.flush()
    return item


def make_subscriber(session: Session, email: str, *filters, frequency: str = "weekly",
                    tz: str = "UTC", weekday: int = 0, hour: int = 7, status: str = "active",
                    watermark: datetime | None = None) -> Subscriber:
    """``filters``: dicts with optional keys themes, locations, types (lists of model rows)."""
    sub = Subscriber(email=email, frequency=frequency, timezone=tz, weekday=weekday, hour=hour,
                     status=status, watermark=watermark, created_at=T0 - timedelta(days=30))
    for spec in filters:
        f = SubscriberFilter()
        f.themes = list(spec.get("themes", []))
        f.locations = list(spec.get("locations", []))
        f.content_types = list(spec.get("types", []))
        sub.filters.append(f)
    session.add(sub)
    session.flush()
    return sub


# --- plain objects, no database ------------------------------------------------------------


def recipient(**kw) -> Recipient:
    """A reader as the renderer sees one; ``kw`` replaces any field."""
    values = dict(subscriber_id=7, email="reader@example.org",
                  manage_url="https://digest.example.org/manage/tok-m",
                  unsubscribe_url="https://digest.example.org/unsubscribe/tok-u",
                  view_url="https://digest.example.org/view/tok-v")
    values.update(kw)
    return Recipient(**values)


# The envelope sender and a minimal message for the SMTP transport's tests.
SENDER = "bounces@newsroom.example.org"
MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def smtp_settings(port: int, **extra) -> Settings:
    """Settings for an SMTP server on 127.0.0.1:``port``, with a short timeout."""
    return Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_timeout=5, **extra)
