"""Exactly one beat does periodic work, however many are started (ADR 0017).

``SingleBeatScheduler`` is celery beat's own scheduler (schedule kept in the ``-s`` file) that
sends due tasks only while it holds a lock in the broker's Redis: ``SET key token NX PX ttl``,
renewed by the holder every third of ``DIGEST_BEAT_LOCK_SECONDS``. A second beat stands by,
asking for the lock once a second, and takes over at most the lock's time to live after the
holder died; a holder stopped cleanly releases the lock, so the standby takes over at once.
A Redis that restarted empty has no lock: whichever beat asks first holds it again.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

import redis
from celery.beat import PersistentScheduler

from digest.settings import get_settings

logger = logging.getLogger(__name__)

# Take the lock if it is free, renew it if it is ours; 1 when held, 0 when another beat has it.
_HOLD = """
local held = redis.call('get', KEYS[1])
if held == ARGV[1] then
    redis.call('pexpire', KEYS[1], ARGV[2])
    return 1
end
if not held then
    redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""
# Delete the lock only if it is still ours (it may have expired and gone to another beat).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
STANDBY_POLL_SECONDS = 1.0


def lock_key(task_queue: str) -> str:
    """One lock per stack: stacks sharing a Redis have their own queue names."""
    return f"digest:beat-lock:{task_queue}"


class SingleBeatScheduler(PersistentScheduler):
    """PersistentScheduler that sends nothing unless it holds the beat lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = get_settings()
        self.lock_seconds = settings.beat_lock_seconds
        self.lock_name = lock_key(settings.task_queue)
        # Who holds it, readable in Redis: host, pid and a random part no other process has.
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self.holding = False
        self._redis = redis.Redis.from_url(settings.broker_url) if settings.broker_url else None
        super().__init__(*args, **kwargs)

    def _hold_lock(self) -> bool:
        if self._redis is None:  # no broker: nothing else could share the schedule
            return True
        try:
            held = bool(self._redis.eval(_HOLD, 1, self.lock_name, self.token,
                                         self.lock_seconds * 1000))
        except redis.RedisError as exc:
            # Unable to prove we hold it, and unable to send anyway: wait for Redis.
            logger.warning("beat: cannot reach Redis for the beat lock (%s); sending nothing", exc)
            held = False
        if held != self.holding:
            if held:
                logger.info("beat: holds the beat lock %s; sending periodic tasks", self.lock_name)
            else:
                logger.info("beat: another beat holds the beat lock %s; standing by",
                            self.lock_name)
        self.holding = held
        return held

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._hold_lock():
            return STANDBY_POLL_SECONDS
        # Come back in time to renew the lock, however far off the next due task is.
        return min(super().tick(*args, **kwargs), self.lock_seconds / 3)

    def close(self) -> None:
        if self._redis is not None and self.holding:
            try:
                self._redis.eval(_RELEASE, 1, self.lock_name, self.token)
                logger.info("beat: released the beat lock %s", self.lock_name)
            except redis.RedisError:
                pass  # it expires by itself
            self.holding = False
        super().close()
