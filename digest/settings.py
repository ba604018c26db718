"""One settings object, read from ``DIGEST_*`` environment variables (and ``.env``)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The demo's database and key; outside that file the key must be set (check_secrets).
BUILTIN_DATABASE_URL = "sqlite:///./var/digest.db"
BUILTIN_SECRET_KEY = "change-me-in-production"
MIN_SECRET_KEY_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGEST_", env_file=".env", extra="ignore")

    # Storage and broker
    database_url: str = Field(
        default=BUILTIN_DATABASE_URL,
        description="SQLAlchemy URL. SQLite file by default; postgresql+psycopg://... in "
        "production.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (redis://...). Empty: tasks run in-process, no worker needed.",
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend (optional)."
    )
    task_queue: str = Field(default="digest", description="Celery queue the tasks go to.")

    # SMTP
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_timeout: float = 30.0
    smtp_data_end_timeout: float = Field(
        default=600.0, gt=0,
        description="Seconds to wait for the reply to the final dot of a message (RFC 5321 "
                    "4.5.3.2.6: 10 minutes), never more than half of DIGEST_LEASE_SECONDS; "
                    "every other command waits DIGEST_SMTP_TIMEOUT.")
    smtp_idle_seconds: float = Field(
        default=30.0, ge=0,
        description="A worker process keeps its SMTP connection open between batches and closes "
                    "it after this many seconds without a send (before the server's own timeout); "
                    "0: a connection per batch.")
    smtp_tls_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed the SMTP server's certificate; "
                    "default: the system's trusted CAs.")
    smtputf8: bool = Field(
        default=False,
        description="Accept addresses with non-ASCII characters before the @ (zoë@example.org) "
                    "and send to them with SMTPUTF8 (RFC 6531), where the SMTP server offers it.")

    # Identity of the mail
    from_address: str = "OSCE Newsroom Digest <digest@newsroom.example.org>"
    reply_to: str | None = None
    list_id: str = "Newsroom digest <digest.newsroom.example.org>"
    public_base_url: str = "http://127.0.0.1:8000"
    newsroom_url: str = "https://www.osce.org/newsroom"
    newsroom_name: str = Field(
        default="OSCE Newsroom", description="Shown in email subjects, the wordmark and footers."
    )
    secret_key: SecretStr = SecretStr(BUILTIN_SECRET_KEY)
    old_secret_keys: list[SecretStr] = Field(
        default_factory=list, description="Previous secret keys still accepted while rotating."
    )

    # DKIM (signing is on when both key and selector are set)
    dkim_selector: str | None = None
    dkim_private_key_path: Path | None = None
    dkim_domain: str | None = None

    # Selection
    first_digest_lookback_days: int = 7
    max_item_age_days: int = 30
    max_items_per_digest: int = 20
    catch_up_hours: int = Field(
        default=24, ge=0,
        description="Scheduled planning also plans the hourly slots missed since the last one it "
                    "planned (beat or workers down, a daylight-saving gap), this many hours back; "
                    "0: only the current slot.")
    send_by_hours: int = Field(
        default=24, ge=1,
        description="A scheduled run planned more than this many hours after its slot is held "
                    "for an operator ('digest runs release|cancel N') instead of sent late.")
    planning_chunk_size: int = Field(
        default=2_500, ge=1,
        description="A scheduled run is planned this many subscribers (by id) at a time, each "
                    "chunk its own transaction, enqueued as soon as it commits; a planner that "
                    "stops half-way is resumed from the last chunk committed.")
    planning_workers: int = Field(
        default=2, ge=1, le=64,
        description="Planners of one scheduled run with a broker: the tick or command that "
                    "starts it, and this many less one 'plan_run' tasks on the workers, each "
                    "taking the next chunk nobody holds (ADR 0032). 1: the starter plans alone.")

    # Sources (ingest.polling) and WebSub
    source_poll_seconds: int = Field(
        default=60, ge=5,
        description="How often the beat looks for due sources; each source has its own "
                    "interval ('digest sources add --every').")
    source_stale_hours: float = Field(
        default=24, gt=0,
        description="A source failing for this long shows red in the admin and 'sources list'.")
    source_backoff_max_seconds: int = Field(
        default=6 * 3600, ge=60,
        description="The longest a failing source waits before its next attempt (back-off "
                    "doubles from its interval up to this).")
    source_max_bytes: int = Field(
        default=5 * 1024 * 1024, ge=1024,
        description="A fetched page or feed larger than this is refused, read no further.")
    sources_allow_private: bool = Field(
        default=False,
        description="Let a source (or a WebSub hub) be fetched from a private, loopback or "
                    "link-local address; off so a source cannot probe the internal network.")
    websub_lease_seconds: int = Field(
        default=10 * 86400, ge=300,
        description="The lease asked of a WebSub hub; it is renewed before it ends.")

    db_wait_seconds: float = Field(
        default=60, ge=0,
        description="A CLI command whose database refuses connections (out of slots, starting "
                    "up, restarting) waits this long for it before giving up with one line.")
    # Delivery
    batch_size: int = 100
    lease_seconds: int = 300
    record_every: int = Field(
        default=50, ge=1,
        description="Outcomes of a batch are written to the database in groups of this many "
                    "(one statement, one commit); each acceptance is journalled at once, so a "
                    "worker killed in between sends at most the message in flight again (ADR "
                    "0020).")
    record_ms: int = Field(
        default=250, ge=1,
        description="...or once the oldest unwritten outcome is this many milliseconds old, "
                    "whichever comes first.")
    max_attempts: int = 6
    retry_base_seconds: int = 60
    soft_bounce_threshold: int = 3
    soft_bounce_window_days: int = 30
    sweep_seconds: int = Field(
        default=60, ge=1,
        description="How often the beat sweeps for lost work: expired leases, pending rows whose "
                    "task was lost (a broker restart), runs whose every row is final.")
    orphan_after_seconds: int = Field(
        default=120, ge=1,
        description="A pending delivery untouched this long is taken for lost and enqueued "
                    "again (claims stay conditional, so a second task sends nothing twice).")
    retry_sweep_seconds: int = Field(
        default=60, ge=1,
        description="How often the beat enqueues deferred deliveries whose retry is due.")
    # One beat (issue 10): the Redis lock that lets only one beat process do periodic work.
    beat_lock_seconds: int = Field(
        default=30, ge=3,
        description="The beat lock's time to live: the beat holding it renews it every third of "
                    "this; a standby beat takes over at most this long after the holder died.")
    policy_pause_minutes: int = Field(
        default=60, ge=1,
        description="After a 5.7.x (policy) refusal at RCPT TO or DATA, send nothing to that "
                    "recipient domain for this many minutes.")
    # Rate limit (issue 10): read by the forecasts of dry runs and by the sending limiter.
    send_rate: float = Field(
        default=0.0, ge=0,
        description="Messages a second all workers together may send; 0: unlimited.")
    # Per recipient domain (issue 10): digest.delivery.limits; over a limit, rows are deferred.
    domain_connections: int = Field(
        default=0, ge=0,
        description="Workers sending to one recipient domain at the same time; 0: unlimited.")
    domain_per_minute: int = Field(
        default=0, ge=0,
        description="Messages a minute to one recipient domain (paced at a sixtieth of it a "
                    "second); 0: unlimited.")
    domain_limits: str = Field(
        default="",
        description="Per-domain overrides, comma-separated: DOMAIN=N/min (messages a minute) or "
                    "DOMAIN=N (concurrent senders), e.g. 'gmail.com=600/min,example.org=2'.")

    @field_validator("domain_limits")
    @classmethod
    def _domain_limits_parse(cls, value: str) -> str:
        parse_domain_limits(value)  # raises ValueError with the entry at fault
        return value

    # Retention and debounced alerts (issue 10): digest.delivery.retention, alert planning.
    retention_days: int = Field(
        default=90, ge=1,
        description="The nightly prune deletes final deliveries older than this many days "
                    "(those whose claims no future run needs).")
    alert_debounce_minutes: int = Field(
        default=10, ge=0,
        description="Items published within this many minutes of the first one waiting go to "
                    "an immediate subscriber as one alert; 0: each item at once.")
    # Personal feed (issue 10): /feed/<token>.atom carries a reader's newest matching items.
    feed_items: int = Field(
        default=50, ge=1, le=500,
        description="Items in a reader's personal Atom feed, newest first.")

    # Paths
    templates_dir: Path = PROJECT_ROOT / "templates"
    var_dir: Path = Path("./var")

    # Web/admin
    admin_username: str = "admin"
    admin_password_hash: str | None = None
    api_token: SecretStr | None = None
    email_rate_limit: str = Field(
        default="4/minute;11/hour",
        description="Confirmation and preference-link emails allowed per address (limits syntax). "
        "Counted in Redis when DIGEST_BROKER_URL is redis://, else in the web process.",
    )

    # Logs and metrics (issue 10): digest.logs, digest.web.metrics.
    log_format: str = Field(
        default="auto", pattern="^(auto|json|text)$",
        description="json: one JSON object a line; text: plain lines; auto: text on a terminal, "
                    "else JSON.")
    log_level: str = Field(
        default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$",
        description="The least severe level written (DEBUG, INFO, WARNING, ERROR, CRITICAL).")
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token /metrics asks for; empty: /metrics is open (keep it on the "
                    "internal network).")

    # Provider webhooks (issue 15): /webhooks/<provider>, each 404 until configured
    # (digest.web.providers, docs/providers.md).
    sns_topic_arns: list[str] = Field(
        default_factory=list,
        description="Amazon SES through SNS: the topic ARNs whose signed messages are accepted; "
                    "empty: /webhooks/ses is off.")
    sns_cert_hosts: list[str] = Field(
        default_factory=lambda: ["https://sns.*.amazonaws.com",
                                 "https://sns.*.amazonaws.com.cn"],
        description="Where an SNS signing certificate may be fetched from (scheme://host "
                    "patterns); keep the default outside tests.")
    mailgun_signing_key: SecretStr | None = Field(
        default=None, description="Mailgun's HTTP webhook signing key; empty: /webhooks/mailgun "
                                  "is off.")
    sendgrid_public_key: str | None = Field(
        default=None, description="SendGrid's signed event webhook verification key (base64, "
                                  "as SendGrid shows it); empty: /webhooks/sendgrid is off.")
    postmark_webhook_user: str | None = Field(
        default=None, description="User name of the basic auth Postmark's webhook sends.")
    postmark_webhook_password: SecretStr | None = Field(
        default=None, description="Password of the basic auth Postmark's webhook sends; "
                                  "empty: /webhooks/postmark is off.")
    webhook_max_age_seconds: int = Field(
        default=300, ge=30,
        description="A signed webhook (Mailgun, SendGrid) older or further ahead than this is "
                    "refused as a replay.")

    @model_validator(mode="after")
    def _smtp_settings_agree(self) -> Settings:
        """Cross-field rules, checked when the settings load: before any row is claimed."""
        if self.smtp_ssl and self.smtp_starttls:
            raise ValueError(
                "DIGEST_SMTP_SSL (implicit TLS, usually port 465) and DIGEST_SMTP_STARTTLS "
                "(usually port 587) exclude each other; set only one")
        if self.smtp_user and not (self.smtp_ssl or self.smtp_starttls) \
                and not is_loopback(self.smtp_host):
            raise ValueError(
                f"DIGEST_SMTP_USER is set but neither DIGEST_SMTP_STARTTLS nor DIGEST_SMTP_SSL: "
                f"the password would cross the network to {self.smtp_host} in clear; "
                "turn one of them on")
        if self.record_ms >= self.lease_seconds * 1000:
            # An outcome still waiting when the lease ends would be refused (the sweep took
            # the row back) and the message sent again.
            raise ValueError(
                f"DIGEST_RECORD_MS ({self.record_ms}) must be shorter than DIGEST_LEASE_SECONDS "
                f"({self.lease_seconds} s)")
        return self

    @property
    def from_domain(self) -> str:
        from email.utils import parseaddr

        return parseaddr(self.from_address)[1].rpartition("@")[2] or "localhost"


def parse_domain_limits(value: str) -> dict[str, tuple[int | None, int | None]]:
    """``DIGEST_DOMAIN_LIMITS``: {domain: (concurrent senders, messages a minute)}, None where
    the entry leaves the default. Each entry is DOMAIN=N (senders) or DOMAIN=N/min; a domain
    may have one of each. Raises ValueError naming the entry that is wrong."""
    limits: dict[str, tuple[int | None, int | None]] = {}
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        domain, sep, limit = (part.strip() for part in entry.partition("="))
        domain = domain.lower().rstrip(".")
        if not sep or not domain or "@" in domain or " " in domain or "." not in domain:
            raise ValueError(f"{entry!r} is not DOMAIN=LIMIT (e.g. gmail.com=600/min or "
                             "example.org=2)")
        number, slash, unit = limit.partition("/")
        if not number.strip().isdigit() or (slash and unit.strip() not in ("min", "minute")):
            raise ValueError(f"{entry!r}: the limit must be a whole number of concurrent "
                             "senders (example.org=2) or of messages a minute (gmail.com=600/min)")
        conns, per_minute = limits.get(domain, (None, None))
        if (per_minute if slash else conns) is not None:
            raise ValueError(f"{entry!r}: {domain} has two limits of the same kind")
        if slash:
            per_minute = int(number)
        else:
            conns = int(number)
        limits[domain] = (conns, per_minute)
    return limits


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_invalid(exc: Exception) -> str:
    """One line for a pydantic ValidationError of the settings: which variable, what is wrong."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for e in errors():
        field = "".join(str(p) for p in e.get("loc", ()))
        message = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"DIGEST_{field.upper()}: {message}" if field else message)
    return "invalid settings: " + "; ".join(parts)


