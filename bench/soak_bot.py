"""The soak's bot and its world: `scrm serve` processes on throwaway servers, the fake API they call, `scrm` itself.

One web process (callbacks, /healthz; with `--nlu rasa` it also runs the managed Rasa) and
several worker processes (inbox, outbox, scheduler), all from `.venv/bin/scrm serve`, set up
through SCRM__SECTION__KEY variables as an operator would. The workers reach the web
process's Rasa as an external one (fixed port and token), so a killed worker does not take
Rasa with it and there is one Rasa to kill. The fake WeCom/OA API runs in the soak's own
process and records what the bot sent (`SoakFake`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.flows import ReplyCounter  # noqa: E402
from bench.ingest import bot_environment, wait_for_port  # noqa: E402
from bench.servers import free_port  # noqa: E402
from bot.sandbox.fake_kf import Sent  # noqa: E402
from nlu.rasa_runtime import ensure_model  # noqa: E402
from nlu.settings import NluSettings  # noqa: E402

KF = "wkSoakKf"
SCRM = ROOT / ".venv/bin/scrm"
API_TIMEOUT_S = 5.0  # bot/wechat_api.py WeChatApi's timeout (not a setting): the slow API answers later
MARKETING = re.compile(r"^【(培育|推送)】")  # nurture and push texts: a customer does not take them for a reply


# ---------------------------------------------------------------- the fake API


class SoakFake(ReplyCounter):
    """The fake WeCom/OA API, waking customers who wait for a reply (nurture and push texts are not
    replies) and counting the kf resends it absorbed."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[str, list[str]] = {}
        self.resends_absorbed = 0  # kf calls whose msgid was already delivered: WeCom drops them

    def _deliver(self, path: str, body: dict[str, Any]) -> str:
        if body.get("msgid") and str(body["msgid"]) in self.seen_msgids:
            self.resends_absorbed += 1
        return super()._deliver(path, body)

    def counts(self, sent: Sent) -> bool:
        return not MARKETING.match(sent.text)

    def received(self, user: str, sent: Sent) -> None:
        self.texts.setdefault(user, []).append(sent.text)

    def replies_since(self, user: str, seen: int) -> list[str]:
        return self.texts.get(user, [])[seen:]


async def serve_fake(fake: SoakFake) -> tuple[web.AppRunner, str]:
    """The fake on a free port; (its runner, its API base URL)."""
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/cgi-bin"


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class BotConfig:
    """What every process shares, and how NLU is reached."""

    store_url: str
    redis_url: str
    fake_base: str
    flows_dir: Path
    nlu: str  # rasa | rules
    model_dir: Path | None = None  # the soak's own copy of the model: its server.json and Rasa log stay in the run
    rasa_port: int = field(default_factory=free_port)
    rasa_token: str = field(default_factory=lambda: secrets.token_hex(16))

    def environment(self) -> dict[str, str]:
        """The settings as SCRM__ variables: the throwaway servers, the fake API, and the soak's policy.

        Automatic handoffs are off (no rep answers in the soak: a handed-off kf chat is the rep's and
        the bot's replies would rightly be refused); quiet hours are off and the daily cap is high so
        nurture and the push are sent whatever the time of day."""
        env = bot_environment(self.store_url, 0, self.fake_base)
        env.update({
            "SCRM__REDIS__URL": self.redis_url,
            "SCRM__FLOWS__DIRECTORY": str(self.flows_dir),
            "SCRM__LOGGING__LEVEL": "WARNING",
            "SCRM__NURTURE__QUIET_FROM": "00:00", "SCRM__NURTURE__QUIET_UNTIL": "00:00",
            "SCRM__NURTURE__CAP_PER_DAY": "50", "SCRM__NURTURE__INTERVAL_S": "2",
            "SCRM__HANDOFF__INTENTS": "[]", "SCRM__HANDOFF__LOW_CONFIDENCE": "0",
            "SCRM__HANDOFF__HIGH_VALUE__KEYWORDS": "[]", "SCRM__HANDOFF__HIGH_VALUE__SOCIAL_MIN": "1000000",
            "SCRM__HANDOFF__HIGH_VALUE__AMOUNT_MIN": "1000000000",
        })
        return env

    def role_environment(self, role: str, port: int) -> dict[str, str]:
        env = {**self.environment(), "SCRM__SERVER__PORT": str(port)}
        if self.nlu == "rules":
            env["SCRM__NLU__MODE"] = "rules"
        elif role == "web":
            env.update({"SCRM__NLU__MODE": "managed", "SCRM__NLU__MANAGED_PORT": str(self.rasa_port),
                        "SCRM__NLU__AUTH_TOKEN": self.rasa_token})
            if self.model_dir is not None:
                env["SCRM__NLU__MODEL_DIR"] = str(self.model_dir)
        else:
            env.update({"SCRM__NLU__MODE": "external", "SCRM__NLU__RASA_URL": f"http://127.0.0.1:{self.rasa_port}",
                        "SCRM__NLU__AUTH_TOKEN": self.rasa_token})
        return env


