"""The Celery application.

With ``DIGEST_BROKER_URL`` set (redis://...), tasks go through the broker to workers. Without
it the same tasks run in-process (eager), so ``digest demo`` needs no server.

Reliability settings (docs/architecture.md): acks_late + reject_on_worker_lost so a task whose
worker died is delivered again, bounded by retry_on_worker_lost + max_retries so a poison task
cannot loop forever; prefetch 1; soft and hard time limits. Retries and schedules live in the
database (next_attempt_at, slot keys), never in long ETAs, because Redis redelivers ETA tasks
after the visibility timeout.
"""

from __future__ import annotations

from celery import Celery, signals
from celery.schedules import crontab

from digest.queue import maintenance_queue
from digest.settings import Settings, get_settings
from workers.broker import transport_for

app = Celery("digest", include=["workers.tasks"])


def configure(settings: Settings | None = None) -> Celery:
    """(Re)apply settings to the app; tests call it after changing DIGEST_* variables."""
    s = settings or get_settings()
    in_process = not s.broker_url
    _drop_connections()
    # The beat's periodic work goes to a queue of its own, which every worker consumes besides
    # its -Q ones (_consume_maintenance_queue): a sweep never waits behind the deliveries.
    periodic = {"queue": maintenance_queue(s)}
    app.conf.update(
        broker_url=s.broker_url or "memory://",
        # A Redis out of memory is a lost connection, not a reason to exit (workers/broker.py).
        broker_transport=transport_for(s.broker_url),
        result_backend=s.result_backend or None,
        task_always_eager=in_process,
        task_eager_propagates=in_process,
        task_default_queue=s.task_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_retry_on_worker_lost=True,
        # A task never outlives the lease on the rows it claimed: otherwise lease recovery
        # could hand a slow but living batch to a second worker and send twice.
        task_soft_time_limit=max(int(s.lease_seconds * 0.8), 1),
        task_time_limit=s.lease_seconds,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1000,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        broker_connection_retry_on_startup=True,
        # A broker that is away (restarting, out of memory) is waited for, however long: a
        # worker that gives up and exits sends nothing until an operator restarts it.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # Longer than any task's hard time limit, so a running task is not redelivered.
        broker_transport_options={"visibility_timeout": 3600},
        # Task events (sent, received, started, succeeded, failed) go to the broker, so Flower
        # and `celery events` can watch the workers.
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Exactly one beat sends periodic tasks: the one holding the Redis beat lock (ADR 0017);
        # a second beat stands by and takes over within DIGEST_BEAT_LOCK_SECONDS.
        beat_scheduler="workers.beat:SingleBeatScheduler",
        beat_schedule={
            # Plans this hour's slot and any missed since the last one planned; unique slot keys
            # make extra ticks (a second beat) harmless.
            "tick": {"task": "digest.tick", "schedule": crontab(minute="*/5"),
                     "options": periodic},
            # Debounced alerts: the alert windows (DIGEST_ALERT_DEBOUNCE_MINUTES) that closed.
            "alerts": {"task": "digest.plan_alerts", "schedule": 60.0, "options": periodic},
            "retry-deferred": {"task": "digest.retry_deferred",
                               "schedule": float(s.retry_sweep_seconds), "options": periodic},
            # Lost work is found from the database: dead workers' leases, pending rows whose
            # task a broker restart dropped, runs left open.
            "sweep": {"task": "digest.sweep", "schedule": float(s.sweep_seconds),
                      "options": periodic},
            # Registered sources: the due ones polled, each under a lease (ADR 0034).
            "poll-sources": {"task": "digest.poll_sources",
                             "schedule": float(s.source_poll_seconds), "options": periodic},
            "purge-unconfirmed": {"task": "digest.purge_unconfirmed",
                                  "schedule": crontab(minute=17, hour=3), "options": periodic},
            # Retention: final deliveries older than DIGEST_RETENTION_DAYS, and the ledger rows
            # no future run needs; batched, so it holds no lock for long.
            "prune": {"task": "digest.prune", "schedule": crontab(minute=43, hour=3),
                      "options": periodic},
            # WebSub: subscribe, renew leases, give up on hubs that never verify (ADR 0035).
            "websub-maintain": {"task": "digest.websub_maintain", "schedule": 300.0,
                                "options": periodic},
        },
    )
    return app


def _drop_connections() -> None:
    """Forget pooled broker connections so a changed broker URL takes effect."""
    from kombu import pools

    pools.reset()
    app._pool = None  # type: ignore[attr-defined]  # the pool cache; not in the stubs
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


configure()


@signals.celeryd_after_setup.connect
def _consume_maintenance_queue(sender=None, instance=None, **_kwargs) -> None:
    """Every worker takes the beat's periodic work too, whatever queues its -Q names, so no
    deployment can leave the sweep unconsumed (Celery's documented way to add a queue)."""
    if instance is not None:
        instance.app.amqp.queues.select_add(maintenance_queue(get_settings()))


@signals.celeryd_init.connect
def _refuse_known_secret_key(**_kwargs) -> None:
    """A worker signs the links in every email: it does not start with a key anyone knows
    (one line, exit 1, like the CLI), outside the built-in SQLite file."""
    import sys

    from digest.errors import ConfigError
    from digest.settings import check_secrets

    try:
        check_secrets(get_settings())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


@signals.setup_logging.connect
def _log_like_the_rest(loglevel=None, **_kwargs) -> None:
    """The worker and the beat log through digest.logs (JSON off a terminal), not Celery's
    own set-up: connecting here is how Celery is told to leave logging alone."""
    from digest.logs import configure_logging

    s = get_settings()
    configure_logging(s.log_format, log_level(s, loglevel))


def log_level(settings: Settings, celery_level: int | str | None) -> int | str:
    """The level the operator asked for: DIGEST_LOG_LEVEL when it is set, else the ``-l``
    given to ``celery worker|beat``, else DIGEST_LOG_LEVEL's default (INFO). Celery hands
    over its own default (WARNING) when no ``-l`` was given, which would hide every INFO
    line of a worker started as the README shows."""
    if "log_level" in settings.model_fields_set or celery_level is None:
        return settings.log_level
    return celery_level if _given_on_command_line("loglevel") else settings.log_level


def _given_on_command_line(option: str) -> bool:
    """Whether the running ``celery`` command got this option (not its default)."""
    import click
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source(option) if ctx is not None else None
    return source is not None and source is not ParameterSource.DEFAULT


@signals.task_prerun.connect
def _bind_task_id(task_id=None, task=None, **_kwargs) -> None:
    """Every line a task writes names it (and the send path adds run and delivery ids)."""
    from digest.logs import bind_ids

    bind_ids(task_id=task_id, task=getattr(task, "name", None))


@signals.task_postrun.connect
def _unbind_task_id(**_kwargs) -> None:
    from digest.logs import unbind_ids

    unbind_ids("task_id", "task")


@signals.worker_process_shutdown.connect
def _close_kept_smtp_connection(**_kwargs) -> None:
    """A pool process keeps its SMTP connection across batches: QUIT it on the way out
    (max tasks per child reached, warm shutdown)."""
    from digest.delivery.transport import close_kept_connection

    close_kept_connection()
