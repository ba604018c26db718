"""Mounting the admin at /admin on an app: its own session factory and one view class per
app."""

from __future__ import annotations

from fastapi import FastAPI
from sqladmin import Admin
from sqlalchemy.orm import sessionmaker

from digest import db
from digest.settings import Settings
from digest.web.admin.auth import AdminAuth
from digest.web.admin.views import VIEWS


def mount_admin(app: FastAPI, settings: Settings) -> Admin:
    # sqladmin reconfigures the session factory it is given (autoflush off): give it its own.
    factory = sessionmaker(db.engine_for(settings.database_url), expire_on_commit=False)
    admin = Admin(
        app,
        session_maker=factory,
        base_url="/admin",
        title=f"{settings.newsroom_name} digest admin",
        authentication_backend=AdminAuth(settings),
    )
    for view in VIEWS:
        # sqladmin stores the session factory on the view class: one subclass per app, so
        # two apps in one process (tests) never share a database.
        admin.add_view(type(view.__name__, (view,), {"digest_settings": settings}))
    return admin
