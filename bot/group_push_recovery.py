"""Settles group-push claims cut off between the add_msg_template call and storing its msgid.

Such a claim (targets `created` without a msgid) may or may not have become a task. Once it is
older than CLAIM_STALE, WeCom is asked: the owner's group tasks around the claim's time
(`get_groupmsg_list_v2`, https://developer.work.weixin.qq.com/document/path/93338: a window of
at most a month, 100 a page), keeping those whose msgid we do not know and whose text is the
push's; for each, the groups it holds (`get_groupmsg_send_result`, 1,000 a page, `chat_id` per
group). A claimed group found in one takes its msgid; a claimed group found in none was certainly
not sent and is pending again, so the next claim puts it in a task once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.wechat_api import ApiError, WeChatApi
from crm_store.group_chat_models import GroupChat, GroupPush, GroupPushTarget
from crm_store.models import as_utc

log = logging.getLogger("scrm.groupchat")

CLAIM_STALE = timedelta(minutes=2)  # a call takes at most a few seconds (timeout 5 s): older claims were cut off
LIST_TASKS = "externalcontact/get_groupmsg_list_v2"
SEND_RESULT = "externalcontact/get_groupmsg_send_result"
LIST_PAGE, RESULT_PAGE = 100, 1000  # the most a page may hold (document 93338)
BEFORE = timedelta(minutes=10)  # WeCom's create_time and our claimed_at come from different clocks
LIST_SPAN = timedelta(days=28)  # the list's window may not exceed a month


async def store_msgid(sessions: async_sessionmaker[AsyncSession], push_id: int, group_ids: Sequence[int],
                      msgid: str) -> int:
    """The task's msgid on its claimed targets (only those still claimed without one)."""
    async with sessions() as session, session.begin():
        stored = await session.execute(
            update(GroupPushTarget).where(GroupPushTarget.push_id == push_id,
                                          GroupPushTarget.group_id.in_(list(group_ids)),
                                          GroupPushTarget.status == "created", GroupPushTarget.msgid == "")
            .values(msgid=msgid).execution_options(synchronize_session=False))
        return int(stored.rowcount or 0)  # type: ignore[attr-defined]


async def release_claim(sessions: async_sessionmaker[AsyncSession], push_id: int, group_ids: Sequence[int]) -> int:
    """Claimed targets without a msgid back to pending: no task holds them."""
    async with sessions() as session, session.begin():
        released = await session.execute(
            update(GroupPushTarget).where(GroupPushTarget.push_id == push_id,
                                          GroupPushTarget.group_id.in_(list(group_ids)),
                                          GroupPushTarget.status == "created", GroupPushTarget.msgid == "")
            .values(status="pending", claimed_at=None).execution_options(synchronize_session=False))
        return int(released.rowcount or 0)  # type: ignore[attr-defined]


@dataclass
class StaleClaim:
    """One owner's cut-off claims of one push."""

    push_id: int
    owner: str
    text: str
    first: datetime
    last: datetime
    chats: dict[str, int] = field(default_factory=dict)  # chat_id -> group_id


class ClaimRecovery:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], api: WeChatApi) -> None:
        self.sessions = sessions
        self.api = api

    async def recover(self, now: datetime) -> tuple[int, int]:
        """(groups that found their task, groups pending again); a claim WeCom cannot be asked about now waits."""
        recovered = released = 0
        for claim in await self._stale(now):
            try:
                found = await self._find(claim)
            except ApiError as exc:
                log.warning("groupchat.push.recovery.later push=%s owner=%s: %s", claim.push_id, claim.owner, exc)
                continue
            by_task: dict[str, list[int]] = defaultdict(list)
            for chat_id, msgid in found.items():
                by_task[msgid].append(claim.chats[chat_id])
            for msgid, group_ids in by_task.items():
                recovered += await store_msgid(self.sessions, claim.push_id, group_ids, msgid)
            rest = [group_id for chat_id, group_id in claim.chats.items() if chat_id not in found]
            released += await release_claim(self.sessions, claim.push_id, rest) if rest else 0
            log.warning("groupchat.push.recovered push=%s owner=%s found=%s released=%s tasks=%s", claim.push_id,
                        claim.owner, len(found), len(rest), ",".join(by_task) or "-")
        return recovered, released

    async def _stale(self, now: datetime) -> list[StaleClaim]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(GroupPushTarget.push_id, GroupPushTarget.owner_userid, GroupChat.chat_id,
                       GroupPushTarget.group_id, GroupPushTarget.claimed_at, GroupPush.message)
                .join(GroupChat, GroupChat.id == GroupPushTarget.group_id)
                .join(GroupPush, GroupPush.id == GroupPushTarget.push_id)
                .where(GroupPushTarget.status == "created", GroupPushTarget.msgid == "",
                       GroupPushTarget.claimed_at < now - CLAIM_STALE))
        claims: dict[tuple[int, str], StaleClaim] = {}
        for push_id, owner, chat_id, group_id, claimed_at, message in rows.tuples():
            at = as_utc(claimed_at)
            claim = claims.setdefault((push_id, owner), StaleClaim(push_id, owner, str(message.get("text") or ""),
                                                                   at, at))
            claim.first, claim.last = min(claim.first, at), max(claim.last, at)
            claim.chats[chat_id] = group_id
        return list(claims.values())

    async def _find(self, claim: StaleClaim) -> dict[str, str]:
        """chat_id -> msgid of the claimed groups found in one of the owner's unknown tasks with this text."""
        candidates = await self._owner_tasks(claim)
        async with self.sessions() as session:
            known = set(await session.scalars(select(GroupPushTarget.msgid).where(
                GroupPushTarget.msgid.in_(candidates)).distinct())) if candidates else set()
        found: dict[str, str] = {}
        for msgid in candidates:
            if msgid in known:
                continue
            for chat_id in await self._task_chats(msgid, claim.owner):
                if chat_id in claim.chats:
                    found.setdefault(chat_id, msgid)
        return found

    async def _owner_tasks(self, claim: StaleClaim) -> list[str]:
        start = claim.first - BEFORE
        end = min(claim.last + timedelta(days=1), start + LIST_SPAN)
        body: dict[str, Any] = {"chat_type": "group", "start_time": int(start.timestamp()),
                                "end_time": int(end.timestamp()), "creator": claim.owner, "filter_type": 0,
                                "limit": LIST_PAGE}
        msgids: list[str] = []
        while True:
            answer = await self.api.post(LIST_TASKS, body)
            msgids += [str(task["msgid"]) for task in answer.get("group_msg_list") or []
                       if str((task.get("text") or {}).get("content") or "") == claim.text]
            if not answer.get("next_cursor"):
                return msgids
            body["cursor"] = answer["next_cursor"]

    async def _task_chats(self, msgid: str, owner: str) -> list[str]:
        body: dict[str, Any] = {"msgid": msgid, "userid": owner, "limit": RESULT_PAGE}
        chats: list[str] = []
        while True:
            answer = await self.api.post(SEND_RESULT, body)
            chats += [str(row["chat_id"]) for row in answer.get("send_list") or [] if row.get("chat_id")]
            if not answer.get("next_cursor"):
                return chats
            body["cursor"] = answer["next_cursor"]
