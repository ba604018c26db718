"""Handing finished messages to an SMTP server, one recipient per transaction.

Every outcome is explicit: a 2xx reply gives a ``SendResult``; a 4xx reply, a dropped
connection, a timeout or a refused connection raises ``TemporaryDeliveryError`` (try again
later); a 5xx reply raises ``PermanentDeliveryError``. ``smtplib.SMTP.sendmail`` is not used
because it returns refused recipients instead of raising; the low-level ``mail()``,
``rcpt()`` and ``data()`` give the reply of each step.

An address with a non-ASCII local part goes out only with DIGEST_SMTPUTF8 on and over a
server that offers SMTPUTF8 (RFC 6531); messages to ASCII addresses never use it.

A worker process keeps one connection open across batches (``kept_transport``), keyed by
the SMTP settings, closed after ``DIGEST_SMTP_IDLE_SECONDS`` without a send and when the
process ends. A kept connection the server has closed meanwhile is noticed by the next
MAIL FROM failing (no reply, or 421) and opened again once: nothing was sent on it yet. A
connection lost after DATA is never retried: the message may have been accepted.

The reply to the final dot waits DIGEST_SMTP_DATA_END_TIMEOUT (RFC 5321's 10 minutes, within
half the lease); every other reply, QUIT's shorter still, waits DIGEST_SMTP_TIMEOUT. A message
larger than the SIZE the server announces is refused here, for that recipient only.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from digest.errors import (
    ConfigError,
    DigestError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    ValidationError,
)
from digest.mail import (
    SMTPUTF8_HINT,
    ascii_address,
    check_header_value,
    needs_smtputf8,
    utf8_address,
)
from digest.settings import Settings

if TYPE_CHECKING:
    from typing_extensions import Buffer

# QUIT is a courtesy: a server that does not answer it soon is not waited for.
QUIT_TIMEOUT = 5.0


class _SMTP(smtplib.SMTP):
    """smtplib's client, but the reply to the final dot waits ``data_end_timeout``."""

    data_end_timeout: float | None = None
    # -1 outside data(); else how many writes data() has made (the command, then the body).
    _data_writes = -1
    body_sent = False

    def data(self, msg: Buffer | str) -> tuple[int, bytes]:
        self._data_writes = 0
        self.body_sent = False
        try:
            return super().data(msg)
        finally:
            self._data_writes = -1
            if self.sock is not None:
                self.sock.settimeout(self.timeout)

    def send(self, s: Buffer | str) -> None:
        super().send(s)
        if self._data_writes >= 0:
            self._data_writes += 1
            if self._data_writes == 2:  # the body and its final dot are written
                self.body_sent = True
                if self.data_end_timeout and self.sock is not None:
                    self.sock.settimeout(self.data_end_timeout)


class _SMTPSSL(_SMTP, smtplib.SMTP_SSL):
    """The same over implicit TLS."""


@dataclass(frozen=True)
class SendResult:
    code: int
    reply: str


class Transport(Protocol):
    def __enter__(self) -> Transport: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def send(self, mail_from: str, rcpt: str, data: bytes) -> SendResult: ...


