"""A customer group's change event (`change_external_chat`): the group read in full and applied.

Created and changed groups are read again with `groupchat/get` and applied as a whole
(crm_store/group_chats.py), in one transaction with the inbox item finished: a retried or
duplicated callback, or two events read in a different order, leave the store as WeCom last
described the group. A dismissed group is not read (WeCom no longer knows it): everyone in it
leaves. A group WeCom says it does not know is logged and the item finished: nothing to retry.
API faults (45009, 5xx, timeouts) propagate to the worker, which tries the item again later.

WeCom warns that some of a change is applied asynchronously, so `groupchat/get` may not show it
for a moment (document 92130 suggests waiting about 2 s). When the read still shows the member
version from before the event (its LastMemVer, not its CurMemVer), the read is an early one and the
item is tried again after the worker's back-off, at most STALE_READS times; then what WeCom shows is
applied. A read showing any other version is newer than the event (later joins and leaves moved it
on): it is applied at once, since it holds this change too.

Each customer who joined is handed to the join hook in the same transaction (a live code's
tags, a fission reward); the effects it returns are written as other customers' notifications
are, within the platform's quotas.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.delivery import effect_key
from bot.effects_writer import write_side_effect
from bot.group_chat_api import UnknownGroupChat, read_group
from bot.quota import Ledger
from bot.wechat_api import WeChatApi
from core.events import Effect, InboundEvent, Note, Notify, Reply
from crm_store import work_queue
from crm_store.customers import record
from crm_store.group_chat_models import GroupChat, GroupChatMember
from crm_store.group_chats import GroupApplied, apply_group, dismiss_group
from crm_store.models import InboxItem, utcnow

log = logging.getLogger("scrm.groupchat")

STALE_READS = 2


class GroupReadTooEarly(Exception):
    """groupchat/get does not show the change the event announced yet: tried again after a back-off."""


JoinHook = Callable[[AsyncSession, GroupChat, GroupChatMember], Awaitable[Sequence[Effect]]]


class GroupChatEvents:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], api: WeChatApi, agent_id: int = 0,
                 on_join: JoinHook | None = None) -> None:
        self.sessions = sessions
        self.api = api  # the contacts credential's
        self.agent_id = agent_id
        self.on_join = on_join

    async def handle(self, item: InboxItem, event: InboundEvent) -> int:
        """Apply one change event; the number of outbox rows written (the join hook's effects)."""
        chat_id, change = event.sender, str(event.extra.get("change_type", ""))
        if change == "dismiss":
            return await self._dismiss(item, chat_id)
        try:
            info = await read_group(self.api, chat_id)
        except UnknownGroupChat as exc:
            log.warning("groupchat.event.unknown chat_id=%s change=%s errcode=%s", chat_id, change, exc.errcode)
            async with self.sessions() as session, session.begin():
                await work_queue.finish(session, item, "done", str(exc)[:1000])
            return 0
        before, announced = str(event.extra.get("last_mem_ver") or ""), str(event.extra.get("cur_mem_ver") or "")
        if before and info.member_version == before != announced and item.attempts <= STALE_READS:
            raise GroupReadTooEarly(f"group {chat_id}: member version {info.member_version or '-'} read, "
                                    f"{announced} announced")
        removed = event.extra.get("update_detail") == "del_member"
        quit_scene = int(event.extra.get("quit_scene") or 0) if removed else None
        async with self.sessions() as session, session.begin():
            applied = await apply_group(session, info, utcnow(), quit_scene)
            wrote = await self._joined(session, item, applied)
            await work_queue.finish(session, item)
        log.info("groupchat.event.applied chat_id=%s change=%s detail=%s created=%s joined=%s left=%s",
                 chat_id, change, event.extra.get("update_detail", ""), applied.created, len(applied.joined),
                 len(applied.left))
        return wrote

    async def _dismiss(self, item: InboxItem, chat_id: str) -> int:
        async with self.sessions() as session, session.begin():
            applied = await dismiss_group(session, chat_id, utcnow())
            await work_queue.finish(session, item)
        if applied is None:
            log.warning("groupchat.event.dismiss_unknown chat_id=%s", chat_id)
        else:
            log.info("groupchat.event.dismissed chat_id=%s left=%s", chat_id, len(applied.left))
        return 0

    async def _joined(self, session: AsyncSession, item: InboxItem, applied: GroupApplied) -> int:
        """The join hook's effects for each customer who joined, written as notifications are."""
        if self.on_join is None:
            return 0
        ledger = Ledger(session)
        wrote = 0
        for member in applied.joined:
            if member.kind != "customer" or member.customer_id is None:
                continue
            for effect in await self.on_join(session, applied.group, member):
                wrote += await self._write(session, effect_key(item.dedup_key, wrote), effect, member.customer_id,
                                           ledger)
        await ledger.flush()
        return wrote

    async def _write(self, session: AsyncSession, key: str, effect: Effect, customer_id: int, ledger: Ledger) -> int:
        if isinstance(effect, Note):  # on the timeline of the customer who joined
            await record(session, customer_id, effect.kind, effect.data)
            return 0
        if isinstance(effect, Reply):  # the bot cannot speak in the group: to the customer, where they chat
            effect = Notify(customer_id, effect.text, "group.joined")
        return await write_side_effect(session, key, effect, self.agent_id, ledger)
