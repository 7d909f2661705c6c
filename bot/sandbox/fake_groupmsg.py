"""WeCom group messages (客户群发) for the fake API: tasks a rep confirms in WeCom, and reminders.

`externalcontact/add_msg_template` creates a task for the `sender` (the rep) to confirm; this
fake delivers it at once to each customer, and lists in `fail_list` a customer who already got
the month's limit of company group messages (`group_messages_per_month`, WeCom's rule), or
who is not the sender's contact when the sender's contacts are known. `remind_groupmsg_send`
reminds the rep of a task (by its msgid), at most 3 times in 24 h (`FakeQuotas.check_remind`).

With `chat_type: "group"` the task goes to customer groups the sender owns (`chat_id_list`);
it stays unconfirmed until a test confirms it (`confirm_group_task`) or
`auto_confirm_group_tasks` is set, as a rep confirms it in WeCom. `get_groupmsg_send_result`
and `get_groupmsg_list_v2` answer about those tasks (bot/sandbox/fake_groupchat_tasks.py).
"""

from __future__ import annotations

import itertools
from typing import Any

from bot.sandbox.fake_groupchat_tasks import FakeGroupChatTasks
from bot.sandbox.fake_kf import Sent
from bot.sandbox.fake_quotas import ApiRefusal, FakeQuotas

# https://developer.work.weixin.qq.com/document/path/92135 (创建企业群发), as it read when this fake was written:
# "同一个企业每个自然月内仅可针对一个客户/客户群发送4条消息，超过接收上限的客户将无法再收到群发消息". The page now reads
# "每月最多可接收条数为当月天数" (adjustable to 7 a week or 1 a day); the fake keeps the stricter 4, which
# `group_messages_per_month` lets a test change. A customer over it is in fail_list; the task is still created.
MONTHLY_LIMIT = 4
MAX_CUSTOMERS = 10_000


class FakeGroupMessages(FakeGroupChatTasks, FakeQuotas):
    sent: list[Sent]
    follow_users: dict[str, set[str]]

    def init_group_messages(self) -> None:
        self.group_tasks: list[dict[str, Any]] = []  # add_msg_template bodies, with their msgid
        self.reminders: list[str] = []  # msgids reminded
        self.group_messages_per_month = MONTHLY_LIMIT
        self._received: dict[str, int] = {}
        self._task_ids = itertools.count(1)
        self.init_group_chat_tasks()

    def group_message_routes(self) -> dict[str, Any]:
        return {"externalcontact/add_msg_template": self.add_msg_template,
                "externalcontact/remind_groupmsg_send": self.remind_groupmsg_send,
                **self.group_chat_task_routes()}

    async def add_msg_template(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("chat_type") == "group":
            return self.add_group_chat_task(body, f"msg{next(self._task_ids)}")
        customers = [str(c) for c in body.get("external_userid") or []]
        sender = str(body.get("sender") or "")
        if body.get("chat_type", "single") != "single" or not customers or len(customers) > MAX_CUSTOMERS:
            raise ApiRefusal(40058, "invalid external_userid list or chat_type")
        if not (body.get("text") or {}).get("content"):
            raise ApiRefusal(41041, "empty content")
        msgid = f"msg{next(self._task_ids)}"
        failed = []
        for customer in customers:
            known = self.follow_users.get(customer)
            if (known and sender and sender not in known) or \
                    self._received.get(customer, 0) >= self.group_messages_per_month:
                failed.append(customer)
                continue
            self._received[customer] = self._received.get(customer, 0) + 1
            self.sent.append(Sent("externalcontact/add_msg_template",
                                  {"touser": customer, "text": body["text"], "sender": sender, "msgid": msgid}))
        self.group_tasks.append({**body, "msgid": msgid})
        return {"msgid": msgid, "fail_list": failed}

    async def remind_groupmsg_send(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        msgid = str(body.get("msgid") or "")
        if msgid not in {task["msgid"] for task in self.group_tasks} and msgid not in self.group_chat_tasks:
            raise ApiRefusal(40058, "invalid msgid")
        self.check_remind(msgid)  # a 4th reminder within 24 h: 45009
        self.reminders.append(msgid)
        return {}
