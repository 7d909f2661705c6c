"""Shared state behind one interface: in-process for one instance, Redis for many.

Access tokens, NLU parse results, rate limits, API call budgets and short locks live
here. Both backends honour the same contract (tests/core/test_shared_state.py runs it
against each), so code above never knows which one it has.

`take(key, n, windows)` counts calls in rolling windows (a minute, an hour, a day): a
call counts from the moment it is taken until its window's span has passed. Calls are
kept in buckets of 1/BUCKETS_PER_WINDOW of the span, and a bucket leaves the window only
once its last possible moment has aged out, so a call counts for its full span and at
most one bucket longer (never shorter: a budget never grants what WeChat's own rolling
count would refuse). Memory is bounded by the bucket count, whatever the call rate.

Values are strings: callers serialise with JSON, never pickle.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis

from core.faults import FAULTS

KEY_PREFIX = "scrm:"
BUCKETS_PER_WINDOW = 1200  # a minute in 50 ms buckets, an hour in 3 s, a day in 72 s


@dataclass(frozen=True)
class RateWindow:
    """At most `limit` calls in any `span_s` seconds."""

    span_s: float
    limit: int

    @property
    def bucket_s(self) -> float:
        return self.span_s / BUCKETS_PER_WINDOW

    def bucket(self, now: float) -> int:
        return math.floor(now / self.bucket_s)

    def leaves_at(self, bucket: int) -> float:
        """When every call of `bucket` has counted for the full span."""
        return (bucket + 1) * self.bucket_s + self.span_s


@dataclass(frozen=True)
class Taken:
    """What `take` decided: granted, or how long until the calls would fit (math.inf: never, more than a
    window's limit); `used`: the calls counted in each window, this take's included when granted."""

    granted: bool
    wait_s: float
    used: tuple[int, ...]


class LockNotAcquired(Exception):
    """Another holder kept the lock for longer than we were willing to wait."""


class SharedState(ABC):
    """Key-value state with expiry, atomic set-if-absent and counters."""

    backend: str

    @abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abstractmethod
    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    @abstractmethod
    async def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        """Store only when the key is missing; True when this call stored it."""

    @abstractmethod
    async def delete(self, key: str, only_if_value: str | None = None) -> bool:
        """Remove the key (only when it holds `only_if_value`, if given)."""

    @abstractmethod
    async def incr(self, key: str, ttl_s: float) -> int:
        """Add one and return the new value; the expiry is set on first use."""

    @abstractmethod
    async def take(self, key: str, n: int, windows: Sequence[RateWindow]) -> Taken:
        """Count `n` calls in every window of `key` when all of them have room, atomically across
        instances; otherwise count nothing and say how long until they would fit. `n = 0` only reads."""

    @abstractmethod
    async def ping(self) -> bool: ...

    async def close(self) -> None:
        return None

    @asynccontextmanager
    async def lock(self, key: str, ttl_s: float = 10.0, wait_s: float = 5.0) -> AsyncIterator[None]:
        """A short mutual-exclusion lock across instances, released only by its holder."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        delay = 0.005
        while not await self.set_if_absent(f"lock:{key}", token, ttl_s):
            if time.monotonic() >= deadline:
                raise LockNotAcquired(key)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            await self.delete(f"lock:{key}", only_if_value=token)


class MemoryState(SharedState):
    """In-process stand-in for a single instance (the first-run default)."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[str, float | None]] = {}
        self._clock = clock
        self._windows: dict[tuple[str, RateWindow], _WindowLog] = {}

    def _live(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= self._clock():
            del self._data[key]
            return None
        return value

    def _expiry(self, ttl_s: float | None) -> float | None:
        return None if ttl_s is None else self._clock() + ttl_s

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        self._data[key] = (value, self._expiry(ttl_s))

    async def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        if self._live(key) is not None:
            return False
        self._data[key] = (value, self._expiry(ttl_s))
        return True

    async def delete(self, key: str, only_if_value: str | None = None) -> bool:
        current = self._live(key)
        if current is None or (only_if_value is not None and current != only_if_value):
            return False
        del self._data[key]
        return True

    async def incr(self, key: str, ttl_s: float) -> int:
        current = self._live(key)
        if current is None:
            self._data[key] = ("1", self._expiry(ttl_s))
            return 1
        value = int(current) + 1
        self._data[key] = (str(value), self._data[key][1])
        return value

    async def take(self, key: str, n: int, windows: Sequence[RateWindow]) -> Taken:
        now = self._clock()
        logs = [self._windows.setdefault((key, window), _WindowLog(window)) for window in windows]
        wait_s = max((log.wait_s(n, now) for log in logs), default=0.0)
        granted = wait_s == 0.0 and n > 0
        if granted:
            for log in logs:
                log.add(n, now)
        return Taken(granted or n == 0, wait_s, tuple(log.total for log in logs))

    async def ping(self) -> bool:
        return True


class _WindowLog:
    """One window's buckets, oldest first: [bucket, calls]."""

    def __init__(self, window: RateWindow) -> None:
        self.window = window
        self.buckets: deque[list[int]] = deque()
        self.total = 0

    def wait_s(self, n: int, now: float) -> float:
        """Drop what aged out; 0 when `n` more fit, else the seconds until they do (inf: never)."""
        window = self.window
        while self.buckets and window.leaves_at(self.buckets[0][0]) <= now:
            self.total -= self.buckets.popleft()[1]
        if n > window.limit:
            return math.inf
        excess = self.total + n - window.limit
        for bucket, calls in self.buckets:
            if excess <= 0:
                break
            excess -= calls
            if excess <= 0:
                return window.leaves_at(bucket) - now
        return 0.0

    def add(self, n: int, now: float) -> None:
        bucket = self.window.bucket(now)
        if self.buckets and self.buckets[-1][0] >= bucket:  # same bucket (or a clock that went back)
            self.buckets[-1][1] += n
        else:
            self.buckets.append([bucket, n])
        self.total += n


# Compare-and-delete must be one step, or a lock that expired and was re-taken
# by someone else could be released by its old holder.
_DELETE_IF_VALUE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

_INCR_WITH_TTL = """
local value = redis.call('incr', KEYS[1])
if value == 1 then redis.call('pexpire', KEYS[1], ARGV[1]) end
return value
"""


# One window of `take` is a sorted set of bucket numbers (KEYS[2i-1]) and a hash of their calls plus
# 'total' (KEYS[2i]). Every window is checked before any is written, in one script: atomic across
# instances. ARGV: now ('' for the Redis server's clock, one clock for every instance), n, then
# span, limit and bucket width of each window. The wait goes back as a string (Lua numbers would be
# cut to integers).
_TAKE = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local n = tonumber(ARGV[2])
local windows = #KEYS / 2
local used, wait = {}, 0
for i = 1, windows do
  local zkey, hkey = KEYS[2 * i - 1], KEYS[2 * i]
  local span, limit, width = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local last_gone = math.floor((now - span) / width) - 1
  local gone = redis.call('zrangebyscore', zkey, '-inf', last_gone)
  if #gone > 0 then
    local freed = 0
    for j = 1, #gone do
      freed = freed + tonumber(redis.call('hget', hkey, gone[j]) or '0')
      redis.call('hdel', hkey, gone[j])
    end
    redis.call('hincrby', hkey, 'total', -freed)
    redis.call('zremrangebyscore', zkey, '-inf', last_gone)
  end
  local total = tonumber(redis.call('hget', hkey, 'total') or '0')
  used[i] = total
  if n > limit then
    wait = -1
  elseif wait >= 0 and total + n > limit then
    local excess = total + n - limit
    local buckets = redis.call('zrange', zkey, 0, -1, 'WITHSCORES')
    for j = 1, #buckets, 2 do
      excess = excess - tonumber(redis.call('hget', hkey, buckets[j]) or '0')
      if excess <= 0 then
        local at = (tonumber(buckets[j + 1]) + 1) * width + span
        if at - now > wait then wait = at - now end
        break
      end
    end
  end
end
if n > 0 and wait == 0 then
  for i = 1, windows do
    local zkey, hkey = KEYS[2 * i - 1], KEYS[2 * i]
    local span, width = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 2])
    local bucket = math.floor(now / width)
    local member = string.format('%.0f', bucket)
    redis.call('zadd', zkey, bucket, member)
    redis.call('hincrby', hkey, member, n)
    redis.call('hincrby', hkey, 'total', n)
    local ttl = math.ceil((span + 2 * width) * 1000)
    redis.call('pexpire', zkey, ttl)
    redis.call('pexpire', hkey, ttl)
    used[i] = used[i] + n
  end
