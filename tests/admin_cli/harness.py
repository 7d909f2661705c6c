"""`scrm` through Click's runner against one store, and that store for making data with the library.

Each CLI test module subclasses `ScrmRunner` with the command group it drives and the data
helpers it needs; the running, the JSON and the store access are here once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from aiohttp import web
from click.testing import CliRunner, Result
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.main import cli
from crm_store.db import create_engine, session_factory

T = TypeVar("T")


class ScrmRunner:
    command: tuple[str, ...] = ()  # the group every call starts with, e.g. ("push",)
    failure_exit: int | None = None  # what `ok=False` expects: this exit code, or any but 0 (None); unchecked: -1

    def __init__(self, store_url: str, **env: str) -> None:
        self.store_url = store_url
        self.env = {"SCRM__STORE__URL": store_url, "SCRM__NLU__MODE": "rules", "SCRM__REDIS__URL": "", **env}

    def __call__(self, *args: str, ok: bool = True, env: dict[str, str] | None = None) -> Result:
        result = CliRunner().invoke(cli, [*self.command, *args], env=self.env | (env or {}))
        if ok:
            assert result.exit_code == 0, result.output
        elif self.failure_exit is None:
            assert result.exit_code != 0, result.output
        elif self.failure_exit >= 0:
            assert result.exit_code == self.failure_exit, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async def go() -> T:
            engine = create_engine(self.store_url)
            try:
                async with session_factory(engine)() as session, session.begin():
                    return await work(session)
            finally:
                await engine.dispose()

        return asyncio.run(go())

    def count(self, model: type[Any]) -> int:
        async def work(session: AsyncSession) -> int:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

        return self.run(work)


@contextmanager
def served(*apps: web.Application) -> Iterator[list[str]]:
    """Each app on a free loopback port, in a thread of its own (the CLI under test runs its own event
    loop); their base URLs, e.g. the fake WeChat API's `…/cgi-bin` is `served(fake.app())[0] + "/cgi-bin"`."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runners = [web.AppRunner(app, access_log=None) for app in apps]

    async def start(runner: web.AppRunner) -> str:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    try:
        yield [asyncio.run_coroutine_threadsafe(start(runner), loop).result(10) for runner in runners]
    finally:
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
