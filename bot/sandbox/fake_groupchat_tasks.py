"""Group-message tasks to customer groups (`add_msg_template` with `chat_type: "group"`) for the fake API.

A task waits for its owner: the fake delivers nothing until a test confirms it
(`confirm_group_task`, as the owner taps "send" in WeCom) or `auto_confirm_group_tasks` is
set. Delivery counts against each group's monthly allowance; a group past it is not sent
(status 3) and the refusal is recorded, so a test can assert the bot never asked for one.

The rules, each from its page:
- https://developer.work.weixin.qq.com/document/path/92135 (创建企业群发): `sender` "当类型为发送给客户群时必填";
  `chat_id_list` "最多可一次指定2000个客户群"; text.content "最多4000个字节"; at most 9 attachments; the
  groups must be the sender's. The monthly allowance of a group: the page now reads "每月最多可接收条数为当月
  天数" (it read "每个自然月内仅可针对一个客户/客户群发送4条消息" before; fake_groupmsg.MONTHLY_LIMIT keeps the 4
  for customers). A group gets the month's number of days unless a test sets `group_chat_messages_per_month`.
  The month is China's (Asia/Shanghai).
- https://developer.work.weixin.qq.com/document/path/93338 (获取群发记录列表 get_groupmsg_list_v2: start and
  end time required, at most a month apart, `limit` at most 100, default 50; 获取企业群发成员执行结果
  get_groupmsg_send_result: `limit` at most 1000, default 500; status 0 未发送, 1 已发送, 2 因客户不是好友导致
  发送失败, 3 因客户已经收到其他群发消息导致发送失败; `chat_id` for a group).
- Error codes, https://developer.work.weixin.qq.com/document/path/90313: 40003 invalid userid, 40050 chatid
  不存在 (a group that is not the sender's, or dismissed, does not exist for the sender), 40058 invalid
  parameter, 41041 empty content (as the customer side answers), 45002 content too long.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from bot.sandbox.fake_groupchat_state import FakeGroupChat
from bot.sandbox.fake_kf import Sent
from bot.sandbox.fake_quotas import ApiRefusal, Refusal

MAX_CHATS = 2000
TEXT_BYTES = 4000
MAX_ATTACHMENTS = 9
RESULT_PAGE_MAX, RESULT_PAGE_DEFAULT = 1000, 500
LIST_PAGE_MAX, LIST_PAGE_DEFAULT = 100, 50
LIST_SPAN_S = 31 * 86400  # "at most a month apart": the longest month
INVALID_USERID, INVALID_CHAT, INVALID_PARAM, EMPTY, TOO_LONG = 40003, 40050, 40058, 41041, 45002
UNSENT, SENT, NOT_FRIEND, RECEIVED_OTHER = 0, 1, 2, 3
CHINA = timezone(timedelta(hours=8))
ADD = "externalcontact/add_msg_template"


@dataclass
class FakeGroupChatTask:
    msgid: str
    sender: str
    create_time: int
    body: dict[str, Any]
    status: dict[str, int] = field(default_factory=dict)  # chat_id -> 0 未发送 / 1 已发送 / 3 over the allowance
    send_time: dict[str, int] = field(default_factory=dict)


class FakeGroupChatTasks:
    """Mixin of FakeGroupMessages: the group side of add_msg_template and what reads its tasks back."""

    now: Callable[[], float]
    refused: list[Refusal]
    sent: list[Sent]

    def init_group_chat_tasks(self) -> None:
        self.group_chat_tasks: dict[str, FakeGroupChatTask] = {}
        self.auto_confirm_group_tasks = False
        self.group_chat_messages_per_month: int | None = None  # None: the month's number of days
        self._chat_received: dict[tuple[str, str], int] = {}  # (chat_id, "2026-12") -> delivered

    def group_chat_task_routes(self) -> dict[str, Any]:
        return {"externalcontact/get_groupmsg_send_result": self.get_groupmsg_send_result,
                "externalcontact/get_groupmsg_list_v2": self.get_groupmsg_list_v2}

    # --- what a test does -------------------------------------------------------------------
    def confirm_group_task(self, msgid: str, chat_ids: list[str] | None = None) -> None:
        """The owner sends the task (to `chat_ids` only, or to all of its groups)."""
        task = self.group_chat_tasks[msgid]
        today = datetime.fromtimestamp(self.now(), CHINA)
        month, limit = today.strftime("%Y-%m"), self.group_chat_messages_per_month or days_in_month(today.date())
        for chat_id in chat_ids if chat_ids is not None else list(task.status):
            if task.status.get(chat_id) != UNSENT:
                continue
            key = (chat_id, month)
            if self._chat_received.get(key, 0) >= limit:
                task.status[chat_id] = RECEIVED_OTHER
                self.refused.append(Refusal(ADD, RECEIVED_OTHER, chat_id, self.now()))
                continue
            self._chat_received[key] = self._chat_received.get(key, 0) + 1
            task.status[chat_id], task.send_time[chat_id] = SENT, int(self.now())
            self.sent.append(Sent(ADD, {"chat_id": chat_id, "sender": task.sender, "msgid": msgid,
                                        "text": task.body.get("text") or {},
                                        "attachments": task.body.get("attachments") or []}))

    def group_chat_received(self, chat_id: str) -> int:
        """Group messages delivered to the group this month."""
        return self._chat_received.get((chat_id, datetime.fromtimestamp(self.now(), CHINA).strftime("%Y-%m")), 0)

    # --- the HTTP side ----------------------------------------------------------------------
    def add_group_chat_task(self, body: dict[str, Any], msgid: str) -> dict[str, Any]:
        sender = str(body.get("sender") or "")
        if not sender:
            raise ApiRefusal(INVALID_USERID, "sender is required for chat_type group")
        chats: dict[str, FakeGroupChat] = getattr(self, "group_chats", {})
        owned = [c.chat_id for c in chats.values() if c.owner == sender and not c.dismissed]
        chat_ids = [str(c) for c in body.get("chat_id_list") or []] or owned  # none given: the owner picks
        if len(chat_ids) > MAX_CHATS or len(set(chat_ids)) != len(chat_ids):
            raise ApiRefusal(INVALID_PARAM, f"chat_id_list: at most {MAX_CHATS}, no repeats")
        strangers = [c for c in chat_ids if c not in owned]
        if strangers or not chat_ids:
            raise ApiRefusal(INVALID_CHAT, f"invalid chatid {strangers[:1] or ''} for sender {sender}")
        self._check_content(body)
        task = FakeGroupChatTask(msgid, sender, int(self.now()), dict(body), dict.fromkeys(chat_ids, UNSENT))
        self.group_chat_tasks[msgid] = task
        if self.auto_confirm_group_tasks:
            self.confirm_group_task(msgid)
        return {"msgid": msgid, "fail_list": []}

    @staticmethod
    def _check_content(body: dict[str, Any]) -> None:
        text = str((body.get("text") or {}).get("content") or "")
        attachments = body.get("attachments") or []
        if not text and not attachments:
            raise ApiRefusal(EMPTY, "empty content")
        if len(text.encode()) > TEXT_BYTES:
            raise ApiRefusal(TOO_LONG, "content size out of limit")
        if not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS:
            raise ApiRefusal(INVALID_PARAM, f"attachments: at most {MAX_ATTACHMENTS}")
        for item in attachments:
            kind = item.get("msgtype") if isinstance(item, dict) else None
            if kind not in ("image", "link", "miniprogram", "video", "file") or not isinstance(item.get(kind), dict):
                raise ApiRefusal(INVALID_PARAM, f"attachments: unknown msgtype {kind!r}")

    async def get_groupmsg_send_result(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        task = self.group_chat_tasks.get(str(body.get("msgid") or ""))
        if task is None:
            raise ApiRefusal(INVALID_PARAM, "invalid msgid")
        limit = _limit(body, RESULT_PAGE_DEFAULT, RESULT_PAGE_MAX)
        start = _cursor(body)
        rows = [] if str(body.get("userid") or "") != task.sender else list(task.status.items())
        page = rows[start:start + limit]
        send_list = [{"chat_id": chat_id, "userid": task.sender, "status": status,
                      **({"send_time": task.send_time[chat_id]} if chat_id in task.send_time else {})}
                     for chat_id, status in page]
        more = start + limit < len(rows)
        return {"send_list": send_list, "next_cursor": str(start + limit) if more else ""}

    async def get_groupmsg_list_v2(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        try:
            start_time, end_time = int(body["start_time"]), int(body["end_time"])
        except (KeyError, TypeError, ValueError):
            raise ApiRefusal(INVALID_PARAM, "start_time and end_time are required") from None
        if end_time < start_time or end_time - start_time > LIST_SPAN_S:
            raise ApiRefusal(INVALID_PARAM, "start_time and end_time at most a month apart")
        limit = _limit(body, LIST_PAGE_DEFAULT, LIST_PAGE_MAX)
        creator = str(body.get("creator") or "")
        wanted = body.get("chat_type", "single") == "group" and body.get("filter_type", 2) in (0, 2)
        rows = [t for t in self.group_chat_tasks.values() if wanted and start_time <= t.create_time <= end_time
                and creator in ("", t.sender)]  # the fake keeps no create_time for single-chat tasks
        start = _cursor(body)
        page = [{"msgid": t.msgid, "creator": t.sender, "create_time": t.create_time, "create_type": 0,
                 "allow_select": bool(t.body.get("allow_select")), "text": t.body.get("text") or {},
                 "attachments": t.body.get("attachments") or []} for t in rows[start:start + limit]]
        more = start + limit < len(rows)
        return {"group_msg_list": page, "next_cursor": str(start + limit) if more else ""}


def days_in_month(day: date) -> int:
    following = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (following - timedelta(days=1)).day


def _limit(body: dict[str, Any], default: int, most: int) -> int:
    limit = body.get("limit", default)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= most:
        raise ApiRefusal(INVALID_PARAM, f"limit: 1 to {most}")
    return limit


def _cursor(body: dict[str, Any]) -> int:
    cursor = str(body.get("cursor") or "0")
    if not cursor.isdigit():
        raise ApiRefusal(INVALID_PARAM, "invalid cursor")
    return int(cursor)
