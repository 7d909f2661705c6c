"""Fixtures for the NLU tests: settings, a fake Rasa server (the outside world), shared state.

The fake Rasa speaks `/status` and `/model/parse` like Rasa 3.6 and can be told
to answer, hang, fail or return junk, so the client's timeout and fallback are
tested over real HTTP without mocking our own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.shared_state import MemoryState, RedisState, SharedState
from crm_store.lifecycle_settings import LifecycleSettings
from flows.faq import read_faq
from flows.faq_model import FaqBook
from nlu.rasa_runtime import RasaUnavailable, rasa_executable
from nlu.server import ManagedRasa
from nlu.settings import REPO_ROOT, NluSettings
from tests.conftest import REDIS_TEST_URL

TOKEN = "test-token"
STARTER_FLOWS = REPO_ROOT / "flows" / "library"  # the shipped flow directory, its faq.yaml the starter FAQ


def starter_faq() -> FaqBook:
    """The starter FAQ: what the real-Rasa tests train with the intents (one model for all of them)."""
    return read_faq(STARTER_FLOWS, LifecycleSettings())


@contextlib.asynccontextmanager
async def started_rasa() -> AsyncIterator[ManagedRasa]:
    """A managed Rasa with THE model of the real-Rasa tests: the intents and the starter FAQ, as `scrm serve`
    runs it. Trained once (2-5 minutes on 2 cores) when the data changed; each module starts its own server."""
    settings = NluSettings(mode="managed")
    try:
        rasa_executable(settings)
    except RasaUnavailable as exc:
        pytest.skip(f"Rasa virtualenv missing ({exc})")
    server = ManagedRasa(settings, faq=starter_faq().training_rows())
    await server.start()
    try:
        assert await server.wait_ready(900), server.status()
        yield server
    finally:
        await server.stop()


@dataclass
class FakeRasa:
    """A scriptable Rasa: `mode` is "ok", "hang", "error", "junk" or "down"."""

    mode: str = "ok"
    intent: str = "greet"
    confidence: float = 0.97
    entities: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # more of the answer, e.g. a recorded response_selector
    received: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def status(self, request: web.Request) -> web.Response:
        if request.query.get("token") != TOKEN:
            return web.json_response({"status": "failure", "reason": "NotAuthenticated"}, status=401)
        if self.mode == "down":
            return web.Response(status=503)
        return web.json_response({"model_file": "nlu-test.tar.gz", "fingerprint": {}})

    async def parse(self, request: web.Request) -> web.Response:
        if request.query.get("token") != TOKEN:
            return web.json_response({"status": "failure"}, status=401)
        text = (await request.json())["text"]
        self.received.append(text)
        if self.mode == "hang":
            await self.release.wait()  # until the test ends: longer than any client timeout
        if self.mode in ("error", "down"):
            return web.json_response({"status": "failure", "reason": "ParsingError"}, status=500)
        if self.mode == "junk":
            return web.Response(text="<html>bad gateway</html>", content_type="text/html")
        return web.json_response({
            "text": text,
            "intent": {"name": self.intent, "confidence": self.confidence},
            "entities": self.entities,
            "intent_ranking": [{"name": self.intent, "confidence": self.confidence}],
            **self.extra,
        })


@pytest.fixture
async def fake_rasa() -> AsyncIterator[FakeRasa]:
    fake = FakeRasa()
    app = web.Application()
    app.router.add_get("/status", fake.status)
    app.router.add_post("/model/parse", fake.parse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    fake.release.set()
    await server.close()


@pytest.fixture
def nlu_settings() -> Callable[..., NluSettings]:
    """A factory: nlu_settings(mode="rules", timeout_ms=50, ...)."""

    def make(**overrides: Any) -> NluSettings:
        base: dict[str, Any] = {"mode": "external", "timeout_ms": 200, "auth_token": TOKEN,
                                "breaker_failures": 2, "breaker_cooldown_s": 0.2}
        base.update(overrides)
        return NluSettings(**base)

    return make


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[SharedState]:
    """The parse cache's store: each test runs on both backends; Redis keys are removed afterwards."""
    if request.param == "memory":
        yield MemoryState()
        return
    prefix = f"scrm-test-nlu-{uuid.uuid4().hex[:8]}:"
    redis_state = RedisState(REDIS_TEST_URL, prefix=prefix)
    yield redis_state
    raw = redis_state._redis
    keys = [key async for key in raw.scan_iter(match=prefix + "*")]
    if keys:
        await raw.delete(*keys)
    await redis_state.close()
