"""``GET /metrics``: the system's figures in Prometheus text format (prometheus-client).

The figures are read from the database and the broker when Prometheus scrapes, by a custom
collector (ADR 0017): workers are separate processes on separate machines, and the database is
the record of what they did, so counts taken from it are the same whichever web process
answers, and survive restarts of workers and of the web app. A handful of set-based queries a
scrape (grouped counts over the deliveries, their runs, bounces and suppressions, and two
MIN()s on the status index), never a query per row.

Figures (``kind`` is the run kind: weekly, daily, immediate, adhoc):

- ``digest_deliveries{kind,status}``: rows in the delivery log by status now (gauge);
- ``digest_messages_sent_total{kind}``: messages the SMTP server accepted (rows with a
  ``sent_at``, including those a bounce later failed);
- ``digest_deliveries_too_large{kind}``: rows failed because the message was over the SMTP
  server's size limit (SIZE, 552 5.3.4): the operator shortens digests or raises the limit;
- ``digest_bounces_total{kind,fault}``: bounce reports recorded;
- ``digest_complaints_total{source}``: complaints recorded (arf, ses, mailgun, sendgrid,
  postmark), each of which suppressed its reader;
- ``digest_deliveries_pruned_total{kind,status}``: rows retention deleted, by their status.
  The two counters above add what retention deleted (``pruned_tallies``) to the live rows,
  so they never go down after a prune (Prometheus would read that as a reset);
- ``digest_suppressions{reason}``: addresses on the suppression list;
- ``digest_runs{kind,status}``: runs by status; ``digest_run_duration_seconds{kind}`` and
  ``digest_run_finished_timestamp_seconds{kind}`` of the last finished run of each kind;
- ``digest_oldest_unsent_delivery_age_seconds``: how long the oldest row still to send has
  waited since it was planned; ``digest_oldest_due_delivery_age_seconds``: how long the oldest
  row a worker could send now has been due (the backlog's lag);
- ``digest_queue_length{queue}`` (the deliveries' queue and the maintenance queue) and
  ``digest_queue_unacked``: tasks waiting in the Redis
  broker, and tasks workers have taken but not finished (only with a redis:// broker);
- per registered source (labels ``source``: its id, ``url``; one series a source, removed
  with it): ``digest_source_info{source,url,kind,health,error}`` (1; ``health`` is the word
  every edge shows: new, ok, failing, stale, paused; ``error`` the last error in words, cut
  to ``SOURCE_ERROR_CHARS``), ``digest_source_up`` (0 while its last poll failed),
  ``digest_source_stale`` (1 when failing for ``DIGEST_SOURCE_STALE_HOURS``),
  ``digest_source_last_success_timestamp_seconds`` and ``..._last_attempt_...`` (left out
  until there is one), ``digest_source_consecutive_failures``, and the counters
  ``digest_source_polls_total``, ``..._failures_total``, ``..._not_modified_total`` (304s),
  ``..._items_added_total``, ``..._bytes_fetched_total``; one query a scrape;
- ``digest_database_up`` and ``digest_broker_up``: 0 when that source did not answer this
  scrape (its figures are then left out rather than shown as zeros). Each has
  ``TIMEOUT_SECONDS`` to answer, so a scrape during a partition says 0 at once instead of
  hanging: the database is read on a connection of the scrape's own (connect and statement
  timeouts), in a thread the scrape stops waiting for; the broker must also take a write
  (a Redis out of memory answers reads and refuses every write, which is what matters).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import (
    ColumnElement,
    and_,
    create_engine,
    func,
    literal_column,
    select,
    text,
    true,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from digest import db
from digest.delivery.counts import fold, kind_counts
from digest.ingest.registry import health
from digest.models import (
    TALLY_BOUNCES,
    TALLY_DELIVERIES,
    TALLY_SENT,
    Bounce,
    Complaint,
    Delivery,
    DeliveryStatus,
    DigestRun,
    PrunedTally,
    RunStatus,
    Source,
    Suppression,
    utcnow,
)
from digest.queue import maintenance_queue
from digest.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter()

UNSENT = (DeliveryStatus.pending, DeliveryStatus.sending, DeliveryStatus.deferred)
# Celery's Redis transport keeps messages with a priority in lists named queue + sep + step.
_PRIORITY_SEP, _PRIORITY_STEPS = "\x06\x16", (3, 6, 9)
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# How long each source may take to answer a scrape before it is reported down.
TIMEOUT_SECONDS = 3.0


class DigestCollector(Collector):
    """Everything is read at ``collect()``: nothing is kept between scrapes."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            figures = _within(TIMEOUT_SECONDS, lambda: _read_database(
                self.settings.database_url, self.settings.source_stale_hours))
        except Exception as exc:  # a scrape reports the outage instead of failing
            log.warning("metrics: the database did not answer: %s", exc)
            figures = []
            yield _gauge("digest_database_up", "1 when the database answered this scrape.", 0)
        else:
            yield _gauge("digest_database_up", "1 when the database answered this scrape.", 1)
        yield from figures
        yield from _broker_figures(self.settings)
        yield _gauge("digest_metrics_scrape_seconds",
                     "Time this scrape took to read the database and the broker.",
                     time.perf_counter() - started)


