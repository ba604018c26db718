"""Send-rate limits shared by every worker: messages a second in all (``DIGEST_SEND_RATE``) and,
per recipient domain, concurrent senders (``DIGEST_DOMAIN_CONNECTIONS``) and messages a
minute (``DIGEST_DOMAIN_PER_MINUTE``), with overrides per domain (``DIGEST_DOMAIN_LIMITS``).

A batch asks once for all its messages (one round trip, ``Limiter.take``): how many of each
domain's may go now. The rest is not slept on: the sender defers those rows (their attempt
given back, ``states.DeferredWithoutAttempt``) to when the limits allow, spaced at the rate,
and hands them back to the queue for then.

The counts are token buckets (one second's worth of burst; a minute's limit is paced at a
sixtieth of it a second) and a set of senders per domain whose entries expire with the lease,
so a worker that dies frees its slot. With a Redis broker they live in Redis, taken by one Lua
script (atomic across workers and machines, on Redis's clock) under keys that expire once
full again; without one, in this process (``InProcessLimiter``, the same interface).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from digest.errors import ConfigError
from digest.settings import Settings, parse_domain_limits

KEY_PREFIX = "digest:limits:"
# A domain whose senders are all taken is tried again this soon (a batch takes seconds).
BUSY_RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class DomainLimit:
    connections: int = 0  # concurrent senders; 0: unlimited
    per_minute: int = 0  # messages a minute; 0: unlimited


@dataclass(frozen=True)
class Limits:
    send_rate: float = 0.0  # messages a second in all; 0: unlimited
    default: DomainLimit = DomainLimit()
    overrides: Mapping[str, DomainLimit] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        base = DomainLimit(settings.domain_connections, settings.domain_per_minute)
        overrides = {
            domain: DomainLimit(
                base.connections if conns is None else conns,
                base.per_minute if per_minute is None else per_minute)
            for domain, (conns, per_minute) in parse_domain_limits(settings.domain_limits).items()
        }
        return cls(settings.send_rate, base, overrides)

    def for_domain(self, domain: str) -> DomainLimit:
        return self.overrides.get(domain, self.default)

    @property
    def any(self) -> bool:
        """Whether anything is limited at all (else the sender never asks)."""
        limits = [self.default, *self.overrides.values()]
        return self.send_rate > 0 or any(d.connections or d.per_minute for d in limits)


@dataclass
class Grant:
    """What a batch may send now, and when the rest may go."""

    allowed: dict[str, int]  # per domain: how many of the wanted may go now
    busy: set[str]  # domains whose concurrent senders are all taken (none of theirs go)
    global_wait: float = 0.0  # seconds until the overall rate allows the next message
    global_interval: float = 0.0  # seconds between two messages at the overall rate
    domain_wait: dict[str, float] = field(default_factory=dict)
    domain_interval: dict[str, float] = field(default_factory=dict)

    def delays(self, leftovers: Mapping[str, int]) -> dict[str, list[float]]:
        """For each domain's messages that may not go now, in how many seconds each may:
        spaced at the overall rate across domains and at each domain's own rate."""
        out: dict[str, list[float]] = {}
        j = 0
        for domain, count in leftovers.items():
            own_wait = self.domain_wait.get(domain, 0.0)
            own_step = self.domain_interval.get(domain, 0.0)
            delays = []
            for k in range(count):
                overall = self.global_wait + j * self.global_interval
                if domain in self.busy:
                    delays.append(BUSY_RETRY_SECONDS + overall)
                else:
                    delays.append(max(overall, own_wait + k * own_step))
                j += 1
            out[domain] = delays
        return out


class Limiter(Protocol):
    limits: Limits

    def take(self, wanted: Mapping[str, int], holder: str, lease_seconds: float) -> Grant:
        """Take up to ``wanted[domain]`` messages for each domain now (and a sender slot of
        each domain with a connection limit, held by ``holder`` until ``release`` or the lease
        ends); one call per batch."""
        ...

    def release(self, domains: Iterable[str], holder: str) -> None:
        """Give back ``holder``'s sender slots (end of the batch)."""
        ...


