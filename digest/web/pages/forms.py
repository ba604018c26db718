"""The subscribe and preferences forms: the choices they offer and reading what was sent.

The forms work without JavaScript. A subscriber chooses either everything or one or more
filters; each filter is a fieldset of theme, location and type checkboxes. Anything ticked
means "only these", whichever way the "Everything" radio was left (rule M5). The preferences
form shows every saved filter plus one empty "add a filter" fieldset; an empty fieldset
and one ticked "remove" are dropped when saving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from digest import taxonomy
from digest.errors import ValidationError
from digest.models import Frequency, Location, Subscriber
from digest.subscribers import WEEKDAYS, FilterSpec, timezone_names

MAX_FILTERS = 20
FREQUENCIES: list[tuple[str, str, str]] = [
    (
        Frequency.immediate,
        "As soon as something is published",
        "One email for each new item.",
    ),
    (Frequency.daily, "Once a day", "At the hour you choose below."),
    (Frequency.weekly, "Once a week", "On the day and at the hour you choose below."),
]
GROUP_BY = [("theme", "By theme"), ("location", "By location")]


@dataclass
class LocationGroup:
    region: str | None  # None: places without a region
    places: list[str]


@dataclass
class Choices:
    """Everything a form offers, read once per page."""

    themes: list[str]
    location_groups: list[LocationGroup]
    content_types: list[str]
    timezone_groups: list[tuple[str, list[str]]]
    weekdays: list[tuple[int, str]] = field(
        default_factory=lambda: [(i, d.capitalize()) for i, d in enumerate(WEEKDAYS)]
    )
    hours: list[tuple[int, str]] = field(
        default_factory=lambda: [(h, f"{h:02d}:00") for h in range(24)]
    )
    frequencies: list[tuple[str, str, str]] = field(default_factory=lambda: FREQUENCIES)
    group_by: list[tuple[str, str]] = field(default_factory=lambda: GROUP_BY)


def load_choices(session: Session) -> Choices:
    rows = session.execute(select(Location.id, Location.name, Location.parent_id)).all()
    names = {row.id: row.name for row in rows}
    children: dict[int, list[str]] = {}
    for row in rows:
        if row.parent_id is not None:
            children.setdefault(row.parent_id, []).append(row.name)
    groups = [
        LocationGroup(names[rid], sorted(places, key=str.casefold))
        for rid, places in children.items()
    ]
    groups.sort(key=lambda g: (g.region or "").casefold())  # every group here has a region
    loose = sorted(
        (row.name for row in rows if row.parent_id is None and row.id not in children),
        key=str.casefold,
    )
    if loose:
        groups.append(LocationGroup(None, loose))
    zones = timezone_names()
    zone_groups = [
        (area, list(names_))
        for area, names_ in groupby(
            sorted(zones, key=lambda z: (z.partition("/")[0], z)),
            key=lambda z: z.partition("/")[0] if "/" in z else "Other",
        )
    ]
    return Choices(
        themes=taxonomy.list_names(session, "theme"),
        location_groups=groups,
        content_types=taxonomy.list_names(session, "content_type"),
        timezone_groups=zone_groups,
    )


@dataclass
class FilterState:
    themes: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.themes or self.locations or self.content_types)

    def describe(self) -> str:
        return FilterSpec(self.themes, self.locations, self.content_types).describe()


@dataclass
class PrefsForm:
    """What the form shows and what it sent back, before validation."""

    email: str = ""
    mode: str = "chosen"  # "everything" or "chosen"
    filters: list[FilterState] = field(default_factory=list)
    frequency: str = Frequency.weekly
    weekday: str = "0"
    hour: str = "8"
    timezone: str = "UTC"
    group_by: str = "theme"

    @classmethod
    def from_subscriber(cls, sub: Subscriber) -> PrefsForm:
        filters = [
            FilterState(
                [t.name for t in f.themes],
                [loc.name for loc in f.locations],
                [c.name for c in f.content_types],
            )
            for f in sub.filters
        ]
        return cls(
            email=sub.email,
            mode="chosen" if filters else "everything",
            filters=filters,
            frequency=sub.frequency,
            weekday=str(sub.weekday),
            hour=str(sub.hour),
            timezone=sub.timezone,
            group_by=sub.group_by,
        )

    @classmethod
    def from_form(cls, form: FormData) -> PrefsForm:
        try:
            raw = form.get("filter_count")
            count = int(raw) if isinstance(raw, str) and raw else 1  # a file upload: the default
        except ValueError:
            count = 1
        filters = []
        for i in range(max(1, min(count, MAX_FILTERS))):
            if form.get(f"f{i}-remove"):
                continue
            filters.append(
                FilterState(
                    _values(form, f"f{i}-themes"),
                    _values(form, f"f{i}-locations"),
                    _values(form, f"f{i}-types"),
                )
            )
        chosen = [f for f in filters if not f.is_empty()]
        # Rule M5: anything ticked means "only these", whatever the radio was left at (it
        # starts at "Everything"); "Everything" means no filter only with nothing ticked.
        everything = form.get("mode") == "everything" and not chosen
        return cls(
            email=_text(form, "email"),
            mode="everything" if everything else "chosen",
            filters=chosen,
            frequency=_text(form, "frequency") or Frequency.weekly,
            weekday=_text(form, "weekday") or "0",
            hour=_text(form, "hour") or "8",
            timezone=_text(form, "timezone") or "UTC",
            group_by=_text(form, "group_by") or "theme",
        )

    def specs(self) -> list[FilterSpec]:
        """The filters to save; [] means everything."""
        if self.mode == "everything":
            return []
        if not self.filters:
            raise ValidationError(
                "choose at least one theme, location or type, or choose to get everything"
            )
        return [FilterSpec(f.themes, f.locations, f.content_types) for f in self.filters]

    def options(self) -> dict[str, Any]:
        return {
            "frequency": self.frequency,
            "weekday": self.weekday,
            "hour": self.hour,
            "timezone": self.timezone,
            "group_by": self.group_by,
        }

    def shown_filters(self, extra_blank: bool) -> list[FilterState]:
        """The fieldsets to show: the chosen filters, plus an empty one to add another."""
        shown = list(self.filters)
        if extra_blank or not shown:
            shown.append(FilterState())
        return shown[:MAX_FILTERS]


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _values(form: FormData, name: str) -> list[str]:
    return [v.strip() for v in form.getlist(name) if isinstance(v, str) and v.strip()]
