"""API call budgets: how many calls each platform allows one account to make to one API.

A budget belongs to an account and an API path: WeCom counts per enterprise (the corp id,
whichever of its apps calls) and per API; the Official Account per account (its app id) and
per API. Every process that calls on the account's behalf takes from the same budget
(`SharedState.take`), so several senders together stay under the platform's limit.

`share` scales every limit (config `sender.budget_share`): other systems calling for the same
corp or account spend from the platform's limit too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from core.shared_state import RateWindow

Platform = Literal["wecom", "oa"]

DEFAULT_SHARE = 0.95  # of each documented limit, leaving the rest to other systems of the corp (sender.budget_share)
MAX_WAIT_S = 1.0  # a call that fits within this long waits for it rather than being put back (sender.budget_wait_s)

MINUTE_S, HOUR_S, DAY_S = 60.0, 3600.0, 86400.0
WINDOW_NAMES = {MINUTE_S: "minute", HOUR_S: "hour", DAY_S: "day"}

# https://developer.work.weixin.qq.com/document/path/90312: "每企业调用单个cgi/api不可超过1万次/分，15万次/小时"
# (45009 beyond). Every API but the token's, per enterprise.
WECOM_WINDOWS = (RateWindow(MINUTE_S, 10_000), RateWindow(HOUR_S, 150_000))
TOKEN_PATHS = frozenset({"gettoken", "token"})

# The OA's "接口调用频次限制说明", https://developers.weixin.qq.com/doc/offiaccount/Message_Management/API_Call_Limits.html
# (also https://developers.weixin.qq.com/doc/service/Message_Management/API_Call_Limits.html): daily limits ("每日限额")
# of a newly registered account, 45009 "api freq out of limit" beyond; accounts with many followers are given more
# (the MP console shows each API's own). The APIs this product calls. The page does not say when a day starts: a
# rolling 24 h is counted, which never allows more than the limit within any calendar day.
OA_DAILY = {
    "message/custom/send": 500_000,  # 发送客服消息
    "media/upload": 100_000,  # 上传多媒体文件
    "media/get": 200_000,  # 下载多媒体文件
    "qrcode/create": 100_000,  # 获取带参数的二维码
    "user/info": 5_000_000,  # 获取用户基本信息
}


@dataclass(frozen=True)
class Budget:
    """The calls `account` may make to `path`: a limit per rolling window."""

    account: str
    path: str
    windows: tuple[RateWindow, ...]

    @property
    def key(self) -> str:
        """The shared-state key: every process calling for this account and API counts under it."""
        return f"budget:{self.account}:{self.path}"

    def capped(self, fraction: float) -> Budget:
        """The same budget (the same calls counted) with every limit cut to `fraction` of it."""
        return Budget(self.account, self.path, _scaled(self.windows, fraction))

    @property
    def tightest(self) -> RateWindow:
        """The window that allows the fewest calls a second, sustained."""
        return min(self.windows, key=lambda window: window.limit / window.span_s)

    @property
    def calls_per_s(self) -> float:
        """The sustained rate the tightest window allows."""
        return self.tightest.limit / self.tightest.span_s

    def pace(self) -> str:
        """The sustained rate in words: "475,000 a day", "142,500 an hour"."""
        window = self.tightest
        return f"{window.limit:,} {'an' if window_name(window) == 'hour' else 'a'} {window_name(window)}"


def budget_for(platform: Platform, account: str, path: str, share: float = 1.0) -> Budget | None:
    """The budget of `path` for `account`, its limits scaled by `share`; None for an API with no documented limit."""
    if path in TOKEN_PATHS:
        return None
    windows: tuple[RateWindow, ...]
    if platform == "wecom":
        windows = WECOM_WINDOWS
    elif path in OA_DAILY:
        windows = (RateWindow(DAY_S, OA_DAILY[path]),)
    else:
        return None
    return Budget(account, path, _scaled(windows, share))


def _scaled(windows: tuple[RateWindow, ...], fraction: float) -> tuple[RateWindow, ...]:
    return tuple(RateWindow(window.span_s, max(1, math.floor(window.limit * fraction))) for window in windows)


def window_name(window: RateWindow) -> str:
    return WINDOW_NAMES.get(window.span_s, f"{window.span_s:g}s")


def seconds_to_send(budget: Budget, calls: int, used: tuple[int, ...]) -> float:
    """About how long `calls` more take under `budget` from now, with `used` calls counted in its windows:
    what is left in every window goes at once, the rest at the tightest window's sustained rate."""
    left = min((window.limit - count for window, count in zip(budget.windows, used, strict=True)), default=calls)
    return max(0, calls - max(0, left)) / budget.calls_per_s