def _read_database(url: str, stale_hours: float) -> list[Metric]:
    session = Session(_scrape_engine(url))

    def bounded() -> None:
        if url.startswith("postgresql"):
            # For this scrape's transaction only (a startup option would be refused by
            # poolers such as PgBouncer).
            session.execute(text(f"SET LOCAL statement_timeout = {int(TIMEOUT_SECONDS * 1000)}"))

    try:
        bounded()
        try:  # the counts' appended rows folded to one a run and status (small, quick)
            fold(session)
            session.commit()
        except Exception as exc:  # a read-only replica, say: the sums are right unfolded
            session.rollback()
            log.info("metrics: delivery counts not folded: %s", exc)
        bounded()
        now = utcnow()
        return [*_database_figures(session, now), *_source_figures(session, now, stale_hours)]
    finally:
        session.close()


@lru_cache(maxsize=4)
def _scrape_engine(url: str) -> Engine:
    """PostgreSQL: a connection of the scrape's own each time (no pooled connection a
    partition left hanging), with connect and statement timeouts. SQLite: the usual engine."""
    if not url.startswith("postgresql"):
        return db.engine_for(url)
    return create_engine(url, poolclass=NullPool, connect_args={
        "connect_timeout": max(int(TIMEOUT_SECONDS), 2)})  # libpq's least is 2 s


