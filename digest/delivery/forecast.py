"""How long a send will take: the forecast of a dry run and the ETA of a running run.

The one place the arithmetic lives; the CLI, the API and the admin only print it. Durations
are estimated twice: at the configured rate limit (``DIGEST_SEND_RATE``) and at the
throughput this installation measured recently (the ``sent_at`` of delivered rows), since
the limit is a ceiling and the measured rate what the SMTP server and the workers achieved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.errors import ConfigError
from digest.models import Delivery, DeliveryStatus, DigestRun, RunStatus, utcnow
from digest.settings import Settings

SAMPLE_SIZE = 50  # messages built to measure the average size of a run's messages
RECENT_WINDOW = timedelta(hours=1)
RECENT_RUNS = 3  # finished runs read when nothing was sent in the last hour
MIN_MEASURED = 2  # sent rows needed before a rate means anything (one gives no time span)


@dataclass(frozen=True)
class Throughput:
    """Messages a second actually sent, and what the figure was read from."""

    rate: float
    messages: int
    seconds: float
    source: str  # "the last hour" or "the last 3 finished runs"


@dataclass(frozen=True)
class Forecast:
    run_id: int
    recipients: int  # readers the run considered (planned + empty digests skipped)
    messages: int  # messages it would send
    sampled: int  # messages built to measure their size
    average_bytes: int | None  # None: nothing to build, or the build failed (size_error)
    size_error: str | None
    rate_limit: float  # DIGEST_SEND_RATE, 0 = unlimited
    seconds_at_limit: float | None  # None: unlimited
    measured: Throughput | None  # None: nothing sent recently enough to measure
    seconds_at_measured: float | None

    @property
    def total_bytes(self) -> int | None:
        return None if self.average_bytes is None else self.average_bytes * self.messages

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total_bytes": self.total_bytes}

    def lines(self) -> list[str]:
        """The forecast in words, one fact a line, for every edge that shows one."""
        out = [f"recipients: {self.recipients} ({self.recipients - self.messages} with nothing "
               f"new, skipped)", f"messages: {self.messages}"]
        if self.average_bytes is not None:
            out.append(f"average size: {format_bytes(self.average_bytes)} (of {self.sampled} "
                       f"built), about {format_bytes(self.total_bytes or 0)} in all")
        elif self.size_error:
            out.append(f"average size: unknown, a sample message could not be built: "
                       f"{self.size_error}")
        if self.rate_limit > 0:
            out.append(f"at the rate limit (DIGEST_SEND_RATE={self.rate_limit:g}/s): "
                       f"{format_duration(self.seconds_at_limit or 0.0)}")
        else:
            out.append("at the rate limit: no limit set (DIGEST_SEND_RATE=0)")
        if self.measured is not None:
            out.append(f"at the throughput measured over {self.measured.source} "
                       f"({self.measured.rate:.1f}/s, {self.measured.messages} sent): "
                       f"{format_duration(self.seconds_at_measured or 0.0)}")
        else:
            out.append("at the measured throughput: unknown, nothing sent recently to measure")
        return out


@dataclass(frozen=True)
class Eta:
    """Where a running run is: the share of its messages final, its own rate, time left."""

    done: int  # rows final (sent, failed, cancelled), out of ``messages``
    messages: int
    sent: int
    rate: float | None  # its own messages a second so far; None: nothing sent yet
    seconds_left: float | None  # None: no rate yet

    @property
    def fraction(self) -> float:
        return self.done / self.messages if self.messages else 1.0

    def describe(self) -> str:
        share = f"{self.done}/{self.messages} ({self.fraction:.0%})"
        if self.rate is None or self.seconds_left is None:
            return f"{share}, ETA unknown until the first message is sent"
        return f"{share} at {self.rate:.1f}/s, ETA {format_duration(self.seconds_left)}"


# --- arithmetic -------------------------------------------------------------------------------

def seconds_for(messages: int, rate: float) -> float | None:
    """How long ``messages`` take at ``rate`` a second; None for no rate (0: unlimited)."""
    if rate <= 0:
        return None
    return messages / rate


def format_duration(seconds: float) -> str:
    """``"under a second"``, ``"42 s"``, ``"3 min 20 s"``, ``"2 h 05 min"``."""
    if seconds < 1:
        return "under a second"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def rate_of(messages: int, seconds: float) -> float | None:
    """Messages a second over a span; None when the span says nothing (one message, no time)."""
    if messages < MIN_MEASURED or seconds <= 0:
        return None
    return messages / seconds


# --- reading the database -----------------------------------------------------------------

def _sent_span(session: Session, *conditions: Any) -> tuple[int, float]:
    """(sent rows, seconds from the first ``sent_at`` to the last) of the rows matching."""
    count, first, last = session.execute(
        select(func.count(), func.min(Delivery.sent_at), func.max(Delivery.sent_at))
        .where(Delivery.status == DeliveryStatus.sent, Delivery.sent_at.is_not(None),
               *conditions)).one()
    if not count or first is None or last is None:
        return 0, 0.0
    return count, (last - first).total_seconds()


def measured_throughput(session: Session, now: datetime | None = None) -> Throughput | None:
    """What this installation sent lately, in messages a second: the rows sent in the last
    hour, or else those of the last finished runs (their first to last send, summed)."""
    now = now or utcnow()
    count, seconds = _sent_span(session, Delivery.sent_at >= now - RECENT_WINDOW)
    rate = rate_of(count, seconds)
    if rate is not None:
        return Throughput(rate, count, seconds, "the last hour")
    run_ids = list(session.scalars(
        select(DigestRun.id).where(DigestRun.status == RunStatus.done,
                                   DigestRun.dry_run.is_(False), DigestRun.planned_count > 0)
        .order_by(DigestRun.finished_at.desc(), DigestRun.id.desc()).limit(RECENT_RUNS)))
    total, span = 0, 0.0
    for run_id in run_ids:
        n, s = _sent_span(session, Delivery.run_id == run_id)
        if rate_of(n, s) is not None:  # a run of one message has no span to count
            total, span = total + n, span + s
    rate = rate_of(total, span)
    if rate is None:
        return None
    return Throughput(rate, total, span, f"the last {len(run_ids)} finished run(s)")


def _sample_ids(ids: list[int], size: int) -> list[int]:
    """Up to ``size`` ids spread over the whole run (not its first readers only)."""
    if len(ids) <= size:
        return ids
    step = len(ids) / size
    return [ids[int(k * step)] for k in range(size)]


def average_message_size(session: Session, delivery_ids: list[int], settings: Settings,
                         *, sample: int = SAMPLE_SIZE) -> tuple[int | None, int, str | None]:
    """(average bytes, messages built, why not) over a sample of the deliveries, built
    exactly as a worker builds them (MessageFactory: headers, MIME, DKIM when set)."""
    from digest.delivery.send import load_batch
    from digest.errors import DigestError
    from digest.mail import MessageFactory

    chosen = _sample_ids(delivery_ids, sample)
    if not chosen:
        return None, 0, None
    try:
        factory = MessageFactory(settings)
        sizes = [len(factory.build(d, d.run, items)[1])
                 for d, items in load_batch(session, chosen) if items]
    except (ConfigError, DigestError) as exc:
        # A forecast still reports counts and durations; the send itself would say the same.
        return None, 0, str(exc)
    if not sizes:
        return None, 0, None
    return round(sum(sizes) / len(sizes)), len(sizes), None


def forecast_run(session: Session, run_id: int, settings: Settings, *,
                 sample: int = SAMPLE_SIZE, now: datetime | None = None) -> Forecast:
    """The forecast of a run as planned (a dry run's rows, or a real run's rows to send)."""
    run = session.get(DigestRun, run_id)
    if run is None:
        from digest.errors import ValidationError
        raise ValidationError(f"no run with id {run_id}; 'digest runs' lists the recent ones")
    wanted = DeliveryStatus.dry_run if run.dry_run else DeliveryStatus.pending
    to_send = list(session.scalars(select(Delivery.id).where(
        Delivery.run_id == run_id, Delivery.status == wanted).order_by(Delivery.id)))
    recipients = session.scalar(select(func.count()).where(Delivery.run_id == run_id)) or 0
    average, sampled, error = average_message_size(session, to_send, settings, sample=sample)
    measured = measured_throughput(session, now)
    messages = len(to_send)
    return Forecast(
        run_id=run_id, recipients=recipients, messages=messages, sampled=sampled,
        average_bytes=average, size_error=error, rate_limit=settings.send_rate,
        seconds_at_limit=seconds_for(messages, settings.send_rate), measured=measured,
        seconds_at_measured=seconds_for(messages, measured.rate) if measured else None)


def eta_of(counts: dict[str, int], first_sent: datetime | None,
           now: datetime) -> Eta:
    """A running run's ETA from its delivery counts (``runs_progress``) and its own rate so
    far: messages sent since its first send. Skipped rows are not messages."""
    messages = counts.get("total", 0) - counts.get(DeliveryStatus.skipped, 0)
    done = sum(counts.get(s, 0) for s in (DeliveryStatus.sent, DeliveryStatus.failed,
                                          DeliveryStatus.cancelled))
    sent = counts.get(DeliveryStatus.sent, 0)
    elapsed = (now - first_sent).total_seconds() if first_sent is not None else 0.0
    rate = sent / elapsed if sent and elapsed > 0 else None
    left = seconds_for(messages - done, rate) if rate is not None else None
    return Eta(done=done, messages=messages, sent=sent, rate=rate, seconds_left=left)
