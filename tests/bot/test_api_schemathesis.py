"""Schemathesis against the running app's /api/v1/openapi.json: whatever it sends, the API answers no 5xx.

The app runs on a real port in a thread of its own (Schemathesis calls it with a synchronous
client), on PostgreSQL, the stricter store (NUL bytes, 64-bit ranges), with a write key.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from bot.api import API_LIMITS
from bot.app import create_app
from bot.runtime import RUNTIME
from crm_store.api_keys import create_key
from crm_store.customers import resolve_customer
from crm_store.migrate import upgrade_async
from tests.bot.conftest import make_settings
from tests.conftest import Backend, create_pg_database, drop_pg_database


@dataclass
class Served:
    url: str
    key: str


def _serve(ready: threading.Event, stop: asyncio.Event, served: list[Served], loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        name, store_url = await create_pg_database()
        try:
            await upgrade_async(store_url)
            app = create_app(make_settings(Backend("postgres", store_url, "")), run_workers=False)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            app[API_LIMITS].requests = 1_000_000
            async with app[RUNTIME].sessions.begin() as session:
                made = await create_key(session, "fuzz", "write")
                for index in range(3):  # a few customers for ids 1..3
                    await resolve_customer(session, "wecom", f"wm_fuzz_{index}")
            served.append(Served(f"http://127.0.0.1:{runner.addresses[0][1]}", made.key))
            ready.set()
            await stop.wait()
            await runner.cleanup()
        finally:
            ready.set()
            await drop_pg_database(name)

    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())


@pytest.fixture(scope="module")
def server(clean_env_module: None) -> Iterator[Served]:
    ready, served, loop = threading.Event(), [], asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=_serve, args=(ready, stop, served, loop), daemon=True)
    thread.start()
    assert ready.wait(60), "the app did not start"
    assert served, "the app failed to start"
    yield served[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)


@pytest.fixture(scope="module")
def clean_env_module() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        import os

        for key in [key for key in os.environ if key.startswith("SCRM__")]:
            patch.delenv(key)
        yield


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_the_api_answers_no_5xx_whatever_it_is_sent(server: Served, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {server.key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    statuses: set[int] = set()

    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            statuses.add(case.call_and_validate(headers=headers, checks=[not_a_server_error]).status_code)

        run()
    if mode == GenerationMode.POSITIVE:  # the key was used, and valid requests got through
        assert 401 not in statuses and 200 in statuses, statuses
