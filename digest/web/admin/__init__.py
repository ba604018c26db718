"""The admin UI (sqladmin) at /admin, behind a login from settings.

``DIGEST_ADMIN_USERNAME`` and ``DIGEST_ADMIN_PASSWORD_HASH`` (an argon2 hash, made with
``digest hash-password``) are the only credentials; without a hash nobody can sign in, and
each client address gets 10 sign-in attempts a minute.
Every admin page but the login answers 401 to a visitor without a session. The session
cookie is SameSite=Strict: sqladmin runs actions as GET links, and a strict cookie is not
sent when another site links or redirects to them.

Views are read-mostly: changes go through the project's functions (suppress, unsuppress,
re-queue, lift a domain's pause) or the subscriber's own preferences page, so the same
validation applies everywhere. Pages of our own (``forms``: add a subscriber, CSV import
and export; ``send``: the ad-hoc send from dry run to progress) post forms with a signed
CSRF token.
"""

from digest.web.admin.auth import check_credentials, hash_password
from digest.web.admin.site import mount_admin

__all__ = ["check_credentials", "hash_password", "mount_admin"]
