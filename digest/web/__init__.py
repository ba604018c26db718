"""Subscriber pages, admin UI and JSON API (FastAPI). Build the app with ``create_app``."""

from digest.web.app import create_app

__all__ = ["create_app"]