def uses_builtin_database(settings: Settings) -> bool:
    """Whether the database is the built-in SQLite file (./var/digest.db, the demo's).

    Only that file counts as a trial set-up: any other database, another SQLite file too,
    may hold real subscribers, whose links and admin sessions the secret key signs.
    """
    url = settings.database_url
    if url == BUILTIN_DATABASE_URL:
        return True
    if not url.startswith("sqlite:///"):
        return False
    path = url.removeprefix("sqlite:///").partition("?")[0]
    return bool(path) and Path(path).resolve() == Path("var/digest.db").resolve()


def check_secrets(settings: Settings) -> None:
    """Refuse to run with a secret key anyone can know, outside the built-in SQLite file.

    The key signs every link in the emails (confirm, manage, unsubscribe) and the admin's
    session: with the built-in one, or a short one, anyone can forge them. Raises
    ConfigError with one line that says what to do.
    """
    from digest.errors import ConfigError

    if uses_builtin_database(settings):
        return
    key = settings.secret_key.get_secret_value()
    if key == BUILTIN_SECRET_KEY:
        what = "the built-in default"
    elif not key.strip():
        what = "empty"
    elif len(key) < MIN_SECRET_KEY_LENGTH:
        what = f"only {len(key)} characters long"
    else:
        return
    raise ConfigError(
        f"DIGEST_SECRET_KEY is {what}; set it to a random value of at least "
        f"{MIN_SECRET_KEY_LENGTH} characters "
        '(python -c "import secrets; print(secrets.token_urlsafe(48))")'
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()
