"""The valid lists that 422 answers point to: taxonomy names per facet, time zones; and the
operator's changes to the taxonomy (rename, merge, move) and its review list (ADR 0036)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from digest import taxonomy, taxonomy_edit
from digest.subscribers import timezone_names
from digest.web.api.schemas import NameList
from digest.web.deps import SessionDep

router = APIRouter()

FacetName = Literal["theme", "location", "content_type"]
TermName = Annotated[str, Field(min_length=1, max_length=300)]


class Rename(BaseModel):
    name: TermName
    new_name: TermName


class Merge(BaseModel):
    names: Annotated[list[TermName], Field(min_length=1, max_length=100)]
    into: TermName


class Move(BaseModel):
    name: TermName
    from_facet: FacetName
    to_facet: FacetName
    keep_existing_type: bool = False  # to content types: items with a type keep theirs


class Dismiss(BaseModel):
    name: TermName


class FileReview(BaseModel):
    name: TermName
    facet: FacetName


class Term(BaseModel):
    facet: FacetName
    name: str
    slug: str


class MoveResult(Term):
    items: int
    kept_own_type: list[int]
    split_filters: list[int]
    widened_filters: list[int]


class FiledResult(Term):
    items: int
    kept_own_type: list[int]


class ReviewOut(BaseModel):
    name: str
    slug: str
    reason: str
    seen_count: int
    first_seen_at: datetime
    last_seen_at: datetime
    source: str
    items: int


class ReviewList(BaseModel):
    reviews: list[ReviewOut]


@router.get("/taxonomy/review", response_model=ReviewList, tags=["taxonomy"])
def review_list(session: SessionDep):
    """Feed categories no facet could take, waiting to be filed or dismissed."""
    return ReviewList(reviews=[ReviewOut(**vars(r)) for r in
                               taxonomy_edit.review_list(session)])


@router.post("/taxonomy/review/file", response_model=FiledResult, tags=["taxonomy"],
             responses={404: {"description": "Not on the review list"}})
def file_review(body: FileReview, session: SessionDep):
    """File a reviewed category in a facet: its items get the term; it leaves the list."""
    filed = taxonomy_edit.file_review(session, body.name, body.facet)
    session.commit()
    return FiledResult(facet=body.facet, name=filed.term.name, slug=filed.term.slug,
                       items=filed.items, kept_own_type=filed.kept_own_type)


@router.post("/taxonomy/review/dismiss", status_code=204, tags=["taxonomy"],
             responses={404: {"description": "Not on the review list"}})
def dismiss_review(body: Dismiss, session: SessionDep):
    """Take a category off the review list without filing it (it returns if seen again)."""
    taxonomy_edit.dismiss_review(session, body.name)
    session.commit()


@router.post("/taxonomy/move", response_model=MoveResult, tags=["taxonomy"])
def move_term(body: Move, session: SessionDep):
    """Move a term to another facet; its items and the filters that chose it follow."""
    report = taxonomy_edit.move(session, body.name, body.from_facet, body.to_facet,
                                keep_existing_type=body.keep_existing_type)
    session.commit()
    return MoveResult(facet=body.to_facet, name=report.term.name, slug=report.term.slug,
                      items=report.items, kept_own_type=report.kept_own_type,
                      split_filters=report.split_filters,
                      widened_filters=report.widened_filters)


@router.get("/taxonomy/{facet}", response_model=NameList, tags=["taxonomy"])
def taxonomy_names(facet: FacetName, session: SessionDep):
    return NameList(facet=facet, names=taxonomy.list_names(session, facet))


@router.post("/taxonomy/{facet}/rename", response_model=Term, tags=["taxonomy"])
def rename_term(facet: FacetName, body: Rename, session: SessionDep):
    """Rename a term (a name another term has is refused: merge them)."""
    term = taxonomy_edit.rename(session, facet, body.name, body.new_name)
    session.commit()
    return Term(facet=facet, name=term.name, slug=term.slug)


@router.post("/taxonomy/{facet}/merge", response_model=Term, tags=["taxonomy"])
def merge_terms(facet: FacetName, body: Merge, session: SessionDep):
    """Make ``names`` one term, ``into``: their items and filters get it."""
    term = taxonomy_edit.merge(session, facet, body.names, body.into)
    session.commit()
    return Term(facet=facet, name=term.name, slug=term.slug)


@router.get("/timezones", response_model=NameList, tags=["taxonomy"])
def timezones():
    return NameList(facet="time zone", names=timezone_names())
