"""The platforms' sending quotas and limits, for the fake API: refused with WeChat's own error codes.

A bot that passes against a fake that sends everything learns nothing about the rules that
make real WeChat refuse it. This mixin keeps, per customer, the sends each platform grants
after the customer acted (微信客服: a message; the OA: a message, a menu click, a follow or a
scan), the life of single-use event codes, text sizes, the reminders of a group message, the
per-API call rate of the enterprise and the OA's daily custom sends. Each rule below names its
official page and says the rule in one line. Every refusal is kept in `refused` (a test asserts
none happened, or which), and `allowance` says how many sends the fake would take now.

Time is `self.now()` (time.time unless a test puts in its own clock), never a sleep.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

OaAction = Literal["message", "click", "subscribe", "scan", "unsubscribe"]
Channel = Literal["kf", "oa"]

# 微信客服 kf/send_msg, https://developer.work.weixin.qq.com/document/path/94677: "仅当微信客户在主动发送消息
# 给客服后的48小时内，企业可发送消息给客户，最多可发送5条消息；若用户继续发送消息，企业可再次下发消息". Each message
# (a menu click too) starts a new grant; entering the session (enter_session) grants none, only its welcome_code.
KF_SENDS = 5
KF_WINDOW_S = 48 * 3600
# WeCom global error codes, https://developer.work.weixin.qq.com/document/path/90313:
# 95001 发送消息条数超过限制 (the grant is used up), 95002 发送消息时间超过限制 (no grant, or its 48 h are over).
KF_USED_UP, KF_OUT_OF_TIME = 95001, 95002

# kf/send_msg_on_event, https://developer.work.weixin.qq.com/document/path/95122: the code "仅可使用一次"; valid
# 20 秒 for 用户进入会话 (welcome_code) and 结束会话, 48 小时 for 进入接待池 and 从接待池接入会话 (msg_code of trans).
CODE_SHORT_S = 20.0
CODE_LONG_S = 48 * 3600.0
# externalcontact/send_welcome_msg, https://developer.work.weixin.qq.com/document/path/92137: "企业仅可在收到相关
# 事件后20秒内调用，且只可调用一次" (41051 otherwise); the fake keeps both kinds of code in one place.

# OA message/custom/send, https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Service_Center_messages.html
# and the announcement of 2023-06-12 (https://mp.weixin.qq.com/cgi-bin/announce?action=getannouncement&announce_id=116853659399Heuo):
# "用户发送消息 5条 48小时; 点击自定义菜单 / 关注公众号 / 扫描二维码 3条 1分钟"; a menu click "不会产生用户发送消息场景的客服
# 消息下发额度". OA return codes: 45015 "response out of time limit or subscription is canceled", 45047 "out of
# response count limit" (客服接口下行条数超过上限).
OA_MESSAGE_SENDS, OA_MESSAGE_WINDOW_S = 5, 48 * 3600
OA_EVENT_SENDS, OA_EVENT_WINDOW_S = 3, 60
OA_OUT_OF_TIME, OA_USED_UP = 45015, 45047
# The OA documents no size for a custom-send text (community answers only: "根据不同客户端实际接收的消息长度为准"),
# so the fake enforces none there.

# kf/send_msg, document 94677: text.content "最长不超过2048个字节", msgmenu head_content / tail_content "不多于1024字节";
# WeCom global code 45002 消息内容大小超过限制 (document 90313).
KF_TEXT_BYTES, KF_MENU_TEXT_BYTES, TOO_LONG = 2048, 1024, 45002
# App message/send, https://developer.work.weixin.qq.com/document/path/90236: text.content "最长不超过2048个字节，
# 超过将截断": WeCom truncates, it does not refuse, and so does the fake.
APP_TEXT_BYTES = 2048

# externalcontact/remind_groupmsg_send, https://developer.work.weixin.qq.com/document/path/97610: "24小时内每个群发最多
# 触发三次提醒" (the older wording: "每个群发，每天可被调用提醒3次"). The page names no error code for a fourth call;
# the fake answers 45009 (接口调用超过限制, document 90313), WeCom's documented code for a call over its limit.
REMINDS_PER_DAY, REMIND_WINDOW_S = 3, 24 * 3600

# https://developer.work.weixin.qq.com/document/path/90312: "每企业调用单个cgi/api不可超过1万次/分，15万次/小时";
# over it, 45009. Counted per API path over a rolling minute and hour; the token calls are not counted.
API_PER_MINUTE, API_PER_HOUR, TOO_FREQUENT = 10_000, 150_000, 45009
TOKEN_PATHS = frozenset({"gettoken", "token"})

# The OA's 接口调用频次限制说明, https://developers.weixin.qq.com/doc/offiaccount/Message_Management/API_Call_Limits.html:
# "发送客服消息" 每日限额 500000 (a newly registered account; larger accounts are given more); over it
# {"errcode":45009,"errmsg":"api freq out of limit"}. The page does not say when the day starts: counted over a rolling
# 24 h, like the minute and the hour above.
OA_CUSTOM_SEND, OA_CUSTOM_SENDS_PER_DAY, DAY_S = "message/custom/send", 500_000, 86400.0

ERRMSG = {
    KF_USED_UP: "send msg count exceeds the limit (95001: 发送消息条数超过限制)",
    KF_OUT_OF_TIME: "send msg time exceeds the limit (95002: 发送消息时间超过限制)",
    OA_OUT_OF_TIME: "response out of time limit or subscription is canceled",
    OA_USED_UP: "out of response count limit",
    TOO_LONG: "content size out of limit",
    TOO_FREQUENT: "api freq out of limit",
}


class ApiRefusal(Exception):
    """WeChat refuses the call: the fake's HTTP layer answers {"errcode": …, "errmsg": …}."""

    def __init__(self, errcode: int, errmsg: str = "") -> None:
        super().__init__(f"errcode {errcode} {errmsg}".strip())
        self.errcode = errcode
        self.errmsg = errmsg


