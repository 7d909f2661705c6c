"""Pulling kf messages: a `kf_msg_or_event` notification says "there is news"; `kf/sync_msg` fetches it.

Each page's messages are stored in the inbox together with the new cursor in one
transaction, so a restart resumes exactly where the last saved page ended: nothing is
re-read twice into the inbox (dedup by msgid) and nothing is skipped. Pulls for one kf
account never overlap, because the notifications share one queue key.

A burst of notifications needs one pull, not one each: a pull that reached the end also
settles every notification that was waiting in the inbox when it began (WeChat notifies
only after the message can be fetched, so those messages are in what the pull read). No
clock is compared: what was stored is what the pull's first statement saw committed.

The messages a page stores pass the inbox once: in the page's transaction, those at the
head of their customer's queue are claimed by this worker (as many as it has room for)
and handed to it straight away, instead of being claimed again in a transaction of
their own. The rest wait in the inbox and are claimed as usual.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channels.wecom import events_from_kf_messages
from bot.inbox import store_events
from bot.queue_runner import QueueRunner
from bot.wechat_api import WeChatApi
from core import metrics
from core.events import InboundEvent
from crm_store import work_queue
from crm_store.kf_cursors import save_kf_cursor, start_of_pull
from crm_store.models import InboxItem

log = logging.getLogger("scrm.kf")

PAGE_LIMIT = 1000
MAX_PAGES = 100  # a safety valve: the next notification continues from the saved cursor


class KfPuller:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], api: WeChatApi) -> None:
        self.sessions = sessions
        self.api = api
        self.inbox: QueueRunner[InboxItem] | None = None  # the runner this pull runs in: it takes what it can

    async def pull(self, item: InboxItem, notification: InboundEvent) -> None:
        open_kfid = notification.account
        async with self.sessions() as session:
            cursor, covered = await start_of_pull(session, open_kfid, item.queue_key)
        for _ in range(MAX_PAGES):
            body = {"cursor": cursor, "token": notification.sync_token, "limit": PAGE_LIMIT, "open_kfid": open_kfid}
            page = await self.api.post("kf/sync_msg", body)
            events = events_from_kf_messages(list(page.get("msg_list") or []))
            cursor = str(page.get("next_cursor") or cursor)
            more = bool(page.get("has_more"))
            async with self.sessions() as session, session.begin():
                new_keys = await store_events(session, events)
                claimed = await self.inbox.claim_stored(session, new_keys, ending=1) if self.inbox else []
                await save_kf_cursor(session, open_kfid, cursor)
                if not more:
                    await work_queue.finish(session, item)
                    await work_queue.finish_covered(session, item, covered, f"covered by the pull of inbox item {item.id}")
            new = len(new_keys)
            metrics.INBOX_STORED.labels("kf").inc(new)
            metrics.INBOX_DUPLICATES.labels("kf").inc(len(events) - new)
            log.info("kf.pulled open_kfid=%s messages=%s new=%s taken=%s has_more=%s", open_kfid, len(events), new,
                     len(claimed), more)
            if self.inbox is not None:
                self.inbox.start(claimed)
                if new > len(claimed):
                    self.inbox.wake()
            if not more:
                return
        async with self.sessions() as session, session.begin():
            await work_queue.finish(session, item)
