"""A Rasa server run and watched by the app: `nlu.mode = "managed"`.

`start()` returns at once: training (only when the project's fingerprint has
changed) and start-up take from seconds to minutes, and the bot answers with
rules meanwhile. The child listens on loopback only, requires a random auth
token, is restarted with backoff if it dies, and dies with its parent (Linux).
Its address, token and model are written to <model dir>/server.json (mode 0600) so
that `scrm nlu parse` can use a server that `scrm serve` already runs.

`swap(model)` serves a new model without downtime, blue/green: a second Rasa starts
with it on another port, clients are pointed at it once it answers, and the old one
stops after its in-flight parses. Rasa's own `PUT /model` is no substitute: it loads
the new model on the server's event loop, and the server answers nothing meanwhile
(18-26 s measured here; nlu/swap.py times it). Another process (`scrm faq publish`)
asks for a swap through nlu/swap.py.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from nlu.faq_training import FaqRows
from nlu.rasa_runtime import ensure_model, rasa_env, rasa_executable
from nlu.settings import NluSettings
from nlu.swap import POLL_S, STATE_FILE, SWAP_FILE, SwapFailed, read_json, write_json

log = logging.getLogger("scrm.nlu.server")

MAX_BACKOFF_S = 30.0
STOP_GRACE_S = 10.0
DRAIN_S = 2.0  # after a swap, the old server finishes the parses it was given (clients time out sooner)

SwapListener = Callable[[str, str, str], None]  # (url, token, model file name) of the server now serving
__all__ = ["ManagedRasa", "SwapFailed", "find_running", "rasa_is_up", "rasa_status"]


class ManagedRasa:
    """Trains if needed, spawns `rasa run --enable-api`, restarts it when it dies, swaps models.

    `faq` holds the FAQ rows trained with the intents (FaqBook.training_rows()).
    """

    def __init__(self, settings: NluSettings, faq: FaqRows = ()) -> None:
        self._settings = settings
        self._faq = tuple(faq)
        self._listeners: list[SwapListener] = []
        self._swap_lock = asyncio.Lock()
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
        return self._settings.model_path() / STATE_FILE

    @property
    def settings(self) -> NluSettings:
        return self._settings

    def on_swap(self, listener: SwapListener) -> None:
        """Call `listener(url, token, model name)` after each swap: e.g. NluClient.use_server."""
        self._listeners.append(listener)

    async def swap(self, model: Path) -> float:
        """Serve `model` from now on, never leaving a moment without a server; returns the seconds it took.

        Raises SwapFailed when the new server does not answer with the model: the old one keeps serving.
        """
        async with self._swap_lock:
            if self._proc is None or not self._ready.is_set():
                raise SwapFailed(f"no Rasa serving to swap from (state {self.state})")
            started = time.monotonic()
            port = _free_port(self._host)
            proc = await self._spawn(model, port)
            if not await self._serves(proc, f"http://{self._host}:{port}", model.name):
                await _stop(proc)
                raise SwapFailed(f"Rasa with {model.name} did not start (see {model.parent / 'rasa-server.log'})")
            old, self._proc, self._port, self.model = self._proc, proc, port, model
            self._write_state_file(proc.pid)
            for listener in self._listeners:
                listener(self.url, self._token, model.name)
            log.info("nlu.managed.swapped model=%s url=%s seconds=%.1f", model.name, self.url,
                     time.monotonic() - started)
            await asyncio.sleep(DRAIN_S)
            await _stop(old)
            return time.monotonic() - started

    async def _answer_swap_requests(self) -> None:
        """Carry out the swaps other processes ask for in swap.json (nlu/swap.py), while this process serves."""
        path = self._settings.model_path() / SWAP_FILE
        while True:
            await asyncio.sleep(POLL_S)
            request = await asyncio.to_thread(read_json, path) if path.exists() else None
            if not request or request.get("state") != "requested" or request.get("owner_pid") != os.getpid():
                continue
            await asyncio.to_thread(write_json, path, request | {"state": "swapping"})
            try:
                seconds = await self.swap(Path(str(request["model"])))
                outcome = {"state": "done", "seconds": round(seconds, 3)}
            except (SwapFailed, OSError) as exc:
                log.error("nlu.managed.swap_failed model=%s reason=%s", request.get("model"), exc)
                outcome = {"state": "failed", "error": str(exc)}
            await asyncio.to_thread(write_json, path, request | outcome)

    async def _serves(self, proc: asyncio.subprocess.Process, url: str, model: str) -> bool:
        """Wait until the child at `url` answers with `model`; False if it exits or takes too long."""
        deadline = time.monotonic() + self._settings.start_timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while proc.returncode is None and time.monotonic() < deadline:
                if await rasa_status(session, url, self._token) == model:
                    return True
                await asyncio.sleep(0.5)
        return False

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
            self.model, _ = await ensure_model(self._settings, faq=self._faq)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported in health, the bot keeps answering with rules
            self.state, self.last_error = "failed", str(exc)
            log.error("nlu.managed.failed reason=%s", exc)
            return
        requests = asyncio.create_task(self._answer_swap_requests(), name="scrm-nlu-swap-requests")
        try:
            await self._serve()
        finally:
            requests.cancel()

    async def _serve(self) -> None:
        """Run the child, and run it again with backoff whenever it dies."""
        assert self.model is not None
        backoff = 1.0
        while True:
            self.state = "starting"
            started = time.monotonic()
            async with self._swap_lock:  # not while a swap changes the port and model
                self._proc = await self._spawn(self.model, self._port)
            code = await self._supervise()
            self._ready.clear()
            self.state, self.restarts = "restarting", self.restarts + 1
            self.last_error = f"rasa exited with code {code}"
            backoff = 1.0 if time.monotonic() - started > 120 else min(backoff * 2, MAX_BACKOFF_S)
            log.error("nlu.managed.exited code=%s restart_in_s=%.0f restarts=%d", code, backoff, self.restarts)
            await asyncio.sleep(backoff)

    async def _supervise(self) -> int | None:
        """Wait until the serving child exits; a child swapped out (stopped on purpose) is not a death."""
        while True:
            proc = self._proc
            assert proc is not None
            watcher = asyncio.create_task(self._mark_ready_when_up(proc))
            try:
                code = await proc.wait()
            finally:
                watcher.cancel()
            async with self._swap_lock:  # a swap in progress decides which child is served
                if proc is self._proc:
                    return code

    async def _spawn(self, model: Path, port: int) -> asyncio.subprocess.Process:
        rasa = rasa_executable(self._settings)
        log_path = model.parent / "rasa-server.log"
        with log_path.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                str(rasa), "run", "--enable-api", f"--auth-token={self._token}", "--model", str(model),
                "--interface", self._host, "--port", str(port),
                cwd=self._settings.project_path(), env=rasa_env(self._settings), stdout=out, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )
        log.info("nlu.managed.spawned pid=%s url=http://%s:%s model=%s log=%s", proc.pid, self._host, port,
                 model.name, log_path)
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
        data = json.dumps({"url": self.url, "token": self._token, "pid": pid, "owner_pid": os.getpid(),
                           "model": str(self.model) if self.model else None})
        fd = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(data)

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        self._ready.clear()
        with contextlib.suppress(FileNotFoundError, OSError, ValueError):
            if json.loads(self.state_file.read_text()).get("owner_pid") == os.getpid():
                self.state_file.unlink()
        if proc is not None:
            await _stop(proc)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def rasa_status(session: aiohttp.ClientSession, url: str, token: str) -> str | None:
    """The file name of the model the server answers with, or None when it does not answer with one."""
    try:
        async with session.get(f"{url}/status", params={"token": token} if token else None) as resp:
            model = (await resp.json()).get("model_file") if resp.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
        return None
    return str(model) if model else None


async def rasa_is_up(session: aiohttp.ClientSession, url: str, token: str) -> bool:
    """True when the server answers /status with a loaded model."""
    return await rasa_status(session, url, token) is not None


async def find_running(settings: NluSettings) -> tuple[str, str] | None:
    """(url, token) of a managed server another process runs, if it is alive."""
    try:
        data = json.loads((settings.model_path() / STATE_FILE).read_text())
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
