"""Is the configuration complete, real, and not a sandbox left on? Read from the settings alone.

The sandbox's values are the ones config.yaml ships: secrets that start with "sandbox" (the rule
`Settings` itself applies when the sandbox is off) and the ids wwsandboxcorp / wxsandboxoa.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from bot.doctor.report import Check, fail, ok, warn
from bot.settings import SANDBOX_SECRET_PREFIX, Settings

# What the bot needs to talk to WeChat; the EncodingAESKey of the OA only outside plain mode.
REQUIRED = (
    "wecom.corp_id",
    "wecom.kf.token", "wecom.kf.encoding_aes_key", "wecom.kf.secret",
    "wecom.contacts.token", "wecom.contacts.encoding_aes_key", "wecom.contacts.secret",
    "wecom.app.token", "wecom.app.encoding_aes_key", "wecom.app.secret", "wecom.app.agent_id",
    "oa.app_id", "oa.app_secret", "oa.token", "oa.encoding_aes_key",
)
IDS = ("wecom.corp_id", "oa.app_id")  # not secrets: sandbox ones say so in their name
LOOPBACK = ("127.", "localhost", "::1")
EMPTY, SANDBOX = "not set", "a sandbox value"


def env_name(key: str) -> str:
    return "SCRM__" + key.replace(".", "__").upper()


def value_of(settings: Settings, key: str) -> Any:
    value: Any = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def config_problems(settings: Settings) -> dict[str, str]:
    """Keys that cannot work against WeChat, and why: {"wecom.kf.secret": "not set"}."""
    problems: dict[str, str] = {}
    for key in REQUIRED:
        if key == "oa.encoding_aes_key" and settings.oa.mode == "plain":
            continue
        value = value_of(settings, key)
        if not value:
            problems[key] = EMPTY
        elif key in IDS and "sandbox" in str(value).lower():
            problems[key] = SANDBOX
        elif isinstance(value, str) and key not in IDS and value.startswith(SANDBOX_SECRET_PREFIX):
            problems[key] = SANDBOX
    if settings.nlu.mode == "external" and not settings.nlu.rasa_url:
        problems["nlu.rasa_url"] = EMPTY
    return problems


def config_check(problems: dict[str, str]) -> Check:
    if not problems:
        return ok("config", "complete, and no sandbox values")
    parts = [f"{reason}: " + ", ".join(key for key, why in problems.items() if why == reason)
             for reason in (EMPTY, SANDBOX) if reason in problems.values()]
    fix = ("set them in the environment (" + ", ".join(env_name(key) for key in problems) + ") or the config "
           "file, from the admin consoles: sandbox values only work with the local simulator")
    return fail("config", "; ".join(parts), fix)


def unreadable_config(message: str) -> Check:
    """The settings did not load at all: nothing else can be checked."""
    return fail("config", message.replace("\n", " ").replace("  ", " "),
                "correct the keys named (config file or the SCRM__ variables shown), then run scrm doctor again")


def sandbox_check(settings: Settings) -> Check:
    if not settings.sandbox.enabled:
        return ok("sandbox", "off: the bot talks to WeChat")
    production = production_signs(settings)
    if not production:
        return ok("sandbox", "on: a local trial, the bot talks to the local fake WeChat API, not to WeChat")
    return warn("sandbox", "on, in what looks like production (" + ", ".join(production) + "): the bot sends "
                "to the local fake API and never to WeChat",
                "turn it off: SCRM__SANDBOX__ENABLED=false (or sandbox.enabled: false in the config file)")


def production_signs(settings: Settings) -> list[str]:
    signs = []
    backend = make_url(settings.store.url).get_backend_name()
    if backend != "sqlite":
        signs.append(f"a {backend} store")
    if settings.redis.url:
        signs.append("Redis")
    if not settings.server.host.startswith(LOOPBACK):
        signs.append(f"listening on {settings.server.host}")
    if "sandbox" not in settings.wecom.corp_id.lower():
        signs.append(f"corp id {settings.wecom.corp_id}")
    return signs
