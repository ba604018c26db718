"""Subscriber pages: subscribe, confirm, preferences, unsubscribe, view in browser.

Subscribers never log in: every page after /subscribe is reached from a signed link in an
email, and the link's purpose is checked (a confirm link cannot unsubscribe). The pages
work without JavaScript. Nothing on them tells a visitor whether an address was already
subscribed. The forms post a CSRF token (``csrf``) made for what they act on.
"""

from digest.web.pages.common import as_sentence, page
from digest.web.pages.csrf import make_csrf, subject_for
from digest.web.pages.routes import router

__all__ = ["as_sentence", "make_csrf", "page", "router", "subject_for"]
