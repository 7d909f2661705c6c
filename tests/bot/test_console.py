"""The console of `scrm serve`: silent while idle, a line or two per customer message, JSON lines masked.

The server runs as a real subprocess with the shipped config.yaml (sandbox on, rules instead of
Rasa) on a fresh SQLite store; a thread collects what it prints on stdout and stderr. Idleness
can only be watched on the wall clock: one quiet stretch of a little over the scheduler's
5-second tick.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bench.ingest import free_port
from bot.logs import MaskingFormatter, configure_logging
from bot.settings import SettingsError, load_settings

SCRM = Path(sys.executable).with_name("scrm")
IDLE_S = 6.5  # more than one tick of the 5-second scheduler jobs
STARTUP_S = 5  # at most this long for the last start-up lines, written after /healthz answers
PHONE, MASKED = "13812345678", "138****5678"


class Console:
    """`scrm serve` in a subprocess, with every line it prints (stdout and stderr, in order)."""

    def __init__(self, tmp_path: Path, **settings: str) -> None:
        self.port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("SCRM")}
        env.update({
            "SCRM__STORE__URL": f"sqlite+aiosqlite:///{tmp_path / 'scrm.db'}",
            "SCRM__SERVER__PORT": str(self.port),
            "SCRM__SANDBOX__ENABLED": "true",
            "SCRM__SANDBOX__API_PORT": "0",
            "SCRM__NLU__MODE": "rules",
            "SCRM__REDIS__URL": "",
            "PYTHONUNBUFFERED": "1",
            **settings,
        })
        self.process = subprocess.Popen(
            [str(SCRM), "serve"], env=env, cwd=tmp_path, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self.terminated = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.base = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    async def started(self, http: aiohttp.ClientSession) -> None:
        """Until /healthz answers and the start-up lines are out: none for half a second after it listens."""
        for _ in range(300):
            assert self.process.poll() is None, "\n".join(self.lines)
            try:
                async with http.get(f"{self.base}/healthz") as response:
                    await response.read()
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        else:
            raise TimeoutError("scrm serve did not start:\n" + "\n".join(self.lines))
        seen = -1
        for _ in range(int(STARTUP_S / 0.5)):
            if len(self.lines) == seen:
                return
            seen = len(self.lines)
            await asyncio.sleep(0.5)

    async def customer_says(self, http: aiohttp.ClientSession, user: str, text: str) -> None:
        """One kf message through the sandbox simulator, until the bot's answer reached the fake WeCom."""
        before = await self._answers(http, user)
        async with http.post(f"{self.base}/sandbox/say", json={"user": user, "text": text, "channel": "kf"}) as sent:
            assert sent.status == 200
        for _ in range(100):
            if await self._answers(http, user) > before:
                await asyncio.sleep(0.3)  # for a line written just after the answer
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("the bot did not answer:\n" + "\n".join(self.lines))

    async def _answers(self, http: aiohttp.ClientSession, user: str) -> int:
        async with http.get(f"{self.base}/sandbox/messages", params={"user": user}) as response:
            return len((await response.json())["messages"])

    def terminate(self) -> None:
        """SIGTERM, once: the server shuts down cleanly (and prints what it says then)."""
        if not self.terminated and self.process.poll() is None:
            self.process.terminate()
        self.terminated = True

    def stop(self) -> None:
        """Until it has exited and every line it printed has been read."""
        self.terminate()
        self.process.wait(timeout=60)  # a loaded machine (the suite in parallel) is slow to shut down
        self.reader.join(timeout=5)


@dataclass
class Servers:
    text: Console
    json: Console


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Both started at once, so that one starts while the other is watched idling."""
    started = Servers(
        text=Console(tmp_path_factory.mktemp("text")),
        # SQL with its parameters on the console: the customer's text (and phone number) reaches the log
        json=Console(tmp_path_factory.mktemp("json"), SCRM__LOGGING__FORMAT="json",
                     SCRM__LOGGING__LEVELS='{"sqlalchemy.engine": "INFO"}'),
    )
    yield started
    for console in (started.text, started.json):
        console.terminate()  # both at once: each takes a moment to finish
    for console in (started.text, started.json):
        console.stop()


async def test_an_idle_server_prints_nothing_and_a_message_a_line_or_two(servers: Servers) -> None:
    console = servers.text
    async with aiohttp.ClientSession() as http:
        await console.started(http)
        mark = len(console.lines)
        await asyncio.sleep(IDLE_S)
        assert console.lines[mark:] == []

        first = len(console.lines)
        await console.customer_says(http, "wmConsole", "你好")
        second = len(console.lines)
        await console.customer_says(http, "wmConsole", "价格多少")
    first_lines, second_lines = console.lines[first:second], console.lines[second:]
    assert 1 <= len(first_lines) <= 6, first_lines  # the first also fetches access tokens, once
    assert 1 <= len(second_lines) <= 2, second_lines
    assert not [line for line in console.lines if "apscheduler" in line or "alembic" in line]


async def test_json_lines_parse_and_keep_phone_numbers_masked(servers: Servers) -> None:
    console = servers.json
    async with aiohttp.ClientSession() as http:
        await console.started(http)
        await console.customer_says(http, "wmJson", f"我的电话 {PHONE}")
    console.stop()
    records = [json.loads(line) for line in console.lines]
    assert records and all({"time", "level", "logger", "message"} <= set(record) for record in records)
    said = {record["message"].split()[0] for record in records if record["logger"] == "scrm.serve"}
    assert {"store.migrated", "serve.listening", "serve.stopping"} <= said  # the console's words, as JSON too
    assert not [line for line in console.lines if PHONE in line]
    assert any(MASKED in record["message"] for record in records)


def test_levels_per_logger_over_the_quiet_defaults() -> None:
    root, saved = logging.getLogger(), logging.getLogger().handlers[:]
    try:
        configure_logging("INFO", levels={"scrm.sender": "DEBUG", "aiohttp.access": "INFO"})
        assert logging.getLogger("scrm.sender").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("scrm.worker").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("apscheduler.executors.default").isEnabledFor(logging.INFO)
        assert logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = saved
        for name in ("scrm.sender", "aiohttp.access", "apscheduler", "alembic"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.captureWarnings(False)


def test_json_records_carry_the_exception() -> None:
    try:
        raise ValueError("token=abc123 for 13900001111")
    except ValueError:
        record = logging.LogRecord("scrm.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(MaskingFormatter(as_json=True).format(record))
    assert data["level"] == "ERROR" and data["logger"] == "scrm.test" and data["message"] == "failed"
    assert "ValueError: token=*** for 139****1111" in data["exception"]


@pytest.mark.usefixtures("clean_env")
def test_format_json_and_its_older_spelling() -> None:
    os.environ["SCRM__LOGGING__FORMAT"] = "json"
    assert load_settings().logging.json_format
    del os.environ["SCRM__LOGGING__FORMAT"]
    os.environ["SCRM__LOGGING__JSON"] = "true"
    assert load_settings().logging.format == "json"
    os.environ["SCRM__LOGGING__LEVELS"] = '{"scrm.sender": "loud"}'
    with pytest.raises(SettingsError, match=r"logging\.levels\.scrm\.sender: .*DEBUG, INFO"):
        load_settings()
