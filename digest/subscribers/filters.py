"""A subscriber's filters: written by name (``FilterSpec``), parsed, described, loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session, selectinload

from digest import taxonomy
from digest.errors import ValidationError
from digest.models import Subscriber, SubscriberFilter


def with_filters() -> tuple:
    """Loader options: subscribers' filters with their three facets, a query per level."""
    return (
        selectinload(Subscriber.filters).selectinload(SubscriberFilter.themes),
        selectinload(Subscriber.filters).selectinload(SubscriberFilter.locations),
        selectinload(Subscriber.filters).selectinload(SubscriberFilter.content_types),
    )


@dataclass
class FilterSpec:
    """One filter by names; an empty list matches anything on that facet."""

    themes: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [
            " or ".join(self.themes) or "any theme",
            " or ".join(self.locations) or "anywhere",
            " or ".join(self.content_types) or "any type",
        ]
        return ", ".join(parts)


def describe_filter(f: SubscriberFilter) -> str:
    return FilterSpec([t.name for t in f.themes], [loc.name for loc in f.locations],
                      [c.name for c in f.content_types]).describe()


def parse_filter(text: str) -> FilterSpec:
    """``themes=Policing|Gender equality;locations=OSCE Mission to Serbia;types=News``."""
    spec = FilterSpec()
    aliases = {"themes": "themes", "theme": "themes", "locations": "locations",
               "location": "locations", "types": "content_types", "type": "content_types",
               "content_types": "content_types"}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        facet = aliases.get(key.strip().lower())
        if not sep or facet is None:
            raise ValidationError(
                f"bad filter part {part!r}: write facet=value|value with facets themes, "
                "locations, types, separated by ';'"
            )
        getattr(spec, facet).extend(v.strip() for v in value.split("|") if v.strip())
    return spec


def build_filters(session: Session, specs: list[FilterSpec],
                  create: bool) -> list[SubscriberFilter]:
    filters = []
    for spec in specs:
        f = SubscriberFilter()
        f.themes = taxonomy.resolve(session, "theme", spec.themes, create=create)
        f.locations = taxonomy.resolve(session, "location", spec.locations, create=create)
        f.content_types = taxonomy.resolve(session, "content_type", spec.content_types,
                                           create=create)
        filters.append(f)
    return filters

