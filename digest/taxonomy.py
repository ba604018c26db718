"""Themes, locations and content types: slugs, look-up by name, creation, regions.

Names are matched by slug, so "Rule of law", "rule of LAW " and "Rule-of-law" are one theme.
A location may have a parent region (itself a location); the known pairs ship in
``data/regions.json`` and are applied when a location is created. The newsroom's published
taxonomy ships in ``data/taxonomy.json`` (``seed`` adds it to a database).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal, cast

from slugify import slugify as _slugify
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from digest.db import insert_ignoring_conflict
from digest.errors import UnknownTaxonomyError, ValidationError
from digest.models import ContentType, Location, Theme

Facet = Literal["theme", "location", "content_type"]
FACETS: tuple[Facet, ...] = ("theme", "location", "content_type")
TaxonomyModel = Theme | Location | ContentType

MODELS: dict[str, type[TaxonomyModel]] = {
    "theme": Theme,
    "location": Location,
    "content_type": ContentType,
}
DATA_DIR = Path(__file__).resolve().parent / "data"
REGIONS_FILE = DATA_DIR / "regions.json"
PUBLISHED_FILE = DATA_DIR / "taxonomy.json"  # the newsroom's published taxonomy


def slugify(name: str) -> str:
    """A lowercase ASCII slug; other scripts are transliterated ("Odžak" -> "odzak")."""
    return _slugify(name or "", max_length=200)


def clean_name(name: str) -> str:
    """A display name with surrounding and repeated whitespace removed."""
    return " ".join((name or "").split())


class Resolved(list):
    """The models asked for, in the order asked; ``created`` names those that were new."""

    created: list[str]

    def __init__(self, models=(), created: list[str] | None = None):
        super().__init__(models)
        self.created = created or []


@lru_cache(maxsize=1)
def region_of() -> dict[str, str]:
    """Slug of a known location -> name of its region, from the shipped data file."""
    raw = json.loads(REGIONS_FILE.read_text(encoding="utf-8"))
    return {
        slugify(place): region
        for region, places in raw.items()
        if not region.startswith("_")
        for place in places
    }


def _by_slug(session: Session, model: type[TaxonomyModel],
             slugs: Iterable[str]) -> Iterable[TaxonomyModel]:
    # select() of a union of models is typed as any row; these are rows of ``model``.
    return cast(Iterable[TaxonomyModel],
                session.scalars(select(model).where(model.slug.in_(slugs))))


def _model(facet: str) -> type[TaxonomyModel]:
    try:
        return MODELS[facet]
    except KeyError:
        raise ValidationError(
            f"unknown facet {facet!r}; use one of: {', '.join(FACETS)}"
        ) from None


def list_names(session: Session, facet: Facet) -> list[str]:
    """Every name of a facet, sorted, for error messages and forms."""
    model = _model(facet)
    return sorted(session.scalars(select(model.name)).all(), key=str.casefold)


def known_facets(session: Session) -> dict[str, Facet | None]:
    """Slug -> the facet a name is known in, to file a feed category that has no telling
    domain: every value in the database, and the places and regions of ``regions.json`` as
    locations. A slug known in more than one facet maps to None: its name alone cannot say
    where it belongs."""
    found: dict[str, set[Facet]] = {}
    for facet in FACETS:
        for slug in session.scalars(select(_model(facet).slug)):
            found.setdefault(slug, set()).add(facet)
    for place, region in region_of().items():
        for slug in (place, slugify(region)):
            if not found.get(slug):
                found[slug] = {"location"}
    return {slug: next(iter(facets)) if len(facets) == 1 else None
            for slug, facets in found.items()}


def location_regions(session: Session) -> list[tuple[str, str | None]]:
    """Every location with the name of its region (None for a region or a loose place),
    sorted by name."""
    region = aliased(Location)
    rows = session.execute(select(Location.name, region.name)
                           .outerjoin(region, Location.parent_id == region.id)).all()
    return sorted(((name, parent) for name, parent in rows), key=lambda r: r[0].casefold())


# --- The newsroom's published taxonomy (``data/taxonomy.json``): what a fresh install knows
# before its first ingest, so filtered subscribers can be added at once.

# The file's keys, in the facets' order.
PUBLISHED_KEYS: dict[str, Facet] = {"themes": "theme", "locations": "location",
                                    "content_types": "content_type"}


def read_published(path: Path = PUBLISHED_FILE) -> dict[Facet, list[str]]:
    """A taxonomy file's names per facet: a JSON object with the lists ``themes``,
    ``locations`` and ``content_types`` (any may be left out; keys starting with ``_`` are
    comments). ValidationError names what is wrong with it."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{path} is not a JSON taxonomy file: {exc}") from None
    if not isinstance(raw, dict):
        raise ValidationError(f"{path}: expected a JSON object with the lists "
                              f"{', '.join(PUBLISHED_KEYS)}")
    unknown = [key for key in raw if key not in PUBLISHED_KEYS and not key.startswith("_")]
    if unknown:
        raise ValidationError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; use "
                              f"{', '.join(PUBLISHED_KEYS)}")
    names: dict[Facet, list[str]] = {}
    for key, facet in PUBLISHED_KEYS.items():
        values = raw.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValidationError(f"{path}: {key!r} must be a list of names")
        names[facet] = values
    return names