end
local answer = {tostring(wait)}
for i = 1, windows do answer[i + 1] = used[i] end
return answer
"""


class RedisState(SharedState):
    """Redis-backed state shared by every instance.

    `clock`: the time `take` counts by; None (the default) is the Redis server's clock, the same for
    every instance. Tests put in their own."""

    backend = "redis"

    def __init__(self, url: str, prefix: str = KEY_PREFIX, clock: Callable[[], float] | None = None) -> None:
        self._redis: Redis = Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._clock = clock
        self._delete_if_value = self._redis.register_script(_DELETE_IF_VALUE)
        self._incr_with_ttl = self._redis.register_script(_INCR_WITH_TTL)
        self._take = self._redis.register_script(_TAKE)

    def _key(self, key: str) -> str:
        return self._prefix + key

    @staticmethod
    def _answered() -> None:
        """Redis answered: an outage this process saw is over."""
        if "redis" in FAULTS.outages:
            FAULTS.cleared("redis")

    async def get(self, key: str) -> str | None:
        value = await self._redis.get(self._key(key))
        self._answered()
        return None if value is None else str(value)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))
        await self._redis.set(self._key(key), value, px=px)
        self._answered()

    async def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        stored = bool(await self._redis.set(self._key(key), value, px=max(1, int(ttl_s * 1000)), nx=True))
        self._answered()
        return stored

    async def delete(self, key: str, only_if_value: str | None = None) -> bool:
        if only_if_value is None:
            deleted = bool(await self._redis.delete(self._key(key)))
        else:
            deleted = bool(await self._delete_if_value(keys=[self._key(key)], args=[only_if_value]))
        self._answered()
        return deleted

    async def incr(self, key: str, ttl_s: float) -> int:
        value = int(await self._incr_with_ttl(keys=[self._key(key)], args=[max(1, int(ttl_s * 1000))]))
        self._answered()
        return value

    async def take(self, key: str, n: int, windows: Sequence[RateWindow]) -> Taken:
        keys = [self._key(f"window:{key}:{window.span_s:g}:{part}") for window in windows for part in ("z", "h")]
        args: list[str | int | float] = ["" if self._clock is None else repr(self._clock()), n]
        for window in windows:
            args += [repr(window.span_s), window.limit, repr(window.bucket_s)]
        answer = await self._take(keys=keys, args=args)
        self._answered()
        wait_s = float(answer[0])
        used = tuple(int(count) for count in answer[1:])
        if wait_s < 0:
            return Taken(False, math.inf, used)
        return Taken(wait_s == 0.0, wait_s, used)

    async def ping(self) -> bool:
        try:
            answered = bool(await self._redis.ping())
        except Exception:  # noqa: BLE001 - health reports, it does not raise
            return False
        self._answered()
        return answered

    async def close(self) -> None:
        await self._redis.aclose()


def open_shared_state(redis_url: str | None, prefix: str = KEY_PREFIX) -> SharedState:
    """Redis when a URL is configured, otherwise the in-process stand-in."""
    return RedisState(redis_url, prefix) if redis_url else MemoryState()
