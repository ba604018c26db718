"""A local SMTP server that keeps what it receives: for ``digest demo`` and the tests.

Built on aiosmtpd's threaded Controller. Every message is kept in memory (``.messages``) and,
when an outbox directory is given, written there as ``<timestamp>-<n>.eml`` exactly as
received (CRLF line ends). Replies can be scripted per recipient to play a server that
defers, rejects or hangs up. SMTPUTF8 (RFC 6531) is offered unless ``smtputf8=False``, to
play a server that does not.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import hmac
import ssl
import threading
import time
import warnings
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from digest.errors import ValidationError

# Large enough for any digest; aiosmtpd advertises it as SIZE.
DATA_SIZE_LIMIT = 64 * 1024 * 1024


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    path: Path | None
    tls: bool = False  # came over TLS (STARTTLS or implicit)
    login: str | None = None  # the AUTH login the client used, if any
    mail_options: list[str] = field(default_factory=list)  # MAIL FROM parameters, upper-case

    @property
    def smtputf8(self) -> bool:
        """The client asked for SMTPUTF8 (its headers may carry UTF-8, RFC 6532)."""
        return "SMTPUTF8" in self.mail_options

    def parsed(self) -> email.message.EmailMessage:
        if self.smtputf8:
            # The bytes parser would turn UTF-8 in addresses into surrogate escapes.
            text = self.data.decode("utf-8", "surrogateescape")
            return email.message_from_string(text, policy=email.policy.default)
        return email.message_from_bytes(self.data, policy=email.policy.default)


class _Handler:
    """aiosmtpd hooks; runs on the server's event-loop thread."""

    def __init__(self, sink: MailSink):
        self.sink = sink

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.sink._count_session(session)
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):
        session.host_name = hostname
        self.sink._count_session(session)
        return f"250 {server.hostname}"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink._next_reply(address)
        if reply == "drop":
            # Hang up without a reply, like a server that crashed or timed out.
            server.transport.abort()
            return "421 4.4.2 connection dropped"  # never reaches the client
        if reply is not None and reply.startswith("pause:"):
            # A slow server: the client is stuck mid-transaction for that long, then accepted.
            await asyncio.sleep(float(reply.split(":", 1)[1]))
            reply = None
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_QUIT(self, server, session, envelope):
        with self.sink._lock:
            self.sink.quits += 1
        return "221 2.0.0 Bye"

    async def handle_DATA(self, server, session, envelope):
        if self.sink.data_delay:
            await asyncio.sleep(self.sink.data_delay)
        login = getattr(session.auth_data, "login", None)
        number = self.sink._store(
            envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
            tls=self.sink.implicit_tls or session.ssl is not None,
            login=login.decode("utf-8", "replace") if isinstance(login, bytes) else login,
            mail_options=list(envelope.mail_options),
        )
        return f"250 2.0.0 OK: queued as {number}"