def seed(session: Session, names: dict[Facet, list[str]]) -> dict[Facet, list[str]]:
    """Create the names not known yet (a location with its region, as ``resolve`` does);
    facet -> the names created. Running it again creates nothing."""
    return {facet: resolve(session, facet, names.get(facet, []), create=True).created
            for facet in FACETS}


def resolve(session: Session, facet: Facet, names: list[str], create: bool) -> Resolved:
    """The models named by ``names`` (matched by slug), in order, without duplicates.

    ``create=False``: any unknown name raises UnknownTaxonomyError listing the valid names.
    ``create=True``: unknown names are inserted (and, for a location, its known region
    too), safely when another transaction creates the same name at the same moment; the
    returned list's ``created`` says which names this call inserted.
    Blank names are ignored. One SELECT per call when every name exists.
    """
    model = _model(facet)
    wanted: dict[str, str] = {}  # slug -> display name, first spelling wins
    unsluggable: list[str] = []
    for raw in names:
        name = clean_name(raw)
        if not name:
            continue
        slug = slugify(name)
        if not slug:
            unsluggable.append(name)
            continue
        wanted.setdefault(slug, name)

    if unsluggable:
        if create:
            raise ValidationError(
                f"{facet} name(s) {', '.join(map(repr, unsluggable))} contain no letters or "
                "digits; give a name with at least one"
            )
        raise UnknownTaxonomyError(facet, unsluggable, list_names(session, facet))
    if not wanted:
        return Resolved()

    regions = region_of() if facet == "location" else {}
    needed_regions = {slugify(regions[s]): regions[s] for s in wanted if s in regions}
    lookup = set(wanted) | set(needed_regions)
    # Pending objects first: several calls in one transaction must not create a slug twice.
    pending = cast(list[TaxonomyModel], [obj for obj in session.new if isinstance(obj, model)])
    found = {obj.slug: obj for obj in pending}
    for obj in _by_slug(session, model, lookup):
        found[obj.slug] = obj

    missing = [slug for slug in wanted if slug not in found]
    if missing and not create:
        raise UnknownTaxonomyError(
            facet, [wanted[s] for s in missing], list_names(session, facet)
        )

    created: list[str] = []

    raced: list[str] = []

    def add(slug: str, name: str, parent_slug: str | None = None) -> bool:
        # ON CONFLICT DO NOTHING: another transaction may create the same name at this
        # moment (two ingests, two sign-ups); its row is then the one we use.
        values: dict = {"slug": slug, "name": name}
        if parent_slug is not None:
            values["parent_id"] = (
                select(model.id).where(model.slug == parent_slug).scalar_subquery())
        stmt = insert_ignoring_conflict(session, model, values, ["slug"]).returning(model)
        obj = session.scalars(stmt).one_or_none()
        if obj is None:
            raced.append(slug)
            return False
        found[slug] = obj
        return True

    if missing:
        session.flush()  # pending regions (session.new) must be rows before a child's insert
    for slug in missing:
        if slug in found:  # created just above as another name's region
            continue
        region_name = regions.get(slug)
        region_slug = slugify(region_name) if region_name else slug
        # The region's row first (the place points at it); listed after the place.
        # region_slug differs from slug only when the place has a region (region_name).
        new_region = (region_slug != slug and region_slug not in found
                      and region_slug not in raced and add(region_slug, cast(str, region_name)))
        if add(slug, wanted[slug], region_slug if region_slug != slug else None):
            created.append(wanted[slug])
        if new_region:
            created.append(cast(str, region_name))
    if raced:
        for obj in _by_slug(session, model, raced):
            found[obj.slug] = obj

    return Resolved([found[s] for s in wanted], created)


def seed_fresh(session: Session) -> int:
    """On a database without any theme, location or content type (a fresh install), add the
    published taxonomy; how many names were added (0 when the database knew some already:
    an operator's own taxonomy is never added to behind their back)."""
    if any(session.scalar(select(_model(facet).id).limit(1)) is not None for facet in FACETS):
        return 0
    return sum(len(names) for names in seed(session, read_published()).values())
