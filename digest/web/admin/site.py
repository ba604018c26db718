"""Mounting the admin at /admin on an app: its own session factory and one view class per
app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from sqladmin import Admin
from sqlalchemy.orm import sessionmaker

from digest import db
from digest.settings import Settings
from digest.web.admin.auth import AdminAuth
from digest.web.admin.forms import AddSubscriberPage, CsvPage
from digest.web.admin.send import AdhocSendPage
from digest.web.admin.sources import SourcesPage
from digest.web.admin.taxonomy import TaxonomyPage
from digest.web.admin.views import VIEWS

# Our own pages (forms, CSV, ad-hoc send): sqladmin BaseViews with templates next to them.
PAGES = [AddSubscriberPage, CsvPage, AdhocSendPage]
PAGES.append(SourcesPage)  # sources and their health (digest.web.admin.sources)
PAGES.append(TaxonomyPage)  # the taxonomy's rename/merge/move and review list (ADR 0036)
TEMPLATES = Path(__file__).resolve().parent / "templates"


def mount_admin(app: FastAPI, settings: Settings) -> Admin:
    # sqladmin reconfigures the session factory it is given (autoflush off): give it its own.
    factory = sessionmaker(db.engine_for(settings.database_url), expire_on_commit=False)
    admin = Admin(
        app,
        session_maker=factory,
        base_url="/admin",
        title=f"{settings.newsroom_name} digest admin",
        authentication_backend=AdminAuth(settings),
        templates_dir=str(TEMPLATES),
    )
    for view in VIEWS:
        # sqladmin stores the session factory on the view class: one subclass per app, so
        # two apps in one process (tests) never share a database.
        admin.add_view(type(view.__name__, (view,), {"digest_settings": settings}))
    for page in PAGES:
        admin.add_base_view(type(page.__name__, (page,), {"digest_settings": settings,
                                                          "session_maker": factory}))
    return admin
