"""Request-scoped helpers shared by pages, API and admin: settings, database session, form."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from digest import db
from digest.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; handlers commit, anything uncommitted is rolled back."""
    session = db._sessionmaker(get_settings(request).database_url)()
    try:
        yield session
    finally:
        session.close()


async def get_form(request: Request) -> FormData:
    return await request.form()


SessionDep = Annotated[Session, Depends(get_session)]
FormDep = Annotated[FormData, Depends(get_form)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