@dataclass(frozen=True)
class Refusal:
    """A send or call the fake refused for a rule (quota, time window, session, size, rate)."""

    path: str
    errcode: int
    to: str  # touser, openid, code or msgid; "" for a rate refusal
    at: float


@dataclass
class Grant:
    """The sends one customer action allows: `left` of them, until `until` (self.now() time)."""

    left: int
    until: float

    def open(self, now: float) -> bool:
        return now < self.until


class FakeQuotas:
    """Mixin of FakeWeChat (through FakeKf and FakeGroupMessages): the rules, and their record."""

    def init_quotas(self) -> None:
        self.now: Callable[[], float] = time.time  # tests put in their own clock: no sleeping
        self.refused: list[Refusal] = []
        self.api_per_minute: int | None = API_PER_MINUTE  # None: unlimited; tests and benches lower or lift it
        self.api_per_hour: int | None = API_PER_HOUR
        self.oa_custom_sends_per_day: int | None = OA_CUSTOM_SENDS_PER_DAY  # None: unlimited; tests lower it
        self._oa_custom_sends: deque[float] = deque()  # the OA's custom sends within the last 24 h
        self.kf_grants: dict[tuple[str, str], Grant] = {}  # (open_kfid, external_userid) -> the latest grant
        self.oa_grants: dict[str, dict[str, Grant]] = {}  # openid -> {"message": …, "event": …}
        self.code_times: dict[str, tuple[float, float]] = {}  # code -> (issued at, valid for s)
        self._reminds: dict[str, deque[float]] = {}  # msgid -> when it was reminded, within 24 h
        self._api_calls: dict[str, tuple[deque[float], deque[float]]] = {}  # path -> (last minute, last hour)

    # --- what a test, the simulator or a bench does ------------------------------------------
    def oa_customer_acted(self, openid: str, action: OaAction, at: float | None = None) -> None:
        """The OA customer did something that grants sends (or, unsubscribing, takes them all back).

        The fake never sees OA callbacks (they go from the test to the bot), so whoever posts one
        says here what the customer did. Each action replaces the earlier grant of its kind."""
        moment = self.now() if at is None else at
        if action == "unsubscribe":
            self.oa_grants.pop(openid, None)
        elif action == "message":
            self.oa_grants.setdefault(openid, {})["message"] = Grant(OA_MESSAGE_SENDS, moment + OA_MESSAGE_WINDOW_S)
        else:  # click, subscribe, scan: 3 within the minute, and no message grant
            self.oa_grants.setdefault(openid, {})["event"] = Grant(OA_EVENT_SENDS, moment + OA_EVENT_WINDOW_S)

    def allowance(self, channel: Channel, user: str, open_kfid: str = "") -> int:
        """How many sends to `user` the fake would accept now (kf: in `open_kfid`)."""
        now = self.now()
        grants = [self.kf_grants.get((open_kfid, user))] if channel == "kf" else \
            list(self.oa_grants.get(user, {}).values())
        return sum(grant.left for grant in grants if grant is not None and grant.open(now))

    def expire_codes(self) -> None:
        """Every event code issued so far is now past its time, as after its 20 s."""
        self.code_times = {code: (issued, 0.0) for code, (issued, _) in self.code_times.items()}

    # --- the rules, for the handlers ---------------------------------------------------------
    def refuse(self, path: str, errcode: int, to: str, errmsg: str = "") -> ApiRefusal:
        """Record the refusal and return the exception the handler raises."""
        self.refused.append(Refusal(path, errcode, to, self.now()))
        return ApiRefusal(errcode, errmsg or ERRMSG.get(errcode, ""))

    def grant_kf(self, open_kfid: str, external_userid: str) -> None:
        """The kf customer wrote (a menu click too): 5 sends for 48 h, replacing what was left."""
        self.kf_grants[(open_kfid, external_userid)] = Grant(KF_SENDS, self.now() + KF_WINDOW_S)

    def use_kf_grant(self, open_kfid: str, external_userid: str) -> None:
        """One kf/send_msg taken from the customer's grant: 95002 without a live one, 95001 when used up."""
        grant = self.kf_grants.get((open_kfid, external_userid))
        if grant is None or not grant.open(self.now()):
            raise self.refuse("kf/send_msg", KF_OUT_OF_TIME, external_userid)
        if grant.left <= 0:
            raise self.refuse("kf/send_msg", KF_USED_UP, external_userid)
        grant.left -= 1

    def use_oa_grant(self, openid: str) -> None:
        """One custom send, from the event grant while it lasts, else the message grant: 45015 / 45047."""
        now, grants = self.now(), self.oa_grants.get(openid, {})
        live = [grants[kind] for kind in ("event", "message") if kind in grants and grants[kind].open(now)]
        if not live:
            raise self.refuse("message/custom/send", OA_OUT_OF_TIME, openid)
        grant = next((g for g in live if g.left > 0), None)
        if grant is None:
            raise self.refuse("message/custom/send", OA_USED_UP, openid)
        grant.left -= 1

    def stamp_code(self, code: str, valid_s: float) -> None:
        self.code_times[code] = (self.now(), valid_s)

    def code_alive(self, code: str) -> bool:
        """Whether the code is still within its time; it is forgotten either way (single use)."""
        issued, valid_s = self.code_times.pop(code, (0.0, 0.0))
        return self.now() < issued + valid_s

    def check_kf_sizes(self, body: dict[str, Any], to: str) -> None:
        """kf/send_msg text ≤ 2048 bytes, a menu's head and tail ≤ 1024 bytes (UTF-8): 45002 over."""
        text = str((body.get("text") or {}).get("content") or "")
        menu = body.get("msgmenu") or {}
        menu_texts = [str(menu.get(key) or "") for key in ("head_content", "tail_content")]
        if _bytes(text) > KF_TEXT_BYTES or any(_bytes(part) > KF_MENU_TEXT_BYTES for part in menu_texts):
            raise self.refuse("kf/send_msg", TOO_LONG, to)

    def check_remind(self, msgid: str) -> None:
        """At most 3 reminders of one group message within 24 h (45009 for the 4th, see REMINDS_PER_DAY)."""
        now = self.now()
        times = self._reminds.setdefault(msgid, deque())
        while times and times[0] <= now - REMIND_WINDOW_S:
            times.popleft()
        if len(times) >= REMINDS_PER_DAY:
            raise self.refuse("externalcontact/remind_groupmsg_send", TOO_FREQUENT, msgid)
        times.append(now)

    def over_api_rate(self, path: str) -> bool:
        """Whether this call to `path` is over the enterprise's rate, or the OA's daily custom sends (and then
        recorded); accepted calls count.

        A deque per path and window, trimmed from the left: O(1) amortised per call."""
        if path in TOKEN_PATHS:
            return False
        now = self.now()
        if self._over_per_minute_or_hour(path, now) or self._over_oa_day(path, now):
            self.refused.append(Refusal(path, TOO_FREQUENT, "", now))
            return True
        if self.api_per_minute is not None or self.api_per_hour is not None:
            minute, hour = self._api_calls[path]
            minute.append(now)
            hour.append(now)
        if path == OA_CUSTOM_SEND and self.oa_custom_sends_per_day is not None:
            self._oa_custom_sends.append(now)
        return False

    def _over_per_minute_or_hour(self, path: str, now: float) -> bool:
        if self.api_per_minute is None and self.api_per_hour is None:
            return False
        minute, hour = self._api_calls.setdefault(path, (deque(), deque()))
        for window, span in ((minute, 60.0), (hour, 3600.0)):
            while window and window[0] <= now - span:
                window.popleft()
        return (self.api_per_minute is not None and len(minute) >= self.api_per_minute) or \
            (self.api_per_hour is not None and len(hour) >= self.api_per_hour)

    def _over_oa_day(self, path: str, now: float) -> bool:
        if path != OA_CUSTOM_SEND or self.oa_custom_sends_per_day is None:
            return False
        sends = self._oa_custom_sends
        while sends and sends[0] <= now - DAY_S:
            sends.popleft()
        return len(sends) >= self.oa_custom_sends_per_day


def truncated_app_text(body: dict[str, Any]) -> dict[str, Any]:
    """The app message as WeCom delivers it: text.content cut to 2048 bytes (on a character boundary)."""
    text = body.get("text")
    if not isinstance(text, dict) or _bytes(str(text.get("content") or "")) <= APP_TEXT_BYTES:
        return body
    cut = str(text["content"]).encode()[:APP_TEXT_BYTES].decode(errors="ignore")
    return {**body, "text": {**text, "content": cut}}


def _bytes(text: str) -> int:
    return len(text.encode())
