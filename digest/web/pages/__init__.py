from digest.web.pages.csrf import make_csrf, subject_for
from digest.web.pages.subscribe import _message, page, router

__all__ = ["_message", "make_csrf", "page", "router", "subject_for"]
