"""A running bot for tests: the real app on a real port, the sandbox's fake WeCom/OA API, a real store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bot.app import FAKE_WECHAT, create_app
from bot.runtime import RUNTIME, Runtime
from bot.sandbox.fake_wechat import FakeWeChat, Sent
from bot.sandbox.simulator import SIMULATOR, Simulator
from bot.settings import Settings, load_settings
from tests.conftest import Backend


def make_settings(backend: Backend, **sections: Any) -> Settings:
    overrides: dict[str, Any] = {
        "store": {"url": backend.store_url},
        "redis": {"url": backend.redis_url},
        "sandbox": {"enabled": True, "api_port": 0},
        "nlu": {"mode": "rules", "timeout_ms": 200},
        "worker": {"poll_interval_s": 0.05, "max_attempts": 4},
        "logging": {"level": "WARNING"},
        "handoff": {"office_hours": "mon-sun 00:00-24:00"},  # the time of day must not change what tests see
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_settings(**overrides)


@dataclass
class Bot:
    """The app under test and WeChat's side of it."""

    client: TestClient
    runtime: Runtime
    fake: FakeWeChat
    simulator: Simulator

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    async def drain(self) -> None:
        await self.runtime.drain()

    def replies_to(self, user: str) -> list[Sent]:
        return self.fake.messages_to(user)

    async def drain_until_answered(self, user: str, rounds: int = 50) -> None:
        """Drain repeatedly while retries wait out their (short, test-configured) back-off."""
        for _ in range(rounds):
            await self.drain()
            if self.replies_to(user):
                return
            await asyncio.sleep(0.02)


BotFactory = Callable[..., "AsyncIterator[Bot]"]


@pytest.fixture
async def start_bot(backend: Backend, aiohttp_client, clean_env) -> AsyncIterator[Callable[..., Any]]:  # type: ignore[no-untyped-def]
    async def start(run_workers: bool = False, **sections: Any) -> Bot:
        app = create_app(make_settings(backend, **sections), run_workers=run_workers)
        client = await aiohttp_client(app)
        return Bot(client, app[RUNTIME], app[FAKE_WECHAT], app[SIMULATOR])

    yield start


@pytest.fixture
async def bot(start_bot) -> Bot:  # type: ignore[no-untyped-def]
    return await start_bot()
