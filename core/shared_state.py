"""Shared state behind one interface: in-process for one instance, Redis for many.

Access tokens, NLU parse results, rate limits and short locks live here. Both
backends honour the same contract (tests/crm_store/test_shared_state.py runs it
against each), so code above never knows which one it has.

Values are strings: callers serialise with JSON, never pickle.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from core.faults import FAULTS

KEY_PREFIX = "scrm:"


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

    async def ping(self) -> bool:
        return True


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


class RedisState(SharedState):
    """Redis-backed state shared by every instance."""

    backend = "redis"

    def __init__(self, url: str, prefix: str = KEY_PREFIX) -> None:
        self._redis: Redis = Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._delete_if_value = self._redis.register_script(_DELETE_IF_VALUE)
        self._incr_with_ttl = self._redis.register_script(_INCR_WITH_TTL)

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
