"""Signing in to the admin: the argon2 password check and sqladmin's session backend.

The session cookie is SameSite=Strict: sqladmin runs actions as GET links, and a strict
cookie is not sent when another site links or redirects to them.
"""

from __future__ import annotations

import hashlib
import hmac
from html import escape

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqladmin.authentication import AuthenticationBackend
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from digest.settings import Settings
from digest.web.ratelimit import limit_storage_url

SESSION_MAX_AGE = 8 * 3600
LOGIN_LIMIT = parse("10/minute")
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """The value for DIGEST_ADMIN_PASSWORD_HASH."""
    return _hasher.hash(password)


def check_credentials(settings: Settings, username: str, password: str) -> bool:
    stored = settings.admin_password_hash
    if not stored:
        return False
    password_ok: bool
    try:
        password_ok = _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        password_ok = False
    # Both checks always run, so the time taken does not tell which one failed.
    user_ok = hmac.compare_digest(username.encode(), settings.admin_username.encode())
    return password_ok and user_ok


class AdminAuth(AuthenticationBackend):
    def __init__(self, settings: Settings):
        self.settings = settings
        # A key of its own, derived from the secret key: a link token is never a session.
        key = hmac.new(
            settings.secret_key.get_secret_value().encode(), b"digest.admin-session", hashlib.sha256
        ).hexdigest()
        super().__init__(
            secret_key=key,
            session_cookie="digest_admin",
            same_site="strict",
            https_only=settings.public_base_url.startswith("https://"),
            max_age=SESSION_MAX_AGE,
        )
        self._attempts = MovingWindowRateLimiter(storage_from_string(limit_storage_url(settings)))

    async def login(self, request: Request) -> Response | bool:
        # Password guessing: a few tries a minute per client address, wherever they fail.
        client = request.client.host if request.client else "unknown"
        if not self._attempts.hit(LOGIN_LIMIT, "digest-admin-login", client):
            return HTMLResponse(
                "<!doctype html><title>Too many attempts</title><h1>Too many "
                "sign-in attempts</h1><p>Wait a minute and try again.</p>",
                status_code=429,
                headers={"Retry-After": "60"},
            )
        form = await request.form()
        username, password = str(form.get("username") or ""), str(form.get("password") or "")
        ok = await anyio.to_thread.run_sync(check_credentials, self.settings, username, password)
        if ok:
            request.session.clear()
            request.session.update({"user_id": self.settings.admin_username, "admin": True})
        return ok

    async def logout(self, request: Request) -> bool:
        request.session.clear()
        return True

    async def authenticate(self, request: Request) -> Response | bool:
        if request.session.get("admin") is True:
            return True
        login = escape(str(request.url_for("admin:login")))
        return HTMLResponse(
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in required'
            f'</title></head><body><h1>Sign in required</h1><p><a href="{login}">Sign in to the '
            f"admin</a></p></body></html>",
            status_code=401,
        )