async def soak_model(directory: Path) -> Path:
    """The current NLU model, trained into nlu/models only when stale (kept for the next run), copied into
    `directory` for the soak's Rasa."""
    model, _ = await ensure_model(NluSettings())
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model, directory / model.name)
    return directory


# ---------------------------------------------------------------- processes


@dataclass
class BotProcess:
    role: str
    name: str
    port: int
    process: subprocess.Popen[bytes]


class Bot:
    """`scrm serve --role web` and `--role worker` processes, each logging to its own file."""

    def __init__(self, config: BotConfig, logs: Path, workers: int) -> None:
        self.config = config
        self.logs = logs
        self.worker_count = workers
        self.web: BotProcess | None = None
        self.workers: list[BotProcess] = []
        self.started = 0

    @property
    def base(self) -> str:
        assert self.web is not None
        return f"http://127.0.0.1:{self.web.port}"

    def _spawn(self, role: str) -> BotProcess:
        self.started += 1
        port = free_port()
        name = "web" if role == "web" else f"worker{self.started}"
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen([str(SCRM), "serve", "--role", role, "--no-migrate"],
                                       env=self.config.role_environment(role, port), stdout=log,
                                       stderr=subprocess.STDOUT)
        return BotProcess(role, name, port, process)

    async def start(self) -> None:
        """The web process first (it publishes the flows on a first start), then the workers."""
        self.web = self._spawn("web")
        await wait_for_port(self.web.port, self.web.process, timeout_s=120)
        self.workers = [self._spawn("worker") for _ in range(self.worker_count)]
        for worker in self.workers:
            await wait_for_port(worker.port, worker.process, timeout_s=120)

    async def kill_and_restart_worker(self, pause_s: float) -> str:
        """SIGKILL the first worker, as the kernel's OOM killer would; a new one starts `pause_s` later."""
        victim = self.workers.pop(0)
        victim.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait)
        await asyncio.sleep(pause_s)
        replacement = self._spawn("worker")
        self.workers.append(replacement)
        await wait_for_port(replacement.port, replacement.process, timeout_s=120)
        return f"{victim.name} (pid {victim.process.pid}) killed, {replacement.name} started {pause_s:g} s later"

    def exited(self) -> list[str]:
        """Processes that died on their own (not the one the soak killed)."""
        running = ([self.web] if self.web else []) + self.workers
        return [f"{p.name} exited with {p.process.returncode}" for p in running if p.process.poll() is not None]

    async def stop(self) -> None:
        """SIGTERM every process and wait for each (in a thread: the fake they may still call runs in this loop)."""
        running = ([self.web] if self.web else []) + self.workers
        for bot_process in running:
            if bot_process.process.poll() is None:
                bot_process.process.terminate()
        for bot_process in running:
            try:
                await asyncio.to_thread(bot_process.process.wait, 30)
            except subprocess.TimeoutExpired:
                bot_process.process.kill()
                await asyncio.to_thread(bot_process.process.wait)


# ---------------------------------------------------------------- the web process's /healthz


