"""One contract, two backends: the in-process stand-in and Redis behave the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from core.shared_state import LockNotAcquired, MemoryState, RedisState, SharedState
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
