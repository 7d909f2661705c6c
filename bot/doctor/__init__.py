"""`scrm doctor`: why a deployment does not answer, one line per check, each with what to fix.

In this order: the configuration (complete, no sandbox values, no sandbox left on), the store
(reachable, at the newest migration), Redis (when configured), the Rasa model and server,
each WeChat credential (`wechat`), and with a public URL the callback round trips
(`callbacks`). Checks only read: nothing is migrated, trained, started or sent, except that
WeChat is asked for fresh access tokens. A check that needs an unusable key, or a token
that failed, is left out or marked "not checked" rather than failing twice.
"""

from __future__ import annotations

import asyncio

import aiohttp

from bot.doctor.callbacks import callback_checks
from bot.doctor.config import config_check, config_problems, sandbox_check, unreadable_config
from bot.doctor.report import Check, Report, guarded
from bot.doctor.services import nlu_checks, redis_check, store_check
from bot.doctor.wechat import wechat_checks
from bot.runtime import directory_faq
from bot.settings import Settings

__all__ = ["Check", "Report", "diagnose", "unreadable_config"]


async def diagnose(settings: Settings, public_url: str | None = None) -> Report:
    """Every check, run at once, reported in a fixed order."""
    problems = config_problems(settings)
    async with aiohttp.ClientSession() as http:
        groups = await asyncio.gather(
            guarded("store", store_check(settings.store.url)),
            guarded("redis", redis_check(settings.redis.url)),
            guarded("nlu", nlu_checks(settings.nlu, http, directory_faq(settings).training_rows())),
            guarded("wechat", wechat_checks(settings, problems, http)),
            guarded("callbacks", callback_checks(settings, public_url, http)) if public_url else _nothing(),
        )
    return Report((config_check(problems), sandbox_check(settings), *(c for group in groups for c in group)))


async def _nothing() -> list[Check]:
    return []
