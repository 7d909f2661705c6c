"""Sends due group pushes as owner-confirmed group-message tasks, once, on any number of processes.

For each due push, per owner, up to 2,000 groups (add_msg_template's chat_id_list, document
https://developer.work.weixin.qq.com/document/path/92135) go in one `chat_type: "group"` task:

    claim (one transaction): pending targets of one owner, row-locked (SKIP LOCKED) and guarded
      by `status = 'pending'`; groups that used their month's group messages (WeCom: as many as
      the month has days; counted from our own tasks, the groups' rows locked) → `limited` with
      the reason (never sent); the rest → `created` with `claimed_at`
    call add_msg_template (paced to `calls_per_minute`, within the API's shared budget)
    store the msgid on the claimed targets (a second transaction)

The rule for a crash between the call and storing the msgid: a `created` target without a
msgid is never put in a new task by the claim (it is not pending). Once its claim is older than
CLAIM_STALE (far longer than a call can take) bot/group_push_recovery.py asks WeCom which tasks the owner
has (`get_groupmsg_list_v2`, document 93338), and for each one we do not know with the same text,
which groups it holds (`get_groupmsg_send_result`): groups found there take that msgid; the
rest certainly were not sent and are pending again. An answer lost in transit (timeout, 5xx)
is the same case. A refusal (an errcode) certainly had no effect: 45009 / -1 put the claim
back for the next run, anything else fails those targets with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.api_budget import ApiBudgets
from bot.group_push_recovery import CLAIM_STALE, ClaimRecovery, release_claim, store_msgid
from bot.wechat_api import ApiError, WeChatApi
from crm_store.group_chat_models import GroupChat, GroupPush, GroupPushTarget
from crm_store.group_chat_settings import GroupChatSettings
from crm_store.group_pushes import OPEN
from crm_store.models import as_utc, utcnow

log = logging.getLogger("scrm.groupchat")

GROUP_TASK = "externalcontact/add_msg_template"
MAX_CHATS = 2000  # chat_id_list: "最多可一次指定2000个客户群" (document 92135)
COUNTED = ("created", "sent", "unsent")  # a group's tasks that count against its month (failed ones do not)


@dataclass
class DispatchOutcome:
    """What one run did; `seconds` makes it the dispatch-rate figure (tasks/s, groups/s)."""

    pushes: int = 0
    tasks: int = 0
    groups: int = 0  # groups put in tasks
    limited: int = 0
    failed: int = 0
    recovered: int = 0  # groups whose task was found again after a cut-off call
    released: int = 0  # groups of a cut-off call found in no task: pending again
    paused: bool = False  # WeCom asked us to slow down: the rest waits for the next run
    seconds: float = 0.0

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.seconds if self.seconds else 0.0

    @property
    def groups_per_s(self) -> float:
        return self.groups / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Claim:
    """Groups of one owner, claimed for one task of one push."""

    push_id: int
    owner: str
    group_ids: tuple[int, ...]
    chat_ids: tuple[str, ...]
    message: dict[str, Any]


class Pacer:
    """At most `per_minute` calls a minute from this process, evenly spaced (no bursts for WeCom to refuse);
    `shared` then waits for the API's budget every process spends (bot/api_budget.py)."""

    def __init__(self, per_minute: int, shared: Callable[[], Awaitable[None]] | None = None) -> None:
        self.interval = 60.0 / per_minute
        self.next_at = 0.0
        self.shared = shared

    async def wait(self) -> None:
        now = time.monotonic()
        if self.next_at > now:
            await asyncio.sleep(self.next_at - now)
        self.next_at = max(now, self.next_at) + self.interval
        if self.shared is not None:
            await self.shared()


def task_body(message: dict[str, Any], owner: str, chat_ids: Sequence[str]) -> dict[str, Any]:
    """add_msg_template's body for a group task: text and attachments as document 92135 spells them."""
    body: dict[str, Any] = {"chat_type": "group", "sender": owner, "chat_id_list": list(chat_ids),
                            "allow_select": False}
    if message.get("text"):
        body["text"] = {"content": message["text"]}
    attachments = [{"msgtype": kind, kind: message[kind]} for kind in ("link", "miniprogram") if message.get(kind)]
    if attachments:
        body["attachments"] = attachments
    return body


def month_start(now: datetime, zone: ZoneInfo) -> datetime:
    """The start of `now`'s natural month in the brand's zone, in UTC (WeCom counts natural months)."""
    local = as_utc(now).astimezone(zone)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