def _within(seconds: float, read: Callable[[], list[Metric]]) -> list[Metric]:
    """``read()``'s answer, or TimeoutError after ``seconds``: a server that is frozen or cut
    off answers nothing, and no socket option of a live connection bounds that wait."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["figures"] = read()
        except BaseException as exc:
            outcome["error"] = exc

    reader = threading.Thread(target=run, name="metrics-database", daemon=True)
    reader.start()
    reader.join(seconds)
    if reader.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["figures"]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _database_figures(session: Session, now: datetime) -> Iterable[Metric]:
    deliveries = GaugeMetricFamily(
        "digest_deliveries", "Rows in the delivery log by run kind and status, now.",
        labels=["kind", "status"])
    sent = CounterMetricFamily(
        "digest_messages_sent", "Messages the SMTP server accepted, by run kind (a bounce "
        "later may have failed them).", labels=["kind"])
    pruned: dict[str, dict[tuple[str, ...], int]] = {}
    for metric, tally_kind, label, tally_count in session.execute(
        select(PrunedTally.metric, PrunedTally.kind, PrunedTally.label, PrunedTally.count)
    ):
        key = (tally_kind,) if metric == TALLY_SENT else (tally_kind, label)
        pruned.setdefault(metric, {})[key] = tally_count
    sent_by_kind: dict[str, int] = {key[0]: n for key, n in pruned.get(TALLY_SENT, {}).items()}
    too_large_by_kind: dict[str, int] = {}
    # The counts the database keeps (triggers, migration 0012): deliveries is never scanned.
    for row in kind_counts(session):
        deliveries.add_metric([row.kind, row.status], row.rows)
        sent_by_kind[row.kind] = sent_by_kind.get(row.kind, 0) + row.sent
        if row.too_large:
            too_large_by_kind[row.kind] = too_large_by_kind.get(row.kind, 0) + row.too_large
    for kind_name, count in sorted(sent_by_kind.items()):
        sent.add_metric([kind_name], count)
    yield deliveries
    yield sent
    too_large = GaugeMetricFamily(
        "digest_deliveries_too_large", "Deliveries failed because the message was larger than "
        "the SMTP server accepts (SIZE, 5.3.4), by run kind.", labels=["kind"])
    for kind_name, count in sorted(too_large_by_kind.items()):
        too_large.add_metric([kind_name], count)
    yield too_large
    deliveries_pruned = CounterMetricFamily(
        "digest_deliveries_pruned", "Rows of the delivery log retention deleted, by run kind "
        "and the status they had.", labels=["kind", "status"])
    for labels, count in sorted(pruned.get(TALLY_DELIVERIES, {}).items()):
        deliveries_pruned.add_metric(list(labels), count)
    yield deliveries_pruned

    bounces = CounterMetricFamily(
        "digest_bounces", "Bounce reports recorded, by the run kind of the delivery they name "
        "(unknown: none named) and by whose fault.", labels=["kind", "fault"])
    bounce_counts = dict(pruned.get(TALLY_BOUNCES, {}))
    # bounces.run_id, kept by a trigger (migration 0012): no lookup in deliveries a report.
    for bounce_kind, fault, count in session.execute(
        select(DigestRun.kind, Bounce.kind, func.count())
        .select_from(Bounce)
        .outerjoin(DigestRun, DigestRun.id == Bounce.run_id)
        .group_by(DigestRun.kind, Bounce.kind)
    ):
        key = (str(bounce_kind) if bounce_kind is not None else "unknown", str(fault))
        bounce_counts[key] = bounce_counts.get(key, 0) + count
    for labels, count in sorted(bounce_counts.items()):
        bounces.add_metric(list(labels), count)
    yield bounces

    complaints = CounterMetricFamily(
        "digest_complaints", "Complaints recorded (a reader marked a digest as spam), by where "
        "they came from: arf (a feedback report by mail), ses, mailgun, sendgrid, postmark.",
        labels=["source"])
    for source, count in session.execute(
            select(Complaint.source, func.count()).group_by(Complaint.source)):
        complaints.add_metric([str(source)], count)
    yield complaints

    suppressions = GaugeMetricFamily(
        "digest_suppressions", "Addresses on the suppression list, by reason.",
        labels=["reason"])
    for reason, count in session.execute(
        select(Suppression.reason, func.count()).group_by(Suppression.reason)
    ):
        suppressions.add_metric([str(reason)], count)
    yield suppressions

    runs = GaugeMetricFamily("digest_runs", "Runs by kind and status.",
                             labels=["kind", "status"])
    for run_kind, run_status, count in session.execute(
        select(DigestRun.kind, DigestRun.status, func.count())
        .group_by(DigestRun.kind, DigestRun.status)
    ):
        runs.add_metric([str(run_kind), str(run_status)], count)
    yield runs
    yield from _last_runs(session)

    unsent_since, due_since = oldest_unsent(session, now)
    yield _gauge("digest_oldest_unsent_delivery_age_seconds",
                 "Seconds since the oldest delivery still to send (pending, sending, deferred) "
                 "of a sending run was planned; 0: none.", _age(now, unsent_since))
    yield _gauge("digest_oldest_due_delivery_age_seconds",
                 "Seconds the oldest delivery a worker could send now (pending, or deferred and "
                 "due) has been due; 0: none.", _age(now, due_since))


def oldest_unsent(session: Session, now: datetime) -> tuple[datetime | None, datetime | None]:
    """When the oldest row still to send (pending, sending, deferred) of a sending run was
    planned, and since when the oldest row a worker could send now (pending, or deferred and
    due) has been due. Held and cancelled runs wait for an operator, not for a worker.

    A ``LIMIT 1`` per sending run and status on the partial indexes of the unsent rows
    (``ix_deliveries_unsent``, ``ix_deliveries_due``; migration 0012): a handful of index
    probes however many rows the log holds."""
    due_key = func.coalesce(Delivery.next_attempt_at, Delivery.created_at)
    unsent: list[datetime] = []
    due: list[datetime] = []
    for run_id in session.scalars(select(DigestRun.id).where(
            DigestRun.status == RunStatus.sending)):
        for status in UNSENT:
            first = session.scalar(
                select(Delivery.created_at)
                .where(Delivery.run_id == run_id, _is(status))
                .order_by(Delivery.created_at).limit(1))
            if first is not None:
                unsent.append(first)
        for status, condition in (
                (DeliveryStatus.pending, true()),
                # deferred and next_attempt_at <= now, said so the index answers it.
                (DeliveryStatus.deferred,
                 and_(Delivery.next_attempt_at.is_not(None), due_key <= now))):
            first = session.scalar(
                select(due_key)
                .where(Delivery.run_id == run_id, _is(status), condition)
                .order_by(due_key).limit(1))
            if first is not None:
                due.append(first)
    return (min(unsent, key=_aware, default=None), min(due, key=_aware, default=None))


def _is(status: DeliveryStatus) -> ColumnElement[bool]:
    """``status = 'pending'`` with the value written in the SQL, not bound: a partial index
    serves a plan only where the planner sees the value (a generic plan of a prepared
    statement would not use it)."""
    return Delivery.status == literal_column(f"'{status.value}'")


def _last_runs(session: Session) -> Iterable[Metric]:
    duration = GaugeMetricFamily(
        "digest_run_duration_seconds", "From planned to every row final, of the last finished "
        "run of each kind (dry runs left out).", labels=["kind"])
    finished = GaugeMetricFamily(
        "digest_run_finished_timestamp_seconds", "When the last run of each kind finished "
        "(Unix time).", labels=["kind"])
    last = (
        select(DigestRun.kind, func.max(DigestRun.finished_at).label("finished_at"))
        .where(DigestRun.status == RunStatus.done, DigestRun.dry_run.is_(False),
               DigestRun.finished_at.is_not(None))
        .group_by(DigestRun.kind).subquery()
    )
    seen: set[str] = set()
    for kind, created_at, finished_at in session.execute(
        select(DigestRun.kind, DigestRun.created_at, DigestRun.finished_at)
        .join(last, and_(last.c.kind == DigestRun.kind,
                         last.c.finished_at == DigestRun.finished_at))
        .where(DigestRun.dry_run.is_(False), DigestRun.status == RunStatus.done)
        .order_by(DigestRun.kind, DigestRun.id.desc())
    ):
        if str(kind) in seen or finished_at is None:  # two finished in the same instant
            continue
        seen.add(str(kind))
        duration.add_metric([str(kind)], (finished_at - created_at).total_seconds())
        finished.add_metric([str(kind)], _aware(finished_at).timestamp())
    yield duration
    yield finished


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _age(now: datetime, since: datetime | None) -> float:
    return max((_aware(now) - _aware(since)).total_seconds(), 0.0) if since else 0.0


def _source_figures(session: Session, now: datetime, stale_hours: float) -> Iterable[Metric]:
    """The sources' health and counters, one series a source (a handful of sources, each
    an operator registered: the labels stay few)."""
    labels = ["source", "url"]
    info = GaugeMetricFamily(
        "digest_source_info", "1 per registered source; health: new, ok, failing, stale, "
        "paused; error: its last error in words (empty after a success).",
        labels=[*labels, "kind", "health", "error"])
    gauges = {name: GaugeMetricFamily(f"digest_source_{name}", doc, labels=labels)
              for name, doc in _SOURCE_GAUGES.items()}
    counters = {name: CounterMetricFamily(f"digest_source_{name}", doc, labels=labels)
                for name, doc in _SOURCE_COUNTERS.items()}
    for source in session.scalars(select(Source).order_by(Source.id)):
        key = [str(source.id), source.url]
        word = health(source, now=now, stale_hours=stale_hours)
        error = (source.last_error or "")[:SOURCE_ERROR_CHARS]
        info.add_metric([*key, str(source.kind), word, error], 1)
        failures = source.consecutive_failures or 0
        gauges["up"].add_metric(key, 0 if failures else 1)
        gauges["stale"].add_metric(key, 1 if word == "stale" else 0)
        gauges["consecutive_failures"].add_metric(key, failures)
        for name, moment in (("last_success_timestamp_seconds", source.last_success_at),
                             ("last_attempt_timestamp_seconds", source.last_attempt_at)):
            if moment is not None:
                gauges[name].add_metric(key, _aware(moment).timestamp())
        for name, counter in counters.items():  # each named as its column
            counter.add_metric(key, getattr(source, name) or 0)
    yield info
    yield from gauges.values()
    yield from counters.values()


SOURCE_ERROR_CHARS = 200  # an error label long enough to read, short enough for a label
_SOURCE_GAUGES = {
    "up": "0 while the source's last poll failed, else 1.",
    "stale": "1 when the source has failed for DIGEST_SOURCE_STALE_HOURS (red in the admin).",
    "consecutive_failures": "Polls of the source that failed in a row (it backs off).",
    "last_success_timestamp_seconds": "When the source was last read well (Unix time).",
    "last_attempt_timestamp_seconds": "When the source was last polled (Unix time).",
}
_SOURCE_COUNTERS = {
    "polls": "Polls of the source.",
    "failures": "Polls of the source that failed.",
    "not_modified": "Polls the source answered 304 Not Modified.",
    "items_added": "Items the source added.",
    "bytes_fetched": "Bytes read from the source.",
}


def _broker_figures(settings: Settings) -> Iterable[Metric]:
    url = settings.broker_url or ""
    if not url.startswith(("redis://", "rediss://")):
        return  # in-process tasks (or another broker): no queue to measure here
    import redis

    queues = [settings.task_queue, maintenance_queue(settings)]
    queue = settings.task_queue
    names = [f"{name}{suffix}" for name in queues
             for suffix in ("", *(f"{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS))]
    try:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS,
                                      socket_connect_timeout=TIMEOUT_SECONDS)
        try:
            with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.llen(name)
                pipe.hlen("unacked")
                # A write, as the workers' acknowledgements are: refused when Redis is full.
                pipe.set(f"digest:metrics-probe:{queue}", "1", px=60_000)
                *lengths, unacked, wrote = pipe.execute(raise_on_error=False)
        finally:
            client.close()
        for answer in (*lengths, unacked, wrote):
            if isinstance(answer, Exception):
                raise answer
    except redis.RedisError as exc:
        log.warning("metrics: the broker did not answer or refused a write: %s", exc)
        yield _gauge("digest_broker_up", "1 when the Redis broker answered this scrape and "
                     "took a write.", 0)
        return
    yield _gauge("digest_broker_up", "1 when the Redis broker answered this scrape and took "
                 "a write.", 1)
    length = GaugeMetricFamily("digest_queue_length", "Tasks waiting in the broker's queue.",
                               labels=["queue"])
    per_queue = len(lengths) // len(queues)
    for n, name in enumerate(queues):
        length.add_metric([name], sum(lengths[n * per_queue:(n + 1) * per_queue]))
    yield length
    yield _gauge("digest_queue_unacked", "Tasks workers have taken from the broker and not "
                 "finished yet (acknowledged late, when done).", unacked)


def build_registry(settings: Settings) -> CollectorRegistry:
    """One registry per app (tests build many apps): our collector only, so a scrape of one
    web process says nothing that differs from another's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DigestCollector(settings))
    return registry


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus scrapes this (sync: the collector's queries run in the thread pool)."""
    settings: Settings = request.app.state.settings
    token = settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not secrets.compare_digest(given.encode(), expected.encode()):
            return Response("a valid Authorization: Bearer <DIGEST_METRICS_TOKEN> is needed\n",
                            status_code=401, media_type="text/plain",
                            headers={"WWW-Authenticate": "Bearer"})
    registry: CollectorRegistry = request.app.state.metrics_registry
    if "application/openmetrics-text" in request.headers.get("accept", ""):
        from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

        return Response(openmetrics(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(registry), media_type=TEXT_CONTENT_TYPE)
