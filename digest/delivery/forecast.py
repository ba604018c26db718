"""How long a send will take: the forecast of a dry run, the ETA of a running run, and what a
finished run came to.

The one place the arithmetic lives; the CLI, the API and the admin only print it. Durations
are given twice: at the configured rate limit (``DIGEST_SEND_RATE``) and at the throughput
this installation measured recently (the ``sent_at`` of delivered rows, each run from its
first send to its last, so the idle time between runs does not count), since the limit is a
ceiling and the measured rate what the SMTP server and the workers achieved. A measured rate
is used only once it was measured over enough sending (``MIN_MEASURED_MESSAGES`` and
``MIN_MEASURED_SECONDS``); every estimate says which rate it used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from digest.errors import ConfigError
from digest.models import Delivery, DeliveryStatus, DigestRun, RunStatus, utcnow
from digest.records.states import UNFINISHED
from digest.settings import Settings

FINISHED = (RunStatus.done, RunStatus.cancelled)
DONE = (DeliveryStatus.sent, DeliveryStatus.failed, DeliveryStatus.cancelled)  # of messages

SAMPLE_SIZE = 50  # messages built to measure the average size of a run's messages
RECENT_WINDOW = timedelta(hours=1)
RECENT_RUNS = 10  # finished runs read when the last hour's sending is not enough to measure
MIN_MEASURED = 2  # sent rows needed before a rate means anything (one gives no time span)
# A measured rate is trusted only over this much sending. Rates from a few messages, or from
# a fraction of a second (the first connection, the renderer's start, one slow reply), were
# off by orders of magnitude ("4 min 02 s" for a send that took 0.2 s). 200 messages are two
# batches of the default size; 10 s of sending is long enough that a batch's start-up and the
# workers' clocks do not dominate, and short enough that a run of a few thousand messages
# (20 s at the 100-500/s the benchmarks measure) qualifies.
MIN_MEASURED_MESSAGES = 200
MIN_MEASURED_SECONDS = 10.0


@dataclass(frozen=True)
class Throughput:
    """Messages a second actually sent, and what the figure was read from."""

    rate: float
    messages: int
    seconds: float
    source: str  # "the runs sending in the last hour", "the last 3 finished run(s)", ...

    @property
    def enough(self) -> bool:
        """Measured over enough sending to be used (``MIN_MEASURED_*``)."""
        return trusted(self.messages, self.seconds)

    def describe(self) -> str:
        return (f"{self.rate:.1f}/s over {self.messages} messages in "
                f"{format_duration(self.seconds)}, {self.source}")


@dataclass(frozen=True)
class Outcome:
    """What a finished run came to: its rows by final status, and how long it took."""

    status: str  # done | cancelled
    sent: int
    failed: int
    skipped: int
    cancelled: int
    sending_seconds: float | None  # its first send to its last; None: nothing was sent
    total_seconds: float | None  # planned (created) to finished

    def lines(self) -> list[str]:
        out = [f"finished ({self.status}): sent {self.sent}, failed {self.failed}, skipped "
               f"{self.skipped} (nothing new), cancelled {self.cancelled}"]
        if self.sending_seconds is not None:
            rate = rate_of(self.sent, self.sending_seconds)
            out.append(f"sending took {format_duration(self.sending_seconds)} (first to last "
                       f"message{f', {rate:.1f}/s' if rate else ''})")
        else:
            out.append("nothing was sent")
        if self.total_seconds is not None:
            out.append(f"planned to finished: {format_duration(self.total_seconds)}")
        return out


@dataclass(frozen=True)
class Forecast:
    run_id: int
    recipients: int  # readers the run considered (planned + empty digests skipped)
    messages: int  # messages it would send (a real run: those not final yet)
    sampled: int  # messages built to measure their size
    average_bytes: int | None  # None: nothing to build, or the build failed (size_error)
    size_error: str | None
    rate_limit: float  # DIGEST_SEND_RATE, 0 = unlimited
    seconds_at_limit: float | None  # None: unlimited
    measured: Throughput | None  # None: not measured over enough sending (``measured_seen``)
    seconds_at_measured: float | None
    skipped: int = 0  # empty digests, recorded and not sent
    already_final: int = 0  # a sending run's rows final already (sent, failed, cancelled)
    measured_seen: Throughput | None = None  # the recent sending when too little to be used
    estimate_seconds: float | None = None  # the duration, at the rate ``estimate_basis`` names
    estimate_basis: str = ""
    outcome: Outcome | None = None  # a finished run: what happened, instead of a forecast

    @property
    def total_bytes(self) -> int | None:
        return None if self.average_bytes is None else self.average_bytes * self.messages

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total_bytes": self.total_bytes}

    def lines(self) -> list[str]:
        """The forecast in words, one fact a line, for every edge that shows one; for a
        finished run, what happened."""
        if self.outcome is not None:
            return [f"recipients: {self.recipients}", *self.outcome.lines()]
        out = [f"recipients: {self.recipients} ({self.skipped} with nothing new, skipped)"]
        if self.already_final:
            out.append(f"already final: {self.already_final}")
        out.append(f"messages: {self.messages}" + (" still to send" if self.already_final
                                                   else ""))
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
            out.append(f"at the measured throughput: {no_measured_rate(self.measured_seen)}")
        if self.estimate_seconds is not None:
            out.append(f"estimate: {format_duration(self.estimate_seconds)}, "
                       f"{self.estimate_basis}")
        else:
            out.append(f"estimate: none, {self.estimate_basis}")
        return out


def no_measured_rate(seen: Throughput | None) -> str:
    """Why there is no measured rate to use, in words."""
    need = (f"a rate is used once measured over {MIN_MEASURED_MESSAGES} messages and "
            f"{MIN_MEASURED_SECONDS:g} s of sending")
    if seen is None or seen.messages == 0:
        return f"no measured rate yet, nothing sent recently to measure ({need})"
    return (f"no measured rate yet, only {seen.messages} sent in "
            f"{format_duration(seen.seconds)} recently ({need})")


def estimate(messages: int, rate_limit: float, measured: Throughput | None,
             seen: Throughput | None) -> tuple[float | None, str]:
    """(seconds, which rate in words): the measured throughput when there is one, never faster
    than the rate limit allows; else the rate limit; else none."""
    at_limit = seconds_for(messages, rate_limit)
    limit = f"DIGEST_SEND_RATE={rate_limit:g}/s"
    if measured is not None:
        at_measured = messages / measured.rate
        if at_limit is not None and at_limit > at_measured:
            return at_limit, (f"at the rate limit ({limit}; slower than the measured "
                              f"{measured.rate:.1f}/s)")
        return at_measured, f"at the measured throughput ({measured.describe()})"
    if at_limit is not None:
        return at_limit, f"at the rate limit ({limit}; {no_measured_rate(seen)})"
    return None, f"no rate limit set and {no_measured_rate(seen)}"


@dataclass(frozen=True)
class Waiting:
    """A running run's deferred rows that may not go yet, and why: what holds it up."""

    rows: int  # deferred rows not due yet
    first_due: datetime  # when the first of them may go
    # (domain, rows, paused until) of those waiting for a paused recipient domain
    paused: tuple[tuple[str, int, datetime], ...] = ()
    as_of: datetime | None = None  # the clock it was read at (a time today reads as HH:MM)

    def describe(self) -> str:
        parts = [f"{n} deferred until {_clock(until, self.as_of)} (domain {domain} paused)"
                 for domain, n, until in self.paused]
        rest = self.rows - sum(n for _, n, _ in self.paused)
        if rest:
            parts.append(f"{rest} deferred to retry, the first at "
                         f"{_clock(self.first_due, self.as_of)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Eta:
    """Where a running run is: the share of its messages final, the rate its ETA is at (and
    whose), time left, and what holds it up."""

    done: int  # rows final (sent, failed, cancelled), out of ``messages``
    messages: int
    sent: int
    rate: float | None  # messages a second the ETA is at; None: no rate to use yet
    seconds_left: float | None  # None: no rate yet, or nothing can move now (``waiting``)
    rate_source: str = ""  # whose rate: this run's, the measured one, DIGEST_SEND_RATE
    waiting: Waiting | None = None  # deferred rows that may not go yet
    no_rate: str = ""  # why there is no rate, when ``rate`` is None
    # Seconds nothing of the run moved (no row claimed, sent, deferred...) while rows could
    # have: set once past ``stalled_after`` (no worker, no broker, a database refusing writes).
    idle_for: float | None = None

    @property
    def fraction(self) -> float:
        return self.done / self.messages if self.messages else 1.0

    @property
    def stalled(self) -> bool:
        """Nothing can move now: every message not final waits (``waiting``), or nothing
        moved for a while though rows could have (``idle_for``)."""
        left = self.messages - self.done
        return left > 0 and (self.idle_for is not None or (
            self.waiting is not None and self.waiting.rows >= left))

    def describe(self) -> str:
        share = f"{self.done}/{self.messages} ({self.fraction:.0%})"
        held = self.waiting.describe() if self.waiting is not None else ""
        if self.stalled and self.idle_for is not None:
            return (f"{share}, stalled: nothing moved for {format_duration(self.idle_for)} "
                    "(are the workers, the broker and the database up?)"
                    + (f"; and {held}" if held else ""))
        if self.stalled:
            return f"{share}, not progressing: {held}"
        if self.done >= self.messages:
            return f"{share}, every message final"
        if self.rate is None or self.seconds_left is None:
            text = f"{share}, ETA unknown: {self.no_rate}"
        else:
            text = (f"{share} at {self.rate:.1f}/s ({self.rate_source}), "
                    f"ETA {format_duration(self.seconds_left)}")
        return f"{text}; and {held}" if held else text


def _clock(moment: datetime, as_of: datetime | None) -> str:
    """``14:05 UTC`` on the day of ``as_of``, else with its date."""
    moment = moment.astimezone(UTC)
    if as_of is not None and moment.date() == as_of.astimezone(UTC).date():
        return f"{moment:%H:%M} UTC"
    return f"{moment:%Y-%m-%d %H:%M} UTC"


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


def trusted(messages: int, seconds: float) -> bool:
    """Enough sending for its rate to be used in an estimate (``MIN_MEASURED_*``)."""
    return messages >= MIN_MEASURED_MESSAGES and seconds >= MIN_MEASURED_SECONDS


# --- reading the database -----------------------------------------------------------------

def _sending_spans(session: Session, run_ids: list[int], since: datetime | None = None
                   ) -> tuple[int, float]:
    """(sent rows, seconds) of these runs (their rows sent at ``since`` or later): the
    seconds summed over the runs, each from its first ``sent_at`` to its last, so the idle
    time between runs does not count.

    Read from the index on (run_id, sent_at) (migration 0012): a run's first and last
    ``sent_at`` are its two ends, and without ``since`` the count is the one the database
    keeps (``counts``); with it, only that window's rows are read. Never a scan of the log."""
    if not run_ids:
        return 0, 0.0
    sent = and_(Delivery.status == DeliveryStatus.sent, Delivery.sent_at.is_not(None))
    per_run: list[tuple[int, datetime | None, datetime | None]]
    if since is not None:
        per_run = [(count, first, last) for count, first, last in session.execute(
            select(func.count(), func.min(Delivery.sent_at), func.max(Delivery.sent_at))
            .where(Delivery.run_id.in_(run_ids), Delivery.sent_at >= since, sent)
            .group_by(Delivery.run_id))]
    else:
        kept = _sent_counts(session, run_ids)
        per_run = []
        for run_id in run_ids:
            if not kept.get(run_id):
                continue
            ends = [session.scalar(select(Delivery.sent_at)
                                   .where(Delivery.run_id == run_id, sent)
                                   .order_by(order).limit(1))
                    for order in (Delivery.sent_at, Delivery.sent_at.desc())]
            per_run.append((kept[run_id], ends[0], ends[1]))
    messages = sum(count for count, _, _ in per_run)
    seconds = sum((last - first).total_seconds() for _, first, last in per_run
                  if first is not None and last is not None)
    return messages, float(seconds)


def _sent_counts(session: Session, run_ids: list[int]) -> dict[int, int]:
    """Rows sent (status sent, with a sent_at) per run, from the counts the database keeps."""
    from digest.models import DeliveryCount

    return {run_id: int(n or 0) for run_id, n in session.execute(
        select(DeliveryCount.run_id, func.sum(DeliveryCount.sent))
        .where(DeliveryCount.run_id.in_(run_ids),
               DeliveryCount.status == DeliveryStatus.sent.value)
        .group_by(DeliveryCount.run_id))}


def _runs_sent_since(session: Session, since: datetime) -> list[int]:
    """The runs with a row sent at ``since`` or later: each run's last ``sent_at`` is the
    end of its index on (run_id, sent_at), one probe a run."""
    last_sent = (select(func.max(Delivery.sent_at))
                 .where(Delivery.run_id == DigestRun.id, Delivery.sent_at.is_not(None))
                 .scalar_subquery())
    return list(session.scalars(select(DigestRun.id).where(last_sent >= since)))


def _throughput(messages: int, seconds: float, source: str) -> Throughput | None:
    rate = rate_of(messages, seconds)
    return Throughput(rate, messages, seconds, source) if rate is not None else None


def recent_throughput(session: Session, now: datetime | None = None) -> Throughput | None:
    """What this installation sent lately, in messages a second: the runs sending in the last
    hour, or else the last finished runs; the first of the two measured over enough sending
    (``Throughput.enough``), else the larger of them, to say how little there was. None:
    nothing sent to measure."""
    now = now or utcnow()
    since = now - RECENT_WINDOW
    hour = _throughput(*_sending_spans(session, _runs_sent_since(session, since), since),
                       "the runs sending in the last hour")
    if hour is not None and hour.enough:
        return hour
    run_ids = list(session.scalars(
        select(DigestRun.id).where(DigestRun.status == RunStatus.done,
                                   DigestRun.dry_run.is_(False), DigestRun.planned_count > 0)
        .order_by(DigestRun.finished_at.desc(), DigestRun.id.desc()).limit(RECENT_RUNS)))
    runs = _throughput(*_sending_spans(session, run_ids),
                       f"the last {len(run_ids)} finished run(s)") if run_ids else None
    if runs is not None and runs.enough:
        return runs
    seen = [t for t in (hour, runs) if t is not None]
    return max(seen, key=lambda t: t.messages) if seen else None


def measured_throughput(session: Session, now: datetime | None = None) -> Throughput | None:
    """The recent throughput when it was measured over enough sending to be used; else None."""
    recent = recent_throughput(session, now)
    return recent if recent is not None and recent.enough else None


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
    """The forecast of a run as planned: a dry run's rows, or the rows of a real run not final
    yet; for a finished run, what it came to (``Outcome``) instead."""
    run = session.get(DigestRun, run_id)
    if run is None:
        from digest.errors import ValidationError
        raise ValidationError(f"no run with id {run_id}; 'digest runs' lists the recent ones")
    counts: dict[str, int] = {str(status): n for status, n in session.execute(
        select(Delivery.status, func.count()).where(Delivery.run_id == run_id)
        .group_by(Delivery.status))}
    recipients = sum(counts.values())
    limit = settings.send_rate
    if run.status in FINISHED and not run.dry_run:
        return Forecast(
            run_id=run_id, recipients=recipients, messages=0, sampled=0, average_bytes=None,
            size_error=None, rate_limit=limit, seconds_at_limit=None, measured=None,
            seconds_at_measured=None, skipped=counts.get(DeliveryStatus.skipped, 0),
            outcome=outcome_of(session, run, counts))
    wanted = [DeliveryStatus.dry_run] if run.dry_run else list(UNFINISHED)
    to_send = list(session.scalars(select(Delivery.id).where(
        Delivery.run_id == run_id, Delivery.status.in_(wanted)).order_by(Delivery.id)))
    average, sampled, error = average_message_size(session, to_send, settings, sample=sample)
    seen = recent_throughput(session, now)
    measured = seen if seen is not None and seen.enough else None
    messages = len(to_send)
    seconds, basis = estimate(messages, limit, measured, seen)
    return Forecast(
        run_id=run_id, recipients=recipients, messages=messages, sampled=sampled,
        average_bytes=average, size_error=error, rate_limit=limit,
        seconds_at_limit=seconds_for(messages, limit), measured=measured,
        seconds_at_measured=seconds_for(messages, measured.rate) if measured else None,
        skipped=counts.get(DeliveryStatus.skipped, 0),
        already_final=sum(counts.get(s, 0) for s in DONE),
        measured_seen=seen if measured is None else None, estimate_seconds=seconds,
        estimate_basis=basis)


def outcome_of(session: Session, run: DigestRun, counts: dict[str, int]) -> Outcome:
    """What a finished run came to, from its rows' counts and its first and last send."""
    first, last = session.execute(
        select(func.min(Delivery.sent_at), func.max(Delivery.sent_at))
        .where(Delivery.run_id == run.id, Delivery.sent_at.is_not(None))).one()
    sending = (last - first).total_seconds() if first is not None and last is not None else None
    total = ((run.finished_at - run.created_at).total_seconds()
             if run.finished_at is not None else None)
    return Outcome(status=str(run.status), sent=counts.get(DeliveryStatus.sent, 0),
                   failed=counts.get(DeliveryStatus.failed, 0),
                   skipped=counts.get(DeliveryStatus.skipped, 0),
                   cancelled=counts.get(DeliveryStatus.cancelled, 0),
                   sending_seconds=sending, total_seconds=total)


def eta_of(counts: dict[str, int], first_sent: datetime | None, now: datetime, *,
           waiting: Waiting | None = None, measured: Throughput | None = None,
           rate_limit: float = 0.0, last_moved: datetime | None = None,
           stalled_after: float | None = None) -> Eta:
    """A running run's ETA from its delivery counts (``runs_progress``): at its own rate so
    far (its sent messages since its first send) once that is measured over enough sending,
    else at the installation's measured throughput, else at ``DIGEST_SEND_RATE``; the rows of
    ``waiting`` (deferred, not due) are left out of it and said apart. Skipped rows are not
    messages. A run whose rows could move and nothing
    moved since ``last_moved`` for ``stalled_after`` seconds is stalled: no ETA, which would
    be a guess that nothing backs."""
    messages = (counts.get("total", 0) - counts.get(DeliveryStatus.skipped, 0)
                - counts.get(DeliveryStatus.dry_run, 0))
    done = sum(counts.get(s, 0) for s in DONE)
    sent = counts.get(DeliveryStatus.sent, 0)
    elapsed = (now - first_sent).total_seconds() if first_sent is not None else 0.0
    moving = max(messages - done - (waiting.rows if waiting else 0), 0)
    idle = (now - last_moved).total_seconds() if last_moved is not None else 0.0
    if moving and stalled_after is not None and idle >= stalled_after:
        return Eta(done=done, messages=messages, sent=sent, rate=None, seconds_left=None,
                   waiting=waiting, idle_for=idle, no_rate="stalled")
    if trusted(sent, elapsed):
        rate, source = sent / elapsed, "this run so far"
    elif measured is not None:
        rate, source = measured.rate, f"measured over {measured.source}"
    elif rate_limit > 0:
        rate, source = rate_limit, "DIGEST_SEND_RATE"
    else:
        own = Throughput(sent / elapsed if elapsed > 0 else 0.0, sent, elapsed, "this run")
        return Eta(done=done, messages=messages, sent=sent, rate=None, seconds_left=None,
                   waiting=waiting, no_rate=no_measured_rate(own if sent else None))
    return Eta(done=done, messages=messages, sent=sent, rate=rate,
               seconds_left=moving / rate if moving else None if waiting else 0.0,
               rate_source=source, waiting=waiting)