class GroupPushDispatcher:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], api: WeChatApi, settings: GroupChatSettings,
                 per_group_month: int | None = None, timezone: str = "Asia/Shanghai",
                 budgets: ApiBudgets | None = None) -> None:
        """`per_group_month`: the group messages a group may receive in a natural month; None: WeCom's rule now,
        the month's number of days ("每月最多可接收条数为当月天数", document 92135). `budgets`: the API budgets
        shared by every process (default: over the API's shared state, at the default share)."""
        self.sessions = sessions
        self.api = api
        self.settings = settings
        self.per_group_month = per_group_month
        self.zone = ZoneInfo(timezone)
        self.pacer = Pacer(settings.calls_per_minute,
                           partial((budgets or ApiBudgets(api.state)).wait, api.credential, GROUP_TASK))
        self.recovery = ClaimRecovery(sessions, api)
        # Called after WeCom answered and before the msgid is stored: where a crash is simulated in tests.
        self.on_task_created: Callable[[Claim, str], Awaitable[None]] | None = None

    async def dispatch_due(self, now: datetime | None = None) -> DispatchOutcome:
        """Recover cut-off claims, then put every due push's pending groups in tasks."""
        started = time.perf_counter()
        outcome = DispatchOutcome()
        recovered, released = await self.recovery.recover(now or utcnow())
        outcome.recovered, outcome.released = recovered, released
        async with self.sessions() as session:
            due = list(await session.scalars(
                select(GroupPush.id).where(GroupPush.status.in_(OPEN), GroupPush.scheduled_at <= (now or utcnow()))
                .order_by(GroupPush.scheduled_at, GroupPush.id)))
        for push_id in due:
            if outcome.paused:
                break
            outcome.pushes += 1
            while not outcome.paused and (claim := await self._claim(push_id, now or utcnow(), outcome)):
                await self._send(claim, outcome)
            await self._finish(push_id)
        outcome.seconds = time.perf_counter() - started
        if outcome.tasks or outcome.limited or outcome.failed:
            log.info("groupchat.push.dispatched pushes=%s tasks=%s groups=%s limited=%s failed=%s", outcome.pushes,
                     outcome.tasks, outcome.groups, outcome.limited, outcome.failed)
        return outcome

    # ------------------------------------------------------------ claim

    async def _claim(self, push_id: int, now: datetime, outcome: DispatchOutcome) -> Claim | None:
        async with self.sessions() as session, session.begin():
            push = await session.scalar(select(GroupPush).where(GroupPush.id == push_id).with_for_update())
            if push is None or push.status not in OPEN:
                return None
            if push.status == "scheduled":
                outcome.failed += await self._refresh_owners(session, push_id)
                push.status = "sending"
            owner = await session.scalar(
                select(GroupPushTarget.owner_userid).where(GroupPushTarget.push_id == push_id,
                                                           GroupPushTarget.status == "pending")
                .order_by(GroupPushTarget.owner_userid).limit(1))
            if owner is None:
                return None
            candidates = list(await session.scalars(
                select(GroupPushTarget.group_id).where(GroupPushTarget.push_id == push_id,
                                                       GroupPushTarget.status == "pending",
                                                       GroupPushTarget.owner_userid == owner)
                .order_by(GroupPushTarget.group_id).limit(MAX_CHATS).with_for_update(skip_locked=True)))
            if not candidates:
                return None
            over = await self._over_limit(session, candidates, now)
            await self._mark(session, push_id, sorted(over), "limited", now,
                             f"the group had its {self.month_limit(now)} group messages this month (WeCom's limit)")
            outcome.limited += len(over)
            claimed = await self._mark(session, push_id, [g for g in candidates if g not in over], "created", now)
            if not claimed:
                return Claim(push_id, owner, (), (), {})  # all limited: look for the next owner
            chats = dict((await session.execute(
                select(GroupChat.id, GroupChat.chat_id).where(GroupChat.id.in_(claimed)))).tuples().all())
            return Claim(push_id, owner, tuple(claimed), tuple(chats[g] for g in claimed), dict(push.message))

    async def _refresh_owners(self, session: AsyncSession, push_id: int) -> int:
        """Groups change owners (a rep leaves): the task goes to the owner now. Dismissed groups fail."""
        group = select(GroupChat).where(GroupChat.id == GroupPushTarget.group_id)
        await session.execute(
            update(GroupPushTarget).where(GroupPushTarget.push_id == push_id, GroupPushTarget.status == "pending")
            .values(owner_userid=group.with_only_columns(GroupChat.owner_userid).scalar_subquery())
            .execution_options(synchronize_session=False))
        gone = await session.execute(
            update(GroupPushTarget).where(
                GroupPushTarget.push_id == push_id, GroupPushTarget.status == "pending",
                group.with_only_columns(GroupChat.id).where(GroupChat.status != "active").exists())
            .values(status="failed", reason="the group was dismissed").execution_options(synchronize_session=False))
        return int(gone.rowcount or 0)  # type: ignore[attr-defined]

    async def _over_limit(self, session: AsyncSession, group_ids: list[int], now: datetime) -> set[int]:
        """Groups whose month of group messages is used (their rows locked first: two pushes at once agree)."""
        await session.execute(select(GroupChat.id).where(GroupChat.id.in_(group_ids)).order_by(GroupChat.id)
                              .with_for_update())
        rows = await session.execute(
            select(GroupPushTarget.group_id, func.count()).where(
                GroupPushTarget.group_id.in_(group_ids), GroupPushTarget.status.in_(COUNTED),
                GroupPushTarget.claimed_at >= month_start(now, self.zone))
            .group_by(GroupPushTarget.group_id))
        return {group_id for group_id, count in rows.tuples() if count >= self.month_limit(now)}

    def month_limit(self, now: datetime) -> int:
        if self.per_group_month is not None:
            return self.per_group_month
        local = as_utc(now).astimezone(self.zone).date()
        return ((local.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)).day

    @staticmethod
    async def _mark(session: AsyncSession, push_id: int, group_ids: list[int], status: str, now: datetime,
                    reason: str = "") -> list[int]:
        """Pending targets → `status`, guarded by `status = 'pending'`: only the rows returned are ours."""
        if not group_ids:
            return []
        values: dict[str, Any] = {"status": status, "reason": reason}
        if status == "created":
            values["claimed_at"] = now
        rows = await session.execute(
            update(GroupPushTarget).where(GroupPushTarget.push_id == push_id, GroupPushTarget.group_id.in_(group_ids),
                                          GroupPushTarget.status == "pending")
            .values(**values).returning(GroupPushTarget.group_id).execution_options(synchronize_session=False))
        return sorted(int(group_id) for group_id in rows.scalars())

    # ------------------------------------------------------------ send

    async def _send(self, claim: Claim, outcome: DispatchOutcome) -> None:
        if not claim.group_ids:
            return
        await self.pacer.wait()
        try:
            answer = await self.api.post(GROUP_TASK, task_body(claim.message, claim.owner, claim.chat_ids))
        except ApiError as exc:
            await self._refused(claim, exc, outcome)
            return
        msgid = str(answer.get("msgid") or "")
        if self.on_task_created is not None:
            await self.on_task_created(claim, msgid)
        failed = {str(chat) for chat in answer.get("fail_list") or []}
        await store_msgid(self.sessions, claim.push_id, claim.group_ids, msgid)
        if failed:
            await self._fail(claim, [g for g, c in zip(claim.group_ids, claim.chat_ids, strict=True) if c in failed],
                             "in add_msg_template's fail_list", outcome, task=True)
        outcome.tasks += 1
        outcome.groups += len(claim.group_ids) - len(failed)
        log.info("groupchat.push.task push=%s owner=%s groups=%s msgid=%s", claim.push_id, claim.owner,
                 len(claim.group_ids), msgid)

    async def _refused(self, claim: Claim, exc: ApiError, outcome: DispatchOutcome) -> None:
        if not exc.refused:  # the outcome is unknown: the claim stays, recover_claims settles it
            log.warning("groupchat.push.unknown push=%s owner=%s groups=%s: %s (looked up after %s)", claim.push_id,
                        claim.owner, len(claim.group_ids), exc, CLAIM_STALE)
            return
        if exc.retryable:
            await release_claim(self.sessions, claim.push_id, claim.group_ids)
            outcome.paused = True
            log.warning("groupchat.push.paused push=%s: %s", claim.push_id, exc)
            return
        await self._fail(claim, list(claim.group_ids), f"WeCom refused: {exc.errcode} {exc.errmsg}"[:200], outcome)

    async def _fail(self, claim: Claim, group_ids: list[int], reason: str, outcome: DispatchOutcome,
                    task: bool = False) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(GroupPushTarget).where(GroupPushTarget.push_id == claim.push_id,
                                              GroupPushTarget.group_id.in_(group_ids),
                                              GroupPushTarget.status == "created")
                .values(status="failed", reason=reason).execution_options(synchronize_session=False))
        outcome.failed += len(group_ids)
        log.warning("groupchat.push.failed push=%s owner=%s groups=%s%s: %s", claim.push_id, claim.owner,
                    len(group_ids), " (task made)" if task else "", reason)

    async def _finish(self, push_id: int) -> None:
        """A push whose every group is in a task (or limited, failed) is sent."""
        async with self.sessions() as session, session.begin():
            waiting = await session.scalar(
                select(func.count()).select_from(GroupPushTarget).where(
                    GroupPushTarget.push_id == push_id,
                    (GroupPushTarget.status == "pending")
                    | and_(GroupPushTarget.status == "created", GroupPushTarget.msgid == "")))
            if not waiting:
                await session.execute(update(GroupPush).where(GroupPush.id == push_id, GroupPush.status == "sending")
                                      .values(status="sent"))