class SMTPTransport:
    """One SMTP connection, opened on the first send and reused for the following ones.

    After a refused transaction the connection is reset (RSET) and kept; after a dropped
    connection it is discarded and the next send connects again. Use as a context manager
    so the connection is closed with QUIT. Not thread-safe: one transport per worker.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        if self.settings.smtp_ssl and self.settings.smtp_starttls:
            raise ConfigError(
                "DIGEST_SMTP_SSL (implicit TLS, usually port 465) and DIGEST_SMTP_STARTTLS "
                "(usually port 587) exclude each other; set only one"
            )
        if (self.settings.smtp_user and not (self.settings.smtp_ssl or self.settings.smtp_starttls)
                and not _is_loopback(self.settings.smtp_host)):
            raise ConfigError(
                f"DIGEST_SMTP_USER is set but neither DIGEST_SMTP_STARTTLS nor DIGEST_SMTP_SSL: "
                f"the password would cross the network to {self.settings.smtp_host} in clear; "
                "turn one of them on"
            )
        self._conn: _SMTP | None = None
        self._context: ssl.SSLContext | None = None
        # Whether the open connection has answered a transaction already (a kept one the
        # server may have closed since); a fresh one that fails is not tried again.
        self._answered = False
        # True while a transaction is under way: closed then, the state is unknown.
        self._in_transaction = False
        self.connections_opened = 0

    def __enter__(self) -> SMTPTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def forget(self) -> None:
        """Close our socket without a QUIT (a forked child's copy of its parent's)."""
        self._discard()

    def close(self) -> None:
        """QUIT and close the connection if one is open (errors on the way out are ignored).

        QUIT waits ``QUIT_TIMEOUT`` at most; a connection closed in the middle of a
        transaction (the batch was interrupted) is closed without it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._in_transaction:
            self._in_transaction = False
            _close_quietly(conn)
            return
        try:
            if conn.sock is not None:
                conn.sock.settimeout(min(QUIT_TIMEOUT, self.settings.smtp_timeout))
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()

    def send(self, mail_from: str, rcpt: str, data: bytes) -> SendResult:
        """Send ``data`` unchanged from ``mail_from`` to ``rcpt``; the reply to DATA on success."""
        check_header_value("envelope sender", mail_from)
        check_header_value("recipient", rcpt)
        smtputf8 = self.settings.smtputf8
        mail_from, sender_utf8 = _envelope(mail_from, "envelope sender", smtputf8)
        rcpt, rcpt_utf8 = _envelope(rcpt, "recipient", smtputf8)
        # Stays set if something outside SMTP (a time limit, a shutdown) interrupts the
        # transaction: ``close`` then drops the connection instead of waiting on QUIT.
        self._in_transaction = True
        try:
            try:
                result = self._transaction(mail_from, rcpt, data, sender_utf8, rcpt_utf8)
            except _ClosedBeforeData:
                # A reused connection the server closed while it was idle: nothing was sent
                # on it for this message, so a new one carries it (once: a new connection
                # that fails the same way raises).
                result = self._transaction(mail_from, rcpt, data, sender_utf8, rcpt_utf8)
        except DigestError:
            self._in_transaction = False  # refused or dropped: the connection is clean or gone
            raise
        self._in_transaction = False
        return result

    def _transaction(self, mail_from: str, rcpt: str, data: bytes, sender_utf8: bool,
                     rcpt_utf8: bool) -> SendResult:
        retry_allowed = self._conn is not None and self._answered
        conn = self._connection()
        self._check_size(conn, len(data), rcpt, reused=retry_allowed)
        options = [f"SIZE={len(data)}"] if conn.has_extn("size") else []
        if sender_utf8 or rcpt_utf8:
            options += self._smtputf8_options(conn, rcpt if rcpt_utf8 else mail_from)
        step = "MAIL FROM"
        try:
            # With SMTPUTF8 among the options smtplib sends the commands in UTF-8.
            code, reply = conn.mail(mail_from, options)
            if code == 421 and retry_allowed:
                # The server's idle timeout ("421 ... timeout exceeded"), then it hangs up.
                self._discard()
                raise _ClosedBeforeData
            self._answered = True
            if code != 250:
                self._refused(step, code, reply, rcpt)
            step = "RCPT TO"
            code, reply = conn.rcpt(rcpt)
            if code not in (250, 251):
                self._refused(step, code, reply, rcpt)
            step = "DATA"
            code, reply = conn.data(data)
            if code != 250:
                self._refused(step, code, reply, rcpt)
        except smtplib.SMTPResponseException as exc:  # data() raises when 354 is not given
            self._refused(step, exc.smtp_code, exc.smtp_error, rcpt)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            after_dot = step == "DATA" and conn.body_sent
            self._discard()
            if step == "MAIL FROM" and retry_allowed:
                raise _ClosedBeforeData from exc
            if after_dot:
                # smtplib reports a read that timed out as a disconnection.
                timed_out = isinstance(exc, TimeoutError) or isinstance(exc.__context__,
                                                                         TimeoutError)
                why = (f"no reply within {conn.data_end_timeout:g} s" if timed_out
                       else _describe(exc))
                raise TemporaryDeliveryError(
                    f"connection to {self._where()} lost at DATA after the end of the message "
                    f"for {rcpt}: {why}; the server may have accepted it, it is tried again "
                    "later"
                ) from exc
            raise TemporaryDeliveryError(
                f"connection to {self._where()} lost at {step} for {rcpt}: {_describe(exc)}; "
                "the message was not accepted, try again later"
            ) from exc
        return SendResult(code, _text(reply))

    # --- internals --------------------------------------------------------------------

    def _where(self) -> str:
        return f"SMTP server {self.settings.smtp_host}:{self.settings.smtp_port}"

    def _check_size(self, conn: smtplib.SMTP, size: int, rcpt: str, *,
                    reused: bool = False) -> None:
        """Refuse, for this recipient only, a message larger than the SIZE the server
        announced in its EHLO reply (RFC 1870; "SIZE" or "SIZE 0" set no limit). Over the limit
        on a connection kept from earlier batches, a new connection asks again first: the
        server may have raised the limit since, and a refusal here fails the reader for good."""
        limit = _announced_size(conn)
        if limit and size > limit and reused:
            self._discard()  # a new connection carries the message, with a fresh EHLO
            raise _ClosedBeforeData
        if limit and size > limit:
            raise PermanentDeliveryError(
                f"message too large: the message to {rcpt} is {_kb(size)}, {self._where()} "
                f"accepts at most {_kb(limit)} (SIZE); it was not sent: shorten the digest or "
                "raise the server's limit")

    def _smtputf8_options(self, conn: smtplib.SMTP, address: str) -> list[str]:
        """MAIL FROM parameters for a transaction that needs SMTPUTF8, or a permanent error
        for this recipient only (nothing was sent: the connection stays good for others)."""
        if not conn.has_extn("smtputf8"):
            # The server refused nothing: no step and no reply, so no status is read from it.
            raise PermanentDeliveryError(
                f"the SMTP server (DIGEST_SMTP_HOST) does not offer SMTPUTF8, which the address "
                f"{address} needs (non-ASCII characters before the @); it was not sent: relay "
                "through a server that offers SMTPUTF8"
            )
        # The message carries UTF-8 headers; an SMTPUTF8 server supports 8BITMIME (RFC 6531).
        return ["SMTPUTF8", "BODY=8BITMIME"] if conn.has_extn("8bitmime") else ["SMTPUTF8"]

    def _connection(self) -> _SMTP:
        if self._conn is not None:
            return self._conn
        s = self.settings
        conn: _SMTP | None = None
        try:
            if s.smtp_ssl:
                conn = _SMTPSSL(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=self._tls_context(),
                )
            else:
                conn = _SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            conn.data_end_timeout = data_end_timeout(s)
            conn.ehlo_or_helo_if_needed()
            if s.smtp_starttls:
                conn.starttls(context=self._tls_context())
                conn.ehlo()
            if s.smtp_user:
                password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                conn.login(s.smtp_user, password)
        except ssl.SSLCertVerificationError as exc:
            _close_quietly(conn)
            raise ConfigError(
                f"the certificate of {self._where()} is not trusted: {exc.verify_message}; "
                "give the CA that signed it in DIGEST_SMTP_TLS_CA_FILE, or fix DIGEST_SMTP_HOST "
                "to the name on the certificate"
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            _close_quietly(conn)
            raise ConfigError(
                f"{self._where()} does not support what the settings ask for ({exc}); "
                "check DIGEST_SMTP_STARTTLS and DIGEST_SMTP_USER"
            ) from exc
        except smtplib.SMTPAuthenticationError as exc:
            _close_quietly(conn)
            # A login failure is the operator's to fix, not the recipient's fault.
            raise ConfigError(
                f"{self._where()} refused the login of {s.smtp_user!r}: {exc.smtp_code} "
                f"{_text(exc.smtp_error)}; check DIGEST_SMTP_USER and DIGEST_SMTP_PASSWORD"
            ) from exc
        except smtplib.SMTPResponseException as exc:
            _close_quietly(conn)
            error = error_for(exc.smtp_code)
            words = f"{exc.smtp_code} {_text(exc.smtp_error)}"
            raise error(f"{self._where()} refused the session: {words}", exc.smtp_code,
                        step="session", reply=words) from exc
        except (smtplib.SMTPException, OSError) as exc:
            _close_quietly(conn)
            # No reply, but the step says it: the session never started, which is about us.
            raise TemporaryDeliveryError(
                f"cannot connect to {self._where()}: {_describe(exc)}; "
                "check DIGEST_SMTP_HOST/DIGEST_SMTP_PORT or try again later", step="session"
            ) from exc
        self._conn = conn
        self._answered = False
        self.connections_opened += 1
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        """Verifying context: the system's CAs, or only those in DIGEST_SMTP_TLS_CA_FILE."""
        if self._context is None:
            ca_file = self.settings.smtp_tls_ca_file
            try:
                self._context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot read DIGEST_SMTP_TLS_CA_FILE {str(ca_file)!r}: {exc}; "
                                  "it must be a readable PEM file of CA certificates") from exc
        return self._context

    def _refused(self, step: str, code: int, reply: bytes | str, rcpt: str) -> None:
        """Raise for a non-success reply, leaving the connection clean for the next send."""
        self._reset()
        error = error_for(code)
        words = f"{code} {_text(reply)}"
        raise error(f"{self._where()} refused {rcpt} at {step}: {words}", code, step=step,
                    reply=words)

    def _reset(self) -> None:
        """RSET the open transaction; a connection that cannot take it is dropped."""
        if self._conn is None:
            return
        try:
            code, _ = self._conn.rset()
            if code != 250:
                self._discard()
        except (smtplib.SMTPException, OSError):
            self._discard()

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        _close_quietly(conn)


