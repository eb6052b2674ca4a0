"""Per-key rate limit of `POST /prune`: a token bucket per tenant.

Each tenant may send `rate_limit_burst` requests at once, refilled at `rate_limit_per_minute`.
In production the buckets live in Redis (one Lua script, timed by the Redis server's clock) so
that every API replica draws from the same bucket; the embedded service has one API process and
keeps them in memory. A request over the limit gets 429 with `Retry-After`.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol

from jobs.settings import Settings

#: KEYS[1]: the bucket; ARGV: rate (tokens/s), burst. Returns the seconds to wait (0: allowed).
TAKE_SCRIPT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(t))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RateLimiter(Protocol):
    def take(self, key: str) -> float:
        """Spend one token of `key`'s bucket; returns 0, or the seconds until one is free."""
        ...


class Unlimited:
    def take(self, key: str) -> float:
        return 0.0


class MemoryRateLimiter:
    """Buckets in this process (the embedded service runs one API process)."""

    def __init__(self, per_minute: float, burst: int):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        with self._lock:
            now = time.monotonic()
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            return wait


class RedisRateLimiter:
    """Buckets in Redis, shared by every API replica."""

    def __init__(self, url: str, prefix: str, per_minute: float, burst: int):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = f"{prefix}ratelimit:"
        self.rate = per_minute / 60.0
        self.burst = burst
        self._take = self.client.register_script(TAKE_SCRIPT)

    def take(self, key: str) -> float:
        return float(self._take(keys=[self.prefix + key], args=[self.rate, self.burst]))


def make_rate_limiter(settings: Settings) -> RateLimiter:
    if settings.rate_limit_per_minute == 0:
        return Unlimited()
    if settings.embedded:
        return MemoryRateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    assert settings.redis_url is not None
    return RedisRateLimiter(
        settings.redis_url,
        settings.redis_prefix,
        settings.rate_limit_per_minute,
        settings.rate_limit_burst,
    )


def retry_after(wait: float) -> str:
    """The `Retry-After` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
