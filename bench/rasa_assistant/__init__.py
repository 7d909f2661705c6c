"""The plain Rasa assistant the conversation benchmark compares the bot with: train it, serve it.

This folder is its Rasa project, minus what it shares with the bot's NLU: at train time the
project is assembled in a temporary directory from these files plus nlu/project's pipeline,
domain (intents, entities), training data and jieba dictionary, so both parse alike. The model
is cached in bench/.cache/assistant-<fingerprint>.tar.gz and retrained when any source changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import yaml

from bench.ingest import free_port
from nlu.rasa_runtime import REQUIREMENTS, rasa_env
from nlu.server import rasa_is_up
from nlu.settings import NluSettings

ASSISTANT = Path(__file__).resolve().parent
ROOT = ASSISTANT.parent.parent
CACHE = ROOT / "bench" / ".cache"
NLU_PROJECT = ROOT / "nlu" / "project"
RASA = ROOT / ".venv-rasa" / "bin" / "rasa"


def assistant_fingerprint() -> str:
    """Changes with the assistant's files, the NLU project it borrows, or the Rasa version."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    sources = [ASSISTANT, NLU_PROJECT / "config.yml", NLU_PROJECT / "domain.yml", NLU_PROJECT / "data",
               NLU_PROJECT / "jieba"]
    for source in sources:
        files = source.rglob("*") if source.is_dir() else [source]
        for path in sorted(p for p in files if p.is_file() and p.suffix not in (".py", ".pyc")):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_assistant_project(target: Path) -> None:
    """The assistant's files plus the NLU project's data, domain and pipeline, in `target`."""
    shutil.copytree(ASSISTANT / "data", target / "data")
    shutil.copytree(NLU_PROJECT / "data", target / "data" / "nlu")
    shutil.copytree(NLU_PROJECT / "jieba", target / "jieba")
    (target / "domain").mkdir()
    shutil.copy(NLU_PROJECT / "domain.yml", target / "domain" / "nlu.yml")
    shutil.copy(ASSISTANT / "domain.yml", target / "domain" / "assistant.yml")
    config = yaml.safe_load((NLU_PROJECT / "config.yml").read_text(encoding="utf-8"))
    config.update(yaml.safe_load((ASSISTANT / "config.yml").read_text(encoding="utf-8")))
    (target / "config.yml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")


def ensure_assistant_model() -> Path:
    """bench/.cache/assistant-<fingerprint>.tar.gz, trained with `rasa train` when missing."""
    name = f"assistant-{assistant_fingerprint()}"
    model = CACHE / f"{name}.tar.gz"
    if model.exists():
        return model
    CACHE.mkdir(parents=True, exist_ok=True)
    log_path = CACHE / "assistant-train.log"
    print(f"training the plain Rasa assistant (log: {log_path})...", file=sys.stderr, flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rasa-assistant-") as work, log_path.open("wb") as log:
        build_assistant_project(Path(work))
        code = subprocess.call(
            [str(RASA), "train", "--config", "config.yml", "--domain", "domain", "--data", "data",
             "--out", str(CACHE), "--fixed-model-name", name],
            cwd=work, env=rasa_env(NluSettings(model_dir=str(CACHE))), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    if code != 0 or not model.exists():
        raise RuntimeError(f"rasa train exited with {code}; see {log_path}")
    print(f"trained in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    for old in CACHE.glob("assistant-*.tar.gz"):
        if old != model:
            old.unlink()
    return model


@contextlib.asynccontextmanager
async def running_assistant(model: Path) -> AsyncIterator[tuple[str, int]]:
    """`rasa run --enable-api` with the REST channel, on loopback; yields its URL and pid."""
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    with (CACHE / "assistant-server.log").open("wb") as log:
        server = subprocess.Popen(
            [str(RASA), "run", "--enable-api", f"--auth-token={token}", "--model", str(model),
             "--credentials", str(ASSISTANT / "credentials.yml"), "--interface", "127.0.0.1", "--port", str(port)],
            cwd=CACHE, env=rasa_env(NluSettings(model_dir=str(CACHE))), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            deadline = time.monotonic() + 300
            while not await rasa_is_up(http, url, token):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the plain Rasa assistant did not start; see {CACHE / 'assistant-server.log'}")
                await asyncio.sleep(0.5)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(timeout=60)
