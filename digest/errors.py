"""The project's error hierarchy.

Every error a user can cause carries a message that says what was wrong and what to do.
The CLI prints ``str(error)`` on one line and exits non-zero; the web layer maps them to
4xx answers.
"""


class DigestError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(DigestError):
    """A setting is missing or invalid."""


class TemplateError(ConfigError):
    """An email template is missing, does not compile (Jinja or MJML) or lacks a value it needs."""


class IngestError(DigestError):
    """A listing, feed or JSON document could not be read or parsed; nothing was written."""


class BounceError(IngestError):
    """A bounce message or mailbox could not be read or parsed; nothing was written for it."""


class ValidationError(DigestError):
    """A value given by a user (address, theme, time zone, option) is invalid."""


class UnknownTaxonomyError(ValidationError):
    """A theme, location or content type that does not exist was asked for."""

    def __init__(self, facet: str, values: list[str], valid: list[str]):
        self.facet = facet
        self.values = values
        self.valid = valid
        shown = ", ".join(valid[:12]) + (" ..." if len(valid) > 12 else "")
        super().__init__(
            f"unknown {facet}: {', '.join(values)}; valid {facet}s are: {shown or '(none yet)'}"
        )


class NotFoundError(ValidationError):
    """A thing named by id, URL or name (a source, a term) does not exist."""


class HeaderInjectionError(ValidationError):
    """A value that would reach a mail header contains CR or LF."""


class DeliveryError(DigestError):
    """A message could not be handed to the SMTP server.

    ``code`` is the SMTP reply code, ``step`` the command that was refused ("MAIL FROM",
    "RCPT TO", "DATA", or "session" for the greeting/EHLO/AUTH), ``reply`` the server's own
    words ("550 5.7.1 ..."); each is None when there was no reply (a dropped connection).
    """

    def __init__(self, message: str, code: int | None = None, *, step: str | None = None,
                 reply: str | None = None):
        self.code = code
        self.step = step
        self.reply = reply
        super().__init__(message)


class TemporaryDeliveryError(DeliveryError):
    """4xx reply or dropped connection: try again later."""


class PermanentDeliveryError(DeliveryError):
    """5xx reply: do not try again."""


class SendSetupError(ConfigError):
    """A batch could not be sent because of our own set-up (server, login, sender, DKIM key,
    template, settings); its rows were put back as deferred, none failed or suppressed."""


class TokenError(DigestError):
    """A signed link token is forged, expired or meant for another purpose."""


class RateLimitError(DigestError):
    """Too many emails asked for one address in a short time; try again after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int):
        self.retry_after = retry_after
        super().__init__(message)


class WebhookRefused(DigestError):
    """A provider's webhook request is not authentic (bad signature or credentials, a
    certificate from an unexpected place) or is a replay (stale, seen before); ``status`` is
    the HTTP status to answer (401 or 403). Nothing was processed."""

    def __init__(self, message: str, status: int = 403):
        self.status = status
        super().__init__(message)


class ServiceUnavailableError(DigestError):
    """The database or the broker could not be reached; nothing was changed by the step that
    failed. The message names the server and asks whether it is running."""


class PlanningStoppedError(DigestError):
    """Planning a run stopped half-way (a lost connection, a full disk); the run stays
    ``planning`` and the next tick plans the rest by itself."""