class _ClosedBeforeData(Exception):
    """A reused connection failed at MAIL FROM: the server closed it; nothing was sent."""


def transport_from_settings(settings: Settings) -> Transport:
    """The SMTP transport for the configured server: its own connection, closed on exit."""
    return SMTPTransport(settings)


# --- the connection a worker process keeps between batches ----------------------------------

def _smtp_key(s: Settings) -> tuple[object, ...]:
    """What a connection depends on: another value is another connection."""
    password = s.smtp_password.get_secret_value() if s.smtp_password else None
    return (s.smtp_host, s.smtp_port, s.smtp_user, password, s.smtp_starttls, s.smtp_ssl,
            s.smtp_timeout, s.smtp_data_end_timeout, s.lease_seconds,
            str(s.smtp_tls_ca_file or ""), s.smtputf8)


@dataclass
class _Kept:
    key: tuple[object, ...]
    transport: SMTPTransport
    busy: bool = False
    last_used: float = field(default_factory=time.monotonic)
    timer: threading.Timer | None = None


_kept_lock = threading.Lock()
_kept: _Kept | None = None


def kept_transport(settings: Settings) -> Transport:
    """A transport over this process's kept connection: leaving the ``with`` block gives it
    back open (closed instead if the block raised: its state is unknown). With
    DIGEST_SMTP_IDLE_SECONDS=0, or while another thread holds the kept one, a connection of
    its own, closed on exit."""
    if settings.smtp_idle_seconds <= 0:
        return SMTPTransport(settings)
    return _KeptLease(settings)


