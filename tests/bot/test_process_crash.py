"""A real crash: the server process is killed (SIGKILL) after storing callbacks and before processing them.

A worker process started afterwards processes each stored message exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bench.ingest import (
    CORP,
    OA_APP,
    OA_SECRET,
    SECRETS,
    bot_environment,
    build_callbacks,
    free_port,
    wait_for_port,
)
from bot.sandbox.fake_wechat import FakeWeChat
from tests.conftest import Backend

SCRM = Path(sys.executable).with_name("scrm")


async def wait_drained(port: int) -> None:
    """Until the worker reports nothing left in the inbox or the outbox."""
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                health = await response.json()
            sender = health["sender"]
            if health["inbox"]["backlog"] == 0 and sender["backlog"] == 0 and sender["finished_last_minute"]:
                return
            await asyncio.sleep(0.1)
    raise TimeoutError("the worker did not drain")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_killed_server_loses_nothing_and_repeats_nothing(backend: Backend) -> None:
    fake = FakeWeChat(CORP, list(SECRETS.values()), OA_APP, OA_SECRET)
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    fake_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", fake_port).start()
    web_port = free_port()
    env = bot_environment(backend.store_url, web_port, f"http://127.0.0.1:{fake_port}/cgi-bin")
    env["SCRM__REDIS__URL"] = backend.redis_url
    server = subprocess.Popen([str(SCRM), "serve", "--role", "web"], env=env, stdout=subprocess.DEVNULL)
    worker: subprocess.Popen[bytes] | None = None
    try:
        await wait_for_port(web_port, server)
        callbacks = build_callbacks(fake, 20)
        async with aiohttp.ClientSession() as http:
            for path, query, body in callbacks + callbacks:  # every callback twice, as WeChat retries
                async with http.post(f"http://127.0.0.1:{web_port}{path}", params=query, data=body) as response:
                    assert response.status == 200
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        assert fake.sent == []
        worker_port = free_port()
        worker = subprocess.Popen([str(SCRM), "serve", "--role", "worker", "--port", str(worker_port)], env=env,
                                  stdout=subprocess.DEVNULL)
        await wait_for_port(worker_port, worker)
        await wait_drained(worker_port)
        recipients = [sent.to for sent in fake.sent]
        assert len(recipients) == 20 and len(set(recipients)) == 20
    finally:
        for process in (server, worker):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        await runner.cleanup()
