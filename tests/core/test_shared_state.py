"""One contract, two backends: the in-process stand-in and Redis behave the same."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator

import pytest

from core.shared_state import LockNotAcquired, MemoryState, RateWindow, RedisState, SharedState
from tests.clock import Clock
from tests.conftest import REDIS_TEST_URL


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[SharedState]:
    if request.param == "memory":
        yield MemoryState()
        return
    redis_state = RedisState(REDIS_TEST_URL, prefix=f"test:{uuid.uuid4().hex}:")
    yield redis_state
    await redis_state.close()


async def test_get_set_and_expiry(state: SharedState) -> None:
    assert await state.get("missing") is None
    await state.set("k", "v")
    assert await state.get("k") == "v"
    await state.set("short", "v", ttl_s=0.05)
    await asyncio.sleep(0.08)  # expiry is the behaviour under test; Redis has no fake clock
    assert await state.get("short") is None


async def test_set_if_absent_is_exclusive(state: SharedState) -> None:
    results = await asyncio.gather(*(state.set_if_absent("once", str(i), ttl_s=5) for i in range(20)))
    assert results.count(True) == 1


async def test_delete_only_if_value(state: SharedState) -> None:
    await state.set("k", "mine")
    assert not await state.delete("k", only_if_value="theirs")
    assert await state.get("k") == "mine"
    assert await state.delete("k", only_if_value="mine")
    assert await state.get("k") is None


async def test_incr_counts_from_one(state: SharedState) -> None:
    assert [await state.incr("c", ttl_s=5) for _ in range(3)] == [1, 2, 3]


async def test_lock_serialises_holders(state: SharedState) -> None:
    inside = 0
    overlap = False

    async def holder() -> None:
        nonlocal inside, overlap
        async with state.lock("l", ttl_s=5, wait_s=5):
            inside += 1
            overlap = overlap or inside > 1
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(holder() for _ in range(5)))
    assert not overlap


async def test_lock_gives_up_after_wait(state: SharedState) -> None:
    async with state.lock("busy", ttl_s=5):
        with pytest.raises(LockNotAcquired):
            async with state.lock("busy", ttl_s=5, wait_s=0.05):
                pass


async def test_ping(state: SharedState) -> None:
    assert await state.ping()


# --- rolling windows (`take`), on a clock the test moves: no sleeping ---------------------------------------
MINUTE, HOUR = RateWindow(60.0, 5), RateWindow(3600.0, 8)
EPSILON = 1e-3  # the float arithmetic of bucket edges


@pytest.fixture(params=["memory", "redis"])
async def clocked(request: pytest.FixtureRequest) -> AsyncIterator[tuple[SharedState, Clock]]:
    clock = Clock()
    if request.param == "memory":
        yield MemoryState(clock), clock
        return
    redis_state = RedisState(REDIS_TEST_URL, prefix=f"test:{uuid.uuid4().hex}:", clock=clock)
    yield redis_state, clock
    await redis_state.close()


async def test_take_grants_up_to_the_limit_then_says_how_long(clocked: tuple[SharedState, Clock]) -> None:
    state, clock = clocked
    assert [(await state.take("api", 1, [MINUTE])).granted for _ in range(5)] == [True] * 5
    clock.advance(10.0)
    refused = await state.take("api", 1, [MINUTE])
    assert not refused.granted and refused.used == (5,)
    assert 50.0 <= refused.wait_s <= 50.0 + MINUTE.bucket_s + EPSILON  # the first call counts 60 s (and at most a bucket more)


async def test_a_call_counts_for_its_full_span_and_at_most_one_bucket_more(clocked: tuple[SharedState, Clock]) -> None:
    state, clock = clocked
    for _ in range(5):
        await state.take("api", 1, [MINUTE])
    clock.advance(60.0)  # exactly the span: the platform would count the calls no longer; never sooner here
    assert not (await state.take("api", 1, [MINUTE])).granted
    clock.advance(MINUTE.bucket_s + EPSILON)
    taken = await state.take("api", 1, [MINUTE])
    assert taken.granted and taken.used == (1,)


async def test_take_is_all_windows_or_none(clocked: tuple[SharedState, Clock]) -> None:
    state, clock = clocked
    assert (await state.take("api", 5, [MINUTE, HOUR])).used == (5, 5)
    clock.advance(61.0)
    assert (await state.take("api", 3, [MINUTE, HOUR])).used == (3, 8)
    clock.advance(61.0)
    refused = await state.take("api", 1, [MINUTE, HOUR])  # the minute has room, the hour none: nothing counted
    assert not refused.granted and refused.used == (0, 8)
    assert 3600.0 - 122.0 <= refused.wait_s <= 3600.0 - 122.0 + HOUR.bucket_s + EPSILON
    assert (await state.take("api", 0, [MINUTE, HOUR])).used == (0, 8)


async def test_take_more_than_a_limit_is_never(clocked: tuple[SharedState, Clock]) -> None:
    state, _ = clocked
    taken = await state.take("api", 6, [MINUTE])
    assert not taken.granted and math.isinf(taken.wait_s) and taken.used == (0,)


async def test_take_reading_counts_nothing(clocked: tuple[SharedState, Clock]) -> None:
    state, _ = clocked
    await state.take("api", 2, [MINUTE])
    assert [(await state.take("api", 0, [MINUTE])).used for _ in range(3)] == [(2,), (2,), (2,)]


async def test_take_keys_are_separate(clocked: tuple[SharedState, Clock]) -> None:
    state, _ = clocked
    await state.take("a", 5, [MINUTE])
    assert (await state.take("b", 5, [MINUTE])).granted


async def test_take_is_atomic_under_concurrent_callers(clocked: tuple[SharedState, Clock]) -> None:
    state, _ = clocked
    taken = await asyncio.gather(*(state.take("api", 1, [MINUTE, HOUR]) for _ in range(20)))
    assert sum(result.granted for result in taken) == 5


async def test_take_keeps_a_bounded_log_however_many_calls(clocked: tuple[SharedState, Clock]) -> None:
    """Calls are kept in buckets of 1/1200 of the span: a day of calls at any rate is at most 1201 entries."""
    state, clock = clocked
    day = RateWindow(86400.0, 1_000_000)
    for _ in range(3000):
        await state.take("api", 1, [day])
        clock.advance(0.5)
    assert (await state.take("api", 0, [day])).used == (3000,)
    if isinstance(state, RedisState):
        entries = await state._redis.zcard(state._key("window:api:86400:z"))  # noqa: SLF001 - the log's size
        assert entries <= 1500 / (86400.0 / 1200) + 2