class _KeptLease:
    def __init__(self, settings: Settings):
        SMTPTransport(settings)  # the settings are checked now, as for a transport of its own
        self.settings = settings
        self._transport: SMTPTransport | None = None
        self._kept = False

    def __enter__(self) -> _KeptLease:
        self._transport, self._kept = _take(self.settings)
        return self

    def __exit__(self, *exc_info: object) -> None:
        transport, self._transport = self._transport, None
        if transport is None:
            return
        if self._kept:
            _give_back(transport, self.settings.smtp_idle_seconds,
                       broken=bool(exc_info) and exc_info[0] is not None)
        else:
            transport.close()

    def send(self, mail_from: str, rcpt: str, data: bytes) -> SendResult:
        if self._transport is None:
            raise RuntimeError("use the kept transport inside a with block")
        return self._transport.send(mail_from, rcpt, data)


def _take(settings: Settings) -> tuple[SMTPTransport, bool]:
    global _kept
    key = _smtp_key(settings)
    stale: SMTPTransport | None = None
    with _kept_lock:
        kept = _kept
        if kept is not None and kept.busy:
            return SMTPTransport(settings), False  # another thread is sending on it
        if kept is not None and kept.key != key:
            stale, kept = kept.transport, None  # other settings (tests build several)
        if kept is not None:
            if kept.timer is not None:
                kept.timer.cancel()
                kept.timer = None
            if time.monotonic() - kept.last_used >= settings.smtp_idle_seconds:
                kept.transport.close()  # idle too long: the server may be about to drop it
        else:
            kept = _Kept(key, SMTPTransport(settings))
        kept.busy = True
        _kept = kept
    if stale is not None:
        stale.close()
    return kept.transport, True