class MailSink:
    """An SMTP server on ``host:port`` (port 0: a free port, read ``.port`` after start)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, outbox: Path | None = None, *,
                 tls_context: ssl.SSLContext | None = None, implicit_tls: bool = False,
                 logins: dict[str, str] | None = None, smtputf8: bool = True,
                 data_size_limit: int = DATA_SIZE_LIMIT, data_delay: float = 0.0):
        """``tls_context`` (a server context with its certificate loaded) offers STARTTLS and
        requires it before MAIL; with ``implicit_tls`` the connection is TLS from the first
        byte instead (like port 465). ``logins`` (user: password) requires AUTH.
        ``smtputf8=False`` plays a server without SMTPUTF8 (MAIL FROM ... SMTPUTF8 gets 501).
        ``data_size_limit`` is announced as SIZE and enforced (552 at MAIL FROM or DATA);
        ``data_delay`` seconds pass before the reply to the final dot (a slow server)."""
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        self.host = host
        self.port = port
        self.outbox = Path(outbox) if outbox is not None else None
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.logins = dict(logins) if logins is not None else None
        self.smtputf8 = smtputf8
        self.data_size_limit = data_size_limit
        self.data_delay = data_delay
        self.messages: list[ReceivedMessage] = []
        self.sessions = 0  # connections that said EHLO/HELO
        self.quits = 0  # connections the client closed politely with QUIT
        self._lock = threading.Condition()
        self._scripts: dict[str, deque[str]] = defaultdict(deque)
        self._controller: _Controller | None = None
        self._received = 0

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> MailSink:
        if self._controller is not None:
            raise RuntimeError("the mail sink is already running")
        if self.outbox is not None:
            self.outbox.mkdir(parents=True, exist_ok=True)
        controller = _Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            server_hostname="digest-mailsink.localhost",  # no getfqdn() DNS lookup
            data_size_limit=self.data_size_limit,
            enable_SMTPUTF8=self.smtputf8,
            **self._security_options(),
        )
        controller.start()
        self.port = controller.port
        self._controller = controller
        return self

    def _security_options(self) -> dict:
        options: dict = {}
        if self.tls_context is not None and self.implicit_tls:
            options["ssl_context"] = self.tls_context
        elif self.tls_context is not None:
            options.update(tls_context=self.tls_context, require_starttls=True)
        if self.logins is not None:
            options.update(authenticator=self._authenticate, auth_required=True,
                           # aiosmtpd cannot tell an implicit-TLS socket from a plain one.
                           auth_require_tls=not self.implicit_tls)
        return options

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.logins is None:
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        expected = self.logins.get(login)
        ok = expected is not None and hmac.compare_digest(expected, password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- what tests and the demo use --------------------------------------------------

    def script(self, rcpt: str, *replies: str) -> None:
        """Queue replies to RCPT TO for ``rcpt``, one per attempt; then accept normally.

        A reply is a full SMTP reply line (``"451 4.3.0 Try again later"``), ``"drop"``
        to close the connection without answering, or ``"pause:SECONDS"`` to answer that
        much later (and then accept).
        """
        for reply in replies:
            if reply.startswith("pause:") and reply[6:].replace(".", "", 1).isdigit():
                continue
            if reply != "drop" and not (reply[:3].isdigit() and reply[0] in "2345"):
                raise ValidationError(
                    f"scripted reply {reply!r} must be 'drop' or start with an SMTP code "
                    "such as '451 4.3.0 Try again later'"
                )
        with self._lock:
            self._scripts[rcpt.lower()].extend(replies)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages arrived; a copy of the list."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"mail sink received {len(self.messages)} of {count} messages "
                        f"within {timeout} s"
                    )
                self._lock.wait(remaining)
            return list(self.messages)

    # --- called from the handler -------------------------------------------------------

    def _count_session(self, session) -> None:
        if not getattr(session, "digest_counted", False):
            session.digest_counted = True
            with self._lock:
                self.sessions += 1

    def _next_reply(self, rcpt: str) -> str | None:
        with self._lock:
            queue = self._scripts.get(rcpt.lower())
            return queue.popleft() if queue else None

    def _store(self, mail_from: str, rcpt_tos: list[str], data: bytes, *, tls: bool = False,
               login: str | None = None, mail_options: list[str] | None = None) -> int:
        with self._lock:
            self._received += 1
            number = self._received
        path = None
        if self.outbox is not None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            path = self.outbox / f"{stamp}-{number}.eml"
            path.write_bytes(data)
        with self._lock:
            self.messages.append(ReceivedMessage(mail_from, rcpt_tos, data, path, tls, login,
                                                 list(mail_options or [])))
            self._lock.notify_all()
        return number


class _Controller(Controller):
    """Reads the real port back when port 0 asked the OS for a free one."""

    def factory(self):
        with warnings.catch_warnings():
            # With implicit TLS, AUTH is over TLS; aiosmtpd only cannot see it (issue 281).
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return super().factory()

    def _trigger_server(self):
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        return super()._trigger_server()
