"""A Rasa server run and watched by the app: `nlu.mode = "managed"`.

`start()` returns at once: training (only when the project's fingerprint has
changed) and start-up take from seconds to minutes, and the bot answers with
rules meanwhile. The child listens on loopback only, requires a random auth
token, is restarted with backoff if it dies, and dies with its parent (Linux).
Its address and token are written to <model dir>/server.json (mode 0600) so
that `scrm nlu parse` can use a server that `scrm serve` already runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from nlu.rasa_runtime import ensure_model, rasa_env, rasa_executable
from nlu.settings import NluSettings

log = logging.getLogger("scrm.nlu.server")

MAX_BACKOFF_S = 30.0
STOP_GRACE_S = 10.0


class ManagedRasa:
    """Trains if needed, spawns `rasa run --enable-api`, and restarts it when it dies."""

    def __init__(self, settings: NluSettings) -> None:
        self._settings = settings
        self._token = settings.auth_token.get_secret_value() or secrets.token_hex(24)
        self._host = settings.managed_host
        self._port = settings.managed_port or _free_port(self._host)
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self.state = "stopped"  # training, starting, ready, restarting, failed, stopped
        self.restarts = 0
        self.last_error = ""
        self.model: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def token(self) -> str:
        return self._token

    @property
    def state_file(self) -> Path:
        return self._settings.model_path() / "server.json"

    async def start(self) -> None:
        """Begin training/starting in the background; never blocks on Rasa."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="scrm-nlu-managed-rasa")

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """True once Rasa answers; False on timeout or when it cannot start (see last_error)."""
        waiter = asyncio.create_task(self._ready.wait())
        pending = {waiter} | ({self._task} if self._task else set())
        _done, _ = await asyncio.wait(pending, timeout=timeout_s or self._settings.start_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        return self._ready.is_set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._terminate()
        self.state = "stopped"

    def status(self) -> dict[str, Any]:
        pid = self._proc.pid if self._proc and self._proc.returncode is None else None
        return {"state": self.state, "url": self.url, "pid": pid, "restarts": self.restarts,
                "model": self.model.name if self.model else None, "last_error": self.last_error}

    async def _run(self) -> None:
        try:
            self.state = "training"
            self.model, _ = await ensure_model(self._settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported in health, the bot keeps answering with rules
            self.state, self.last_error = "failed", str(exc)
            log.error("nlu.managed.failed reason=%s", exc)
            return
        backoff = 1.0
        while True:
            self.state = "starting"
            started = time.monotonic()
            self._proc = await self._spawn(self.model)
            watcher = asyncio.create_task(self._mark_ready_when_up(self._proc))
            try:
                code = await self._proc.wait()
            finally:
                watcher.cancel()
            self._ready.clear()
            self.state, self.restarts = "restarting", self.restarts + 1
            self.last_error = f"rasa exited with code {code}"
            backoff = 1.0 if time.monotonic() - started > 120 else min(backoff * 2, MAX_BACKOFF_S)
            log.error("nlu.managed.exited code=%s restart_in_s=%.0f restarts=%d", code, backoff, self.restarts)
            await asyncio.sleep(backoff)

    async def _spawn(self, model: Path) -> asyncio.subprocess.Process:
        rasa = rasa_executable(self._settings)
        log_path = model.parent / "rasa-server.log"
        with log_path.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                str(rasa), "run", "--enable-api", f"--auth-token={self._token}", "--model", str(model),
                "--interface", self._host, "--port", str(self._port),
                cwd=self._settings.project_path(), env=rasa_env(self._settings), stdout=out, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )
        log.info("nlu.managed.spawned pid=%s url=%s model=%s log=%s", proc.pid, self.url, model.name, log_path)
        return proc

    async def _mark_ready_when_up(self, proc: asyncio.subprocess.Process) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while proc.returncode is None:
                if await rasa_is_up(session, self.url, self._token):
                    self._ready.set()
                    self.state, self.last_error = "ready", ""
                    self._write_state_file(proc.pid)
                    log.info("nlu.managed.ready url=%s pid=%s", self.url, proc.pid)
                    return
                await asyncio.sleep(0.5)

    def _write_state_file(self, pid: int) -> None:
        data = json.dumps({"url": self.url, "token": self._token, "pid": pid, "owner_pid": os.getpid()})
        fd = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(data)

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        self._ready.clear()
        with contextlib.suppress(FileNotFoundError, OSError, ValueError):
            if json.loads(self.state_file.read_text()).get("owner_pid") == os.getpid():
                self.state_file.unlink()
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def rasa_is_up(session: aiohttp.ClientSession, url: str, token: str) -> bool:
    """True when the server answers /status with a loaded model."""
    try:
        async with session.get(f"{url}/status", params={"token": token} if token else None) as resp:
            return resp.status == 200 and bool((await resp.json()).get("model_file"))
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return False


async def find_running(settings: NluSettings) -> tuple[str, str] | None:
    """(url, token) of a managed server another process runs, if it is alive."""
    try:
        data = json.loads((settings.model_path() / "server.json").read_text())
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        if await rasa_is_up(session, data["url"], data["token"]):
            return str(data["url"]), str(data["token"])
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