def _give_back(transport: SMTPTransport, idle_seconds: float, *, broken: bool) -> None:
    with _kept_lock:
        kept = _kept
        if kept is None or kept.transport is not transport:
            transport.close()
            return
        if broken:
            transport.close()  # next batch connects again
        kept.busy = False
        kept.last_used = time.monotonic()
        kept.timer = threading.Timer(idle_seconds, _close_if_idle, (transport, idle_seconds))
        kept.timer.daemon = True
        kept.timer.start()


def _close_if_idle(transport: SMTPTransport, idle_seconds: float) -> None:
    """Timer: QUIT a kept connection nobody used for ``idle_seconds`` (it stays kept, and
    opens again on the next send)."""
    with _kept_lock:
        kept = _kept
        if (kept is None or kept.transport is not transport or kept.busy
                or time.monotonic() - kept.last_used < idle_seconds * 0.99):
            return
        kept.timer = None
        transport.close()


def close_kept_connection() -> None:
    """QUIT and forget this process's kept connection (a worker process shutting down)."""
    global _kept
    with _kept_lock:
        kept, _kept = _kept, None
        if kept is None:
            return
        if kept.timer is not None:
            kept.timer.cancel()
    kept.transport.close()


def _forget_after_fork() -> None:
    """In a forked child the parent's connection is not ours: its socket is dropped without
    a QUIT (which would end the parent's session), and the child opens its own."""
    global _kept, _kept_lock
    kept, _kept, _kept_lock = _kept, None, threading.Lock()
    if kept is not None:
        kept.transport.forget()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(close_kept_connection)


def _envelope(address: str, role: str, smtputf8: bool) -> tuple[str, bool]:
    """(the address as SMTP carries it, whether that needs SMTPUTF8).

    Internationalised domains go out in IDNA form; a non-ASCII local part goes out in UTF-8
    with SMTPUTF8 on, and is refused before connecting with it off.
    """
    if address.isascii():
        return address, False
    try:
        return ascii_address(address), False
    except ValidationError as exc:
        if not needs_smtputf8(address):
            raise ValidationError(f"{role} {address!r} cannot be sent: {exc}") from exc
        if not smtputf8:
            raise ValidationError(
                f"{role} {address!r} cannot be sent without SMTPUTF8, which is off: "
                f"{SMTPUTF8_HINT}"
            ) from exc
    return utf8_address(address), True


def _announced_size(conn: smtplib.SMTP) -> int:
    words = (conn.esmtp_features.get("size") or "").split()
    return int(words[0]) if words and words[0].isdigit() else 0


def data_end_timeout(settings: Settings) -> float:
    """How long the reply to the final dot is awaited: DIGEST_SMTP_DATA_END_TIMEOUT, but
    within half the lease (the batch's time limit must not cut the wait short), and never
    shorter than any other command's."""
    return max(min(settings.smtp_data_end_timeout, settings.lease_seconds / 2),
               settings.smtp_timeout)


def _kb(size: int) -> str:
    return f"{size / 1000:.0f} KB" if size >= 1000 else f"{size} bytes"


def error_for(code: int) -> type[TemporaryDeliveryError] | type[PermanentDeliveryError]:
    # Anything that is neither 4xx nor 5xx is a protocol surprise: retrying is the safe side.
    return PermanentDeliveryError if 500 <= code < 600 else TemporaryDeliveryError


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _close_quietly(conn: smtplib.SMTP | None) -> None:
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.close()
