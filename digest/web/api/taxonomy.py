"""The valid lists that 422 answers point to: taxonomy names per facet, time zones."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from digest import taxonomy
from digest.subscribers import timezone_names
from digest.web.api.schemas import NameList
from digest.web.deps import SessionDep

router = APIRouter()


@router.get("/taxonomy/{facet}", response_model=NameList, tags=["taxonomy"])
def taxonomy_names(facet: Literal["theme", "location", "content_type"], session: SessionDep):
    return NameList(facet=facet, names=taxonomy.list_names(session, facet))


@router.get("/timezones", response_model=NameList, tags=["taxonomy"])
def timezones():
    return NameList(facet="time zone", names=timezone_names())
