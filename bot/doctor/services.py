"""The deployment's own services: the store and its migration, Redis, the Rasa model and server.

Every check only reads: the store is not migrated (nor a missing SQLite file created), no
model is trained, no server started.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from alembic.script import ScriptDirectory
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from bot.doctor.config import env_name
from bot.doctor.report import Check, fail, ok, warn
from crm_store.db import create_engine
from crm_store.migrate import alembic_config, current_revision, head_revision, is_embedded
from nlu.faq_training import FaqRows
from nlu.rasa_runtime import RasaUnavailable, model_file, rasa_executable
from nlu.server import find_running
from nlu.settings import NluSettings
from nlu.training_data import TrainingDataError, load_project

TIMEOUT_S = 10.0
MODEL_NAME = re.compile(r"nlu-[0-9a-f]{16}\.tar\.gz")  # what `scrm nlu train` names a model: its data's fingerprint
MIGRATE = "run: scrm migrate (scrm serve also does at start, unless --no-migrate)"


async def store_check(url: str) -> list[Check]:
    shown = make_url(url).render_as_string(hide_password=True)
    database = make_url(url).database
    if is_embedded(url) and database and database != ":memory:" and not Path(database).exists():
        return [fail("store", f"{shown}: no database file", f"{MIGRATE}; it creates the file")]
    engine = create_engine(url)
    try:
        current = await asyncio.wait_for(current_revision(engine), TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any way of not answering is the same finding
        cause = getattr(exc, "orig", None) or exc
        return [fail("store", f"{shown} cannot be read: {type(cause).__name__}: {cause}",
                     f"check store.url ({env_name('store.url')}): host, port, database, user and password, "
                     "and that the database server runs and lets this machine in")]
    finally:
        await engine.dispose()
    head = head_revision()
    if current == head:
        return [ok("store", f"{shown} at migration {head}, the newest")]
    if current is None:
        return [fail("store", f"{shown} has no schema yet (this version needs migration {head})", MIGRATE)]
    if _known(current):
        return [fail("store", f"{shown} is at migration {current}, this version needs {head}", MIGRATE)]
    return [fail("store", f"{shown} is at migration {current}, which this version does not know (it needs {head})",
                 "newer code migrated it: run that version of scrm, not this one")]


def _known(revision: str) -> bool:
    script = ScriptDirectory.from_config(alembic_config(""))
    return any(known.revision == revision for known in script.walk_revisions())


async def redis_check(url: str) -> list[Check]:
    if not url:
        return [ok("redis", "not configured: state is kept in-process, so run one bot process only")]
    shown = _without_password(url)
    client = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        await asyncio.wait_for(client.ping(), TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any way of not answering is the same finding
        return [fail("redis", f"{shown} does not answer: {exc}",
                     f"check redis.url ({env_name('redis.url')}): host, port, password and db, and that Redis "
                     "runs and lets this machine in")]
    finally:
        await client.aclose()
    return [ok("redis", f"{shown} answers")]


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


async def nlu_checks(settings: NluSettings, http: aiohttp.ClientSession, faq: FaqRows = ()) -> list[Check]:
    """The model for the current data (the intents and the flow directory's FAQ), and a Rasa server that answers
    with it."""
    if settings.mode == "rules":
        return [ok("nlu", "mode rules: keyword rules answer, on purpose; Rasa is not used")]
    project = settings.project_path()
    try:
        load_project(project)
    except TrainingDataError as exc:
        return [fail("nlu.model", f"the training data in {project} is rejected: " + "; ".join(
            str(problem) for problem in exc.problems[:3]), "fix those lines (scrm nlu check lists them all)")]
    expected = model_file(settings, faq=faq).name
    if settings.mode == "managed":
        return [_managed_model(settings, expected), await _managed_server(settings, http, expected)]
    return await _external(settings, http, expected)


def _managed_model(settings: NluSettings, expected: str) -> Check:
    try:
        rasa_executable(settings)
    except RasaUnavailable as exc:
        return fail("nlu.model", str(exc), "create it: scripts/setup_rasa.sh (or make rasa)")
    if not (settings.model_path() / expected).exists():
        return fail("nlu.model", f"no model for the current data ({expected}) in {settings.model_path()}",
                    "train it: scrm nlu train (scrm serve trains at start, and keyword rules answer meanwhile)")
    return ok("nlu.model", f"{expected} is trained on the current data")


async def _managed_server(settings: NluSettings, http: aiohttp.ClientSession, expected: str) -> Check:
    running = await find_running(settings)
    if running is None:
        return warn("nlu.server", f"no managed Rasa server runs on this machine ({settings.model_path()}/server.json)",
                    "scrm serve starts it; run scrm doctor on the bot's machine to check the one it runs")
    url, token = running
    served, problem = await _served_model(http, url, token)
    if problem:
        return fail("nlu.server", f"Rasa at {url} {problem}", "restart scrm serve")
    if served != expected:
        return fail("nlu.server", f"Rasa at {url} answers with {served}, not the model of the current "
                    f"data ({expected})", "restart scrm serve: it trains on the current data first")
    return ok("nlu.server", f"Rasa at {url} answers with {expected}")


async def _external(settings: NluSettings, http: aiohttp.ClientSession, expected: str) -> list[Check]:
    url = settings.rasa_url.rstrip("/")
    served, problem = await _served_model(http, url, settings.auth_token.get_secret_value())
    if problem:
        return [fail("nlu.server", f"Rasa at {url} {problem}",
                     f"start it with a model, or correct nlu.rasa_url ({env_name('nlu.rasa_url')}) and "
                     f"nlu.auth_token ({env_name('nlu.auth_token')}: the server's --auth-token)")]
    server = ok("nlu.server", f"Rasa at {url} answers with {served}")
    deploy = f"train it (scrm nlu train), then load {expected} on every Rasa server"
    if served == expected:
        return [ok("nlu.model", f"{served} is trained on the current data"), server]
    if MODEL_NAME.fullmatch(served):
        return [fail("nlu.model", f"{served} was trained on other data than the current ({expected})", deploy), server]
    return [warn("nlu.model", f"{served}: whether it was trained on the current data cannot be told from its name",
                 f"{deploy} (scrm nlu train names a model after its data)"), server]


async def _served_model(http: aiohttp.ClientSession, url: str, token: str) -> tuple[str, str]:
    """(the file name of the model the Rasa server at `url` has loaded, "") or ("", why there is none:
    a phrase that follows "Rasa at URL")."""
    try:
        async with http.get(f"{url}/status", params={"token": token} if token else None,
                            timeout=aiohttp.ClientTimeout(total=5)) as response:
            if response.status in (401, 403):
                return "", f"refuses the token (HTTP {response.status})"
            if response.status != 200:
                return "", f"answers HTTP {response.status} to /status"
            status: dict[str, Any] = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return "", f"does not answer ({type(exc).__name__}: {exc})"
    served = Path(str(status.get("model_file") or "")).name
    return (served, "") if served else ("", "answers, but has no model loaded")
