"""Putting a new model into service: asked of the managed Rasa another process runs, or loaded with PUT /model.

`scrm faq publish` trains in its own process, but the Rasa that answers customers is the
child of `scrm serve`. The CLI writes a request to <model dir>/swap.json; the serving
process's ManagedRasa watches that file, swaps blue/green (nlu/server.py) and writes the
outcome back into it. Only the process that owns server.json answers, so a request meant
for one server is never carried out by another.

`put_model` is Rasa's own way (`PUT /model {"model_file": ...}`): the old model keeps
answering until the new one is loaded, but the load runs on the server's event loop, so
no parse is answered meanwhile (18-26 s here for the starter model). It serves external
servers behind a load balancer, taken out one at a time, and the benchmark's comparison.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from nlu.settings import NluSettings

STATE_FILE = "server.json"  # the managed server: url, token, pids, model (nlu/server.py writes it)
SWAP_FILE = "swap.json"
POLL_S = 0.5


class SwapFailed(Exception):
    """The new model did not come up (the message says why); the old one keeps serving."""


@dataclass(frozen=True)
class Swapped:
    model: str  # the model file now served
    seconds: float  # the swap itself, measured by the server that did it
    waited_s: float  # from the request to the answer, measured by the caller


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all (a reader never sees half a file); mode 0600, like server.json."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data))
    os.replace(temporary, path)


def serving_owner(settings: NluSettings) -> int | None:
    """The pid of the live process whose managed Rasa serves from this model dir, or None."""
    data = read_json(settings.model_path() / STATE_FILE) or {}
    try:
        owner, child = int(data["owner_pid"]), int(data["pid"])
        os.kill(owner, 0)
        os.kill(child, 0)
    except (KeyError, TypeError, ValueError, OSError):
        return None
    return owner


async def request_swap(settings: NluSettings, model: Path, timeout_s: float | None = None) -> Swapped:
    """Ask the managed Rasa that another process runs to serve `model`, and wait until it does.

    Raises SwapFailed when no managed Rasa runs, when it could not start the new model (the old
    one keeps serving), or when it does not answer within `timeout_s` (default: nlu.start_timeout_s).
    """
    owner = await asyncio.to_thread(serving_owner, settings)
    if owner is None:
        raise SwapFailed(f"no managed Rasa is serving from {settings.model_path()} (scrm serve starts one)")
    path, request_id = settings.model_path() / SWAP_FILE, uuid.uuid4().hex
    request = {"id": request_id, "model": str(model.resolve()), "owner_pid": owner, "state": "requested"}
    started = time.monotonic()
    await asyncio.to_thread(write_json, path, request)
    deadline = started + (timeout_s or settings.start_timeout_s)
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        answer = await asyncio.to_thread(read_json, path) or {}
        if answer.get("id") != request_id:
            raise SwapFailed("another swap was requested meanwhile")
        if answer.get("state") == "done":
            return Swapped(model.name, float(answer.get("seconds") or 0.0), time.monotonic() - started)
        if answer.get("state") == "failed":
            raise SwapFailed(str(answer.get("error") or "the swap failed"))
    raise SwapFailed(f"the managed Rasa (pid {owner}) did not swap within {deadline - started:.0f} s")


async def put_model(url: str, token: str, model: Path, timeout_s: float = 600.0) -> float:
    """Load `model` into the Rasa at `url` with PUT /model; seconds it took. Raises SwapFailed.

    The path is the server's: it must see the file at the same place.
    """
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.put(
            f"{url.rstrip('/')}/model", params={"token": token} if token else None,
            json={"model_file": str(model.resolve())},
        ) as resp:
            if resp.status != 204:
                raise SwapFailed(f"Rasa at {url} refused {model.name}: HTTP {resp.status} {(await resp.text())[:300]}")
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise SwapFailed(f"Rasa at {url} did not load {model.name}: {exc!r}") from exc
    return time.monotonic() - started
