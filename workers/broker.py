"""The Redis transport the workers use: kombu's own, with a full Redis read as a lost connection.

A Redis at ``maxmemory`` (policy ``noeviction``, as a broker must be) refuses every write and
every command queued in a MULTI with ``OOM command not allowed`` (``redis.OutOfMemoryError``).
kombu classes that as a *channel* error, which Celery's consumer does not handle: acknowledging
a finished task raised it and the worker exited ("Unrecoverable error: OutOfMemoryError").
Read as a *connection* error instead, the consumer does what it does when Redis restarts: it
logs it, drops the connection and reconnects (``broker_connection_retry``, for ever while
``broker_connection_max_retries`` is None) until Redis takes writes again; an acknowledgement
that could not be written is logged and the task is delivered again later, which is safe
because every task is idempotent (the database is the record). A task taken off the queue
while Redis is full is run rather than dropped (``QoS.append``).
"""

from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from redis.exceptions import ExecAbortError, OutOfMemoryError

BROKER_TRANSPORT = "workers.broker:Transport"
logger = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, carrying on in memory where Redis refuses the writes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._to_unindex: set[str] = set()

    def append(self, message, delivery_tag) -> None:
        """A task taken off the queue (BRPOP is allowed when full) whose copy in the unacked
        index cannot be written is still run, not dropped: kept in memory like any unacked
        message; should the worker die before the end, the sweep finds its rows."""
        try:
            super().append(message, delivery_tag)
        except OutOfMemoryError as exc:
            logger.warning("broker: Redis is out of memory (%s); running the task taken "
                           "without its copy in the unacked index", exc)
            virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag) -> None:
        """A finished task is acknowledged in memory even when Redis refuses to forget its
        copy: otherwise it keeps counting against the prefetch limit and the worker, its
        slots all taken by tasks long done, never takes another one. The copy is removed at
        a later acknowledgement, once Redis takes writes again; until then the most it
        costs is one more run of a finished task after the visibility timeout (a no-op)."""
        self._unindex_left_over()
        try:
            super().ack(delivery_tag)
        except OutOfMemoryError as exc:
            logger.warning("broker: Redis is out of memory (%s); task acknowledged, its copy "
                           "in the unacked index is removed later", exc)
            self._to_unindex.add(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag, requeue: bool = False) -> None:
        """As ``ack`` when Redis is full: the task leaves this worker's slots; one to requeue
        keeps its copy in the unacked index, which Redis restores later (if it was written)."""
        self._unindex_left_over()
        try:
            super().reject(delivery_tag, requeue=requeue)
        except OutOfMemoryError as exc:
            logger.warning("broker: Redis is out of memory (%s); task rejected in memory", exc)
            if not requeue:
                self._to_unindex.add(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)

    def _unindex_left_over(self) -> None:
        for tag in list(self._to_unindex):
            try:
                self._remove_from_indices(tag).execute()  # type: ignore[attr-defined]  # kombu, not in its stubs
            except OutOfMemoryError:
                return
            self._to_unindex.discard(tag)


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    """``redis://`` and ``rediss://`` with OutOfMemoryError as a connection error."""

    Channel = Channel
    connection_errors = (*kombu_redis.Transport.connection_errors, OutOfMemoryError,
                         ExecAbortError)


def transport_for(broker_url: str | None) -> str | None:
    """This transport for a Redis broker URL; None (the URL's own) for anything else."""
    if broker_url and broker_url.split("://", 1)[0] in ("redis", "rediss"):
        return BROKER_TRANSPORT
    return None