def new_holder() -> str:
    return uuid.uuid4().hex


def _buckets(limits: Limits, domain: str) -> tuple[int, float, float]:
    """A domain's (connections, tokens a second, burst)."""
    own = limits.for_domain(domain)
    rate = own.per_minute / 60.0
    return own.connections, rate, max(1.0, rate)


def _global(limits: Limits) -> tuple[float, float]:
    return limits.send_rate, max(1.0, limits.send_rate)


# KEYS: the overall bucket, then per domain its bucket and its set of senders.
# ARGV: holder, lease (ms), overall rate (per ms), overall burst, n domains, then per domain:
# wanted, connections, rate (per ms), burst. Returns the overall wait (ms) then per domain
# allowed, busy (0/1), its wait (ms); fractions as strings (Lua numbers become integers).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local holder = ARGV[1]
local lease = tonumber(ARGV[2])
local grate = tonumber(ARGV[3])
local gburst = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local function level(key, rate, burst)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(v[1])
  local ts = tonumber(v[2])
  if tokens == nil or ts == nil then return burst end
  return math.min(burst, tokens + math.max(0, now - ts) * rate)
end
local function store(key, tokens, rate, burst)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate) + 1000)
end
local gtokens = nil
if grate > 0 then gtokens = level(KEYS[1], grate, gburst) end
local out = {}
for i = 1, n do
  local a = 5 + (i - 1) * 4
  local allowed = tonumber(ARGV[a + 1])
  local conns = tonumber(ARGV[a + 2])
  local drate = tonumber(ARGV[a + 3])
  local dburst = tonumber(ARGV[a + 4])
  local bkey = KEYS[2 * i]
  local ckey = KEYS[2 * i + 1]
  local busy = 0
  local dwait = 0
  if conns > 0 then
    redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now)
    if not redis.call('ZSCORE', ckey, holder) and redis.call('ZCARD', ckey) >= conns then
      allowed = 0
      busy = 1
    end
  end
  local dtokens = nil
  if busy == 0 and drate > 0 then
    dtokens = level(bkey, drate, dburst)
    allowed = math.min(allowed, math.floor(dtokens))
  end
  if busy == 0 and gtokens ~= nil then
    allowed = math.min(allowed, math.floor(gtokens))
    gtokens = gtokens - allowed
  end
  if dtokens ~= nil then
    dtokens = dtokens - allowed
    store(bkey, dtokens, drate, dburst)
    dwait = math.max(0, (1 - dtokens) / drate)
  end
  if conns > 0 and busy == 0 and allowed > 0 then
    redis.call('ZADD', ckey, now + lease, holder)
    redis.call('PEXPIRE', ckey, lease)
  end
  out[#out + 1] = allowed
  out[#out + 1] = busy
  out[#out + 1] = tostring(dwait)
end
local gwait = 0
if gtokens ~= nil then
  store(KEYS[1], gtokens, grate, gburst)
  gwait = math.max(0, (1 - gtokens) / grate)
end
table.insert(out, 1, tostring(gwait))
return out
"""


class RedisLimiter:
    """The limits shared by every worker through Redis (one Lua call per batch)."""

    def __init__(self, url: str, limits: Limits, prefix: str = KEY_PREFIX):
        import redis

        self.limits = limits
        self.url = url
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url)
        self._take = self._redis.register_script(_TAKE)

    def take(self, wanted: Mapping[str, int], holder: str, lease_seconds: float) -> Grant:
        import redis

        domains = list(wanted)
        rate, burst = _global(self.limits)
        keys = [f"{self.prefix}rate"]
        args: list[Any] = [holder, int(lease_seconds * 1000), rate / 1000, burst, len(domains)]
        per_domain = {}
        for domain in domains:
            conns, drate, dburst = per_domain[domain] = _buckets(self.limits, domain)
            keys += [f"{self.prefix}domain:{domain}:rate", f"{self.prefix}domain:{domain}:senders"]
            args += [wanted[domain], conns, drate / 1000, dburst]
        try:
            reply = self._take(keys=keys, args=args)
        except redis.RedisError as exc:
            raise ConfigError(
                f"the send-rate limits are kept in Redis ({self._redis_host()}), which did not "
                f"answer: {exc}; start it, or unset DIGEST_SEND_RATE and DIGEST_DOMAIN_*") from exc
        grant = Grant(allowed={}, busy=set(), global_wait=float(reply[0]) / 1000,
                      global_interval=1 / rate if rate else 0.0)
        for i, domain in enumerate(domains):
            allowed, busy, wait = reply[1 + 3 * i: 4 + 3 * i]
            grant.allowed[domain] = int(allowed)
            if int(busy):
                grant.busy.add(domain)
            drate = per_domain[domain][1]
            grant.domain_wait[domain] = float(wait) / 1000
            grant.domain_interval[domain] = 1 / drate if drate else 0.0
        return grant

    def release(self, domains: Iterable[str], holder: str) -> None:
        limited = [d for d in domains if self.limits.for_domain(d).connections]
        if not limited:
            return
        pipe = self._redis.pipeline(transaction=False)
        for domain in limited:
            pipe.zrem(f"{self.prefix}domain:{domain}:senders", holder)
        with contextlib.suppress(Exception):  # the slot expires with the lease anyway
            pipe.execute()

    def _redis_host(self) -> str:
        kwargs = self._redis.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


class InProcessLimiter:
    """The same limits counted in this process: for a broker-less install and the demo."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key: (tokens, at)
        self._senders: dict[str, dict[str, float]] = {}  # domain: holder -> expiry

    def _level(self, key: str, rate: float, burst: float, now: float) -> float:
        tokens, at = self._buckets.get(key, (burst, now))
        return min(burst, tokens + max(0.0, now - at) * rate)

    def take(self, wanted: Mapping[str, int], holder: str, lease_seconds: float) -> Grant:
        rate, burst = _global(self.limits)
        with self._lock:
            now = time.monotonic()
            gtokens = self._level("", rate, burst, now) if rate else None
            grant = Grant(allowed={}, busy=set(), global_interval=1 / rate if rate else 0.0)
            for domain, count in wanted.items():
                conns, drate, dburst = _buckets(self.limits, domain)
                allowed = count
                senders = self._senders.setdefault(domain, {})
                for other, expiry in list(senders.items()):
                    if expiry <= now:
                        del senders[other]
                if conns and holder not in senders and len(senders) >= conns:
                    grant.busy.add(domain)
                    grant.allowed[domain] = 0
                    continue
                dtokens = self._level(domain, drate, dburst, now) if drate else None
                if dtokens is not None:
                    allowed = min(allowed, math.floor(dtokens))
                if gtokens is not None:
                    allowed = min(allowed, math.floor(gtokens))
                    gtokens -= allowed
                if dtokens is not None:
                    dtokens -= allowed
                    self._buckets[domain] = (dtokens, now)
                    grant.domain_wait[domain] = max(0.0, (1 - dtokens) / drate)
                    grant.domain_interval[domain] = 1 / drate
                if conns and allowed:
                    senders[holder] = now + lease_seconds
                grant.allowed[domain] = allowed
            if gtokens is not None:
                self._buckets[""] = (gtokens, now)
                grant.global_wait = max(0.0, (1 - gtokens) / rate)
        return grant

    def release(self, domains: Iterable[str], holder: str) -> None:
        with self._lock:
            for domain in domains:
                self._senders.get(domain, {}).pop(holder, None)


_limiters: dict[tuple[object, ...], Limiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(settings: Settings) -> Limiter | None:
    """This process's limiter for the settings' limits (None when nothing is limited): in
    Redis with a redis:// broker, else in this process."""
    limits = Limits.from_settings(settings)
    if not limits.any:
        return None
    broker = settings.broker_url or ""
    url = broker if broker.startswith(("redis://", "rediss://", "unix://")) else ""
    key = (url, settings.send_rate, settings.domain_connections, settings.domain_per_minute,
           settings.domain_limits)
    with _limiters_lock:
        limiter = _limiters.get(key)
        if limiter is None:
            limiter = RedisLimiter(url, limits) if url else InProcessLimiter(limits)
            _limiters[key] = limiter
        return limiter