@dataclass(frozen=True)
class HealthSample:
    at: float  # time.time()
    answered: bool  # 200 and not "down"
    down: frozenset[str]  # the parts /healthz says are not ok: store, redis, nlu
    rasa_pid: int | None
    rasa_state: str
    degraded: tuple[str, ...] = ()  # what /healthz said is wrong

    @property
    def parts_ok(self) -> bool:
        return not self.down

    def line(self) -> str:
        return json.dumps({"at": round(self.at, 2), "answered": self.answered, "down": sorted(self.down),
                           "rasa_pid": self.rasa_pid, "rasa_state": self.rasa_state, "degraded": self.degraded},
                          ensure_ascii=False)


def health_sample(status: int, report: dict[str, Any]) -> HealthSample:
    nlu = report.get("nlu") or {}
    managed = nlu.get("managed") or {}
    faults = {str(fault.get("component")) for fault in report.get("faults") or () if isinstance(fault, dict)}
    down = {part for part, ok in (("store", (report.get("store") or {}).get("ok") and "store" not in faults),
                                  ("redis", (report.get("shared_state") or {}).get("ok") and "redis" not in faults),
                                  ("nlu", nlu.get("status") == "ok")) if not ok}
    degraded = tuple(str(reason) for reason in report.get("degraded") or ())
    if not (report.get("store") or {}).get("ok", True):
        degraded += (f"store: {report['store'].get('error', '')}",)
    return HealthSample(time.time(), status == 200 and report.get("status") != "down", frozenset(down),
                        managed.get("pid"), str(managed.get("state") or ""), degraded)


class HealthWatch:
    """Polls the web process's /healthz twice a second for the whole run; the samples answer questions later."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.samples: list[HealthSample] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="soak-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def sample(self, http: aiohttp.ClientSession) -> HealthSample:
        try:
            async with http.get(f"{self.base}/healthz") as response:
                return health_sample(response.status, await response.json())
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return HealthSample(time.time(), False, frozenset({"store", "redis", "nlu"}), None, "")

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                self.samples.append(await self.sample(http))
                await asyncio.sleep(0.5)

    def save(self, path: Path) -> None:
        """One JSON line per sample: what /healthz said during the run (kept with --keep)."""
        path.write_text("".join(sample.line() + "\n" for sample in self.samples), encoding="utf-8")

    def rasa_back(self, killed: int, start: float) -> HealthSample | None:
        """The first sample after `start` showing a new Rasa ready."""
        return next((s for s in self.samples if s.at >= start and s.rasa_pid not in (None, killed)
                     and s.rasa_state == "ready"), None)

    def latest(self) -> HealthSample | None:
        return self.samples[-1] if self.samples else None

    def answering_from(self, moment: float) -> float | None:
        """The first sample at or after `moment` with /healthz 200 and not "down"."""
        return next((s.at for s in self.samples if s.at >= moment and s.answered), None)

    def ok_again(self, part: str, start: float, end: float) -> float | None:
        """After `start`: the first sample with `part` ok following one (before `end`) where it was not;
        None when /healthz never showed it down."""
        bad = next((s.at for s in self.samples if start <= s.at <= end and part in s.down), None)
        if bad is None:
            return None
        return next((s.at for s in self.samples if s.at > bad and part not in s.down), None)


async def wait_rasa_ready(health: HealthWatch, bot: Bot, timeout_s: float = 900) -> None:
    """Until the web process's Rasa answers (a stale model is trained first: minutes)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while time.monotonic() < deadline:
            if bot.exited():
                raise RuntimeError(f"{', '.join(bot.exited())}; see the logs in {bot.logs}")
            sample = await health.sample(http)
            if sample.parts_ok:
                return
            if sample.rasa_state == "failed":
                raise RuntimeError(f"the bot's Rasa failed; see {bot.logs / 'web.log'}")
            await asyncio.sleep(1)
    raise TimeoutError("the bot's Rasa did not become ready")


def kill_rasa(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- scrm, the command line


async def scrm(env: dict[str, str], *args: str) -> str:
    """Run `scrm ARGS…` as an admin would, against the soak's store; its output, or RuntimeError."""
    process = await asyncio.create_subprocess_exec(str(SCRM), *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"scrm {' '.join(args)} exited with {process.returncode}:\n{text}")
    return text
