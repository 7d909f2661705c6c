"""After a group push's tasks are made: reminding owners who have not sent, and reading the results back.

Reminders (`remind_groupmsg_send`, https://developer.work.weixin.qq.com/document/path/97610: at most 3
a task in 24 h) go to a task that still has unsent groups `remind_after_s` after it was made
or last reminded, at most `max_reminders` times in all; the task's results are read just before,
so an owner who has sent in the meantime is not reminded. Results (`get_groupmsg_send_result`,
https://developer.work.weixin.qq.com/document/path/93338: per group 0 未发送, 1 已发送, 2 因客户不是好友导致
发送失败, 3 因客户已经收到其他群发消息导致发送失败; 1,000 a page with a cursor) are read `results_after_s`
after the push's first task and then daily for `results_for_days`; then the push is done.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.api_budget import ApiBudgets
from bot.group_push_dispatch import Pacer
from bot.wechat_api import ApiError, WeChatApi
from crm_store.group_chat_models import GroupChat, GroupPush, GroupPushTarget
from crm_store.group_chat_settings import GroupChatSettings
from crm_store.models import as_utc, utcnow

log = logging.getLogger("scrm.groupchat")

REMIND = "externalcontact/remind_groupmsg_send"
SEND_RESULT = "externalcontact/get_groupmsg_send_result"
RESULT_PAGE = 1000
WAITING = ("created", "unsent")  # in a task, not (yet) sent by the owner
RESULT_DAY = timedelta(days=1)
STATUS = {0: "unsent", 1: "sent", 2: "failed", 3: "failed"}
REASON = {2: "WeCom: not the owner's contact (status 2)",
          3: "WeCom: the group already received its group messages (status 3)"}


@dataclass(frozen=True)
class Task:
    msgid: str
    owner: str
    push_id: int
    reminders: int
    last: datetime  # made, or last reminded


@dataclass
class ResultsOutcome:
    tasks: int = 0
    sent: int = 0
    unsent: int = 0
    failed: int = 0


class GroupPushFollowUp:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], api: WeChatApi,
                 settings: GroupChatSettings, budgets: ApiBudgets | None = None) -> None:
        """`budgets`: the API budgets every process spends (default: over the API's shared state, at the
        default share); this process's own pace, `calls_per_minute`, comes first."""
        self.sessions = sessions
        self.api = api
        self.settings = settings
        self.pacer = Pacer(settings.calls_per_minute)
        self.budgets = budgets or ApiBudgets(api.state)

    async def _paced(self, path: str) -> None:
        """Before a call to `path`: this process's pace, then a call from the API's shared budget."""
        await self.pacer.wait()
        await self.budgets.wait(self.api.credential, path)

    # ------------------------------------------------------------ reminders

    async def remind_due(self, now: datetime | None = None, push_id: int | None = None) -> int:
        """Remind each task with unsent groups whose time has come (`push_id`: that push's, at once); how many."""
        now = now or utcnow()
        reminded = 0
        for task in await self._waiting_tasks(push_id):
            if task.reminders >= self.settings.max_reminders:
                continue
            if push_id is None and as_utc(task.last) + timedelta(seconds=self.settings.remind_after_s) > now:
                continue
            if await self._still_unsent(task):
                reminded += await self._remind(task, now)
        return reminded

    async def _still_unsent(self, task: Task) -> bool:
        """The task's results read first (one call): an owner who sent since is not reminded."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(GroupChat.chat_id, GroupChat.id).join(GroupPushTarget, GroupPushTarget.group_id == GroupChat.id)
                .where(GroupPushTarget.push_id == task.push_id, GroupPushTarget.msgid == task.msgid))
            chats = dict(rows.tuples().all())
        try:
            results = await self._results(task.msgid, task.owner)
        except ApiError as exc:
            log.warning("groupchat.push.results.later msgid=%s: %s", task.msgid, exc)
            return True
        await self._apply(task.push_id, chats, results, ResultsOutcome())
        return any(status == 0 for status, _ in results.values())

    async def _waiting_tasks(self, push_id: int | None) -> list[Task]:
        query = (select(GroupPushTarget.msgid, GroupPushTarget.owner_userid, GroupPushTarget.push_id,
                        func.max(GroupPushTarget.reminders),
                        func.max(func.coalesce(GroupPushTarget.reminded_at, GroupPushTarget.claimed_at)))
                 .join(GroupPush, GroupPush.id == GroupPushTarget.push_id)
                 .where(GroupPushTarget.msgid != "", GroupPushTarget.status.in_(WAITING),
                        GroupPush.status.in_(("sending", "sent")))
                 .group_by(GroupPushTarget.msgid, GroupPushTarget.owner_userid, GroupPushTarget.push_id))
        if push_id is not None:
            query = query.where(GroupPushTarget.push_id == push_id)
        async with self.sessions() as session:
            rows = await session.execute(query)
            return [Task(msgid, owner, push, int(count or 0), _aware(last)) for msgid, owner, push, count, last
                    in rows.tuples()]

    async def _remind(self, task: Task, now: datetime) -> int:
        await self._paced(REMIND)
        try:
            await self.api.post(REMIND, {"msgid": task.msgid})
        except ApiError as exc:
            log.warning("groupchat.push.remind.refused msgid=%s owner=%s: %s", task.msgid, task.owner, exc)
            return 0
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(GroupPushTarget).where(GroupPushTarget.msgid == task.msgid)
                .values(reminders=GroupPushTarget.reminders + 1, reminded_at=now)
                .execution_options(synchronize_session=False))
        log.info("groupchat.push.reminded msgid=%s owner=%s reminder=%s", task.msgid, task.owner, task.reminders + 1)
        return 1

    # ------------------------------------------------------------ results

    async def read_due(self, now: datetime | None = None, push_id: int | None = None) -> ResultsOutcome:
        """Read back the results of every push whose time has come (`push_id`: that one, at once)."""
        now = now or utcnow()
        outcome = ResultsOutcome()
        for push, first in await self._pushes_with_tasks(push_id):
            if push_id is None and not self._results_due(push, first, now):
                continue
            await self._read_push(push.id, now, outcome)
            finished = now >= first + timedelta(seconds=self.settings.results_after_s) \
                + RESULT_DAY * self.settings.results_for_days
            async with self.sessions() as session, session.begin():
                values: dict[str, Any] = {"results_at": now}
                if finished or not await self._open_targets(session, push.id):
                    values["status"] = "done"
                await session.execute(update(GroupPush).where(GroupPush.id == push.id, GroupPush.status == "sent")
                                      .values(**values))
                await session.execute(update(GroupPush).where(GroupPush.id == push.id, GroupPush.status != "sent")
                                      .values(results_at=now))
        return outcome

    def _results_due(self, push: GroupPush, first: datetime, now: datetime) -> bool:
        start = first + timedelta(seconds=self.settings.results_after_s)
        if start > now:
            return False
        if push.results_at is None:
            return True
        last = as_utc(push.results_at)  # read daily until the window ends (a cancelled push stays cancelled)
        return last + RESULT_DAY <= now and last < start + RESULT_DAY * self.settings.results_for_days

    async def _pushes_with_tasks(self, push_id: int | None) -> list[tuple[GroupPush, datetime]]:
        query = (select(GroupPush, func.min(GroupPushTarget.claimed_at))
                 .join(GroupPushTarget, GroupPushTarget.push_id == GroupPush.id)
                 .where(GroupPushTarget.msgid != "", GroupPush.status.in_(("sending", "sent", "cancelled")))
                 .group_by(GroupPush.id))
        if push_id is not None:
            query = query.where(GroupPush.id == push_id)
        async with self.sessions() as session:
            rows = await session.execute(query)
            return [(push, _aware(first)) for push, first in rows.tuples()]

    @staticmethod
    async def _open_targets(session: AsyncSession, push_id: int) -> int:
        return int(await session.scalar(select(func.count()).select_from(GroupPushTarget).where(
            GroupPushTarget.push_id == push_id, GroupPushTarget.status.in_(("pending", *WAITING)))) or 0)

    async def _read_push(self, push_id: int, now: datetime, outcome: ResultsOutcome) -> None:
        async with self.sessions() as session:
            rows = await session.execute(
                select(GroupPushTarget.msgid, GroupPushTarget.owner_userid, GroupChat.chat_id, GroupChat.id)
                .join(GroupChat, GroupChat.id == GroupPushTarget.group_id)
                .where(GroupPushTarget.push_id == push_id, GroupPushTarget.msgid != ""))
            tasks: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
            for msgid, owner, chat_id, group_id in rows.tuples():
                tasks[(msgid, owner)][chat_id] = group_id
        for (msgid, owner), chats in tasks.items():
            try:
                results = await self._results(msgid, owner)
            except ApiError as exc:
                log.warning("groupchat.push.results.later msgid=%s: %s", msgid, exc)
                continue
            await self._apply(push_id, chats, results, outcome)
            outcome.tasks += 1

    async def _results(self, msgid: str, owner: str) -> dict[str, tuple[int, int]]:
        """chat_id -> (status, send_time) of one task, every page."""
        body: dict[str, Any] = {"msgid": msgid, "userid": owner, "limit": RESULT_PAGE}
        found: dict[str, tuple[int, int]] = {}
        while True:
            await self._paced(SEND_RESULT)
            answer = await self.api.post(SEND_RESULT, body)
            for row in answer.get("send_list") or []:
                if row.get("chat_id"):
                    found[str(row["chat_id"])] = (int(row.get("status", 0)), int(row.get("send_time") or 0))
            if not answer.get("next_cursor"):
                return found
            body["cursor"] = answer["next_cursor"]

    async def _apply(self, push_id: int, chats: dict[str, int], results: dict[str, tuple[int, int]],
                     outcome: ResultsOutcome) -> None:
        async with self.sessions() as session, session.begin():
            for chat_id, (status, send_time) in results.items():
                group_id = chats.get(chat_id)
                if group_id is None or status not in STATUS:
                    continue
                values: dict[str, Any] = {"status": STATUS[status], "reason": REASON.get(status, "")}
                if status == 1:
                    values["sent_at"] = datetime.fromtimestamp(send_time, UTC) if send_time else None
                    outcome.sent += 1
                else:
                    outcome.unsent += status == 0
                    outcome.failed += status != 0
                await session.execute(
                    update(GroupPushTarget).where(GroupPushTarget.push_id == push_id,
                                                  GroupPushTarget.group_id == group_id,
                                                  GroupPushTarget.status.in_(("created", "unsent")))
                    .values(**values).execution_options(synchronize_session=False))


def _aware(moment: datetime | None) -> datetime:
    return as_utc(moment) if moment is not None else datetime.min.replace(tzinfo=UTC)
