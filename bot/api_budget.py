"""The API call budgets as callers see them: take before a call, and what is left.

`take(credential, path)` counts one call against the account's budget for that API
(core/api_budget.py) in the shared state, so every process sending for the account stays
under the platform's limit together. A call that does not fit waits a moment when it soon
would (`max_wait_s`); otherwise the caller is told when it will (`NotBefore`) and decides:
the outbox sender puts the row back until then, a paced job waits (`wait`).

While the shared state does not answer (Redis restarting), calls are let through uncounted:
the platform's own 45009 still protects it, and a Redis outage must not stop every send.
The outage is reported once (core/faults.py), as for the integration API's rate limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.delivery import OUTBOX_KINDS
from bot.wechat_api import Credential
from core.api_budget import (
    DEFAULT_SHARE,
    MAX_WAIT_S,
    Budget,
    Platform,
    budget_for,
    seconds_to_send,
    window_name,
)
from core.faults import FAULTS, fault_component
from core.shared_state import SharedState

log = logging.getLogger("scrm.budget")



@dataclass(frozen=True)
class NotBefore:
    """The budget has no room now: the call fits in `wait_s` seconds, at `at` (epoch seconds)."""

    api: str
    wait_s: float
    at: float


@dataclass(frozen=True)
class WindowLeft:
    """One window of one API's budget: its limit, the calls counted in it now, and what is left."""

    account: str
    path: str
    window: str  # minute | hour | day
    limit: int
    used: int
    left: int


def credential_account(credential: Credential) -> tuple[Platform, str]:
    """Whose budget a credential's calls spend: the corp id for every WeCom app, the app id for the OA."""
    params = dict(credential.token_params)
    if "corpid" in params:
        return "wecom", params["corpid"]
    return "oa", params.get("appid", credential.name)


# The budget of an account's API, its limits scaled by a share (core/api_budget.py; tests put in lower ones).
Rules = Callable[[Platform, str, str, float], Budget | None]


class ApiBudgets:
    """One process's way to the API budgets in the shared state: each account's API has one budget, whichever
    process or app takes from it. `share` scales the documented limits (config `sender.budget_share`)."""

    def __init__(self, state: SharedState, share: float = DEFAULT_SHARE, max_wait_s: float = MAX_WAIT_S,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, rules: Rules = budget_for) -> None:
        self.state = state
        self.rules = rules
        self.share = share
        self.max_wait_s = max_wait_s
        self.clock = clock  # for `NotBefore.at` only: the windows count by the shared state's clock
        self.sleep = sleep
        self._budgets: dict[tuple[Platform, str, str], Budget | None] = {}

    def budget(self, credential: Credential, path: str) -> Budget | None:
        """The budget `credential`'s calls to `path` spend (None: a call no limit is documented for); from
        now on it is among those `left()` reports."""
        return self.budget_of(*credential_account(credential), path)

    def budget_of(self, platform: Platform, account: str, path: str) -> Budget | None:
        key = (platform, account, path)
        if key not in self._budgets:
            self._budgets[key] = self.rules(platform, account, path, self.share)
        return self._budgets[key]

    def watch_outbox(self, corp_id: str, oa_app_id: str) -> ApiBudgets:
        """Make `left()` report every API the outbox calls, for a process with accounts but no API clients
        (a CLI): `await ApiBudgets(open_shared_state(url), share).watch_outbox(corp_id, app_id).left()`."""
        for credential, path, _ in OUTBOX_KINDS.values():
            if credential == "oa" and oa_app_id:
                self.budget_of("oa", oa_app_id, path)
            elif credential != "oa" and corp_id:
                self.budget_of("wecom", corp_id, path)
        return self

    async def take(self, credential: Credential, path: str, n: int = 1, ceiling: float = 1.0) -> NotBefore | None:
        """Count `n` calls; None when they may be made now, else when they would fit. With a `ceiling` below 1 the
        calls fit only while the budget's windows are below that fraction of their limits: marketing sends stop
        there, and the rest of the budget stays for conversations (`sender.marketing_share`)."""
        budget = self.budget(credential, path)
        if budget is None:
            return None
        if ceiling < 1.0:
            budget = budget.capped(ceiling)
        waited = 0.0
        while True:
            try:
                taken = await self.state.take(budget.key, n, budget.windows)
            except Exception as exc:
                component = fault_component(exc)
                if component is None:
                    raise
                FAULTS.seen(component, "api.budget", exc, retry="calls are not counted until it answers")
                return None
            if taken.granted:
                return None
            if waited + taken.wait_s > self.max_wait_s:
                wait_s = min(taken.wait_s, max(window.span_s for window in budget.windows))  # inf: n over a limit
                return NotBefore(f"{budget.account} {budget.path}", wait_s, self.clock() + wait_s)
            await self.sleep(taken.wait_s)
            waited += taken.wait_s

    async def wait(self, credential: Credential, path: str) -> None:
        """Wait until one call fits, however long (paced background work, not the outbox)."""
        while (later := await self.take(credential, path)) is not None:
            log.info("budget.waiting api=%s for_s=%.1f", later.api, later.wait_s)
            await self.sleep(later.wait_s)

    async def left(self) -> list[WindowLeft]:
        """Every budget used or looked at by this process, each window: limit, used, left."""
        rows: list[WindowLeft] = []
        for budget in self._budgets.values():
            if budget is None:
                continue
            taken = await self.state.take(budget.key, 0, budget.windows)
            rows += [WindowLeft(budget.account, budget.path, window_name(window), window.limit, used,
                                max(0, window.limit - used))
                     for window, used in zip(budget.windows, taken.used, strict=True)]
        return rows

    async def seconds_to_send(self, platform: Platform, account: str, path: str, calls: int) -> float:
        """About how long `calls` more calls to `path` take from now under the budget (0: at once, or no limit)."""
        budget = self.budget_of(platform, account, path)
        if budget is None or calls <= 0:
            return 0.0
        taken = await self.state.take(budget.key, 0, budget.windows)
        return seconds_to_send(budget, calls, taken.used)
