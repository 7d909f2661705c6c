"""A customer's photos and files reach the rep serving them outside kf, through the self-built app.

In kf, WeCom itself shows the customer's messages in the rep's kf workspace: nothing to do. An
OA customer's messages reach only the bot; while a rep has taken the customer (an open handoff in
status taken), the handoff gate keeps the bot quiet, and this forwards what they send once its copy
is kept: the media fetcher calls `forward` in the transaction that records `media.stored`
(bot/media_fetch.py), so a crash can neither lose nor double the forward. Two app messages go to
the rep, in this order on the rep's queue:

* the item itself, an image (JPG or PNG, what the app's image message takes) or else a file,
  uploaded from the media store with the app's credential just before the call (bot/media_uploads.py);
* a text with a signed link to the stored copy (bot/media_links.py), which keeps working for
  media.link_ttl_s, after WeChat's 3 days and for items too large to forward.

Only what arrived after the rep took the customer is forwarded; the card that offered the customer
links to the latest item received before (flows/handoff_desk.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession

from bot.delivery import queue_call, rep_call, rep_media_call
from core.events import ToRep
from crm_store.customers import record
from crm_store.handoff_models import Handoff
from crm_store.handoffs import open_handoff_of
from crm_store.media_items import MediaItem
from crm_store.media_store import StoredMedia
from crm_store.models import Customer, Lane, as_utc
from flows.handoff_desk import MEDIA_LABELS

log = logging.getLogger("scrm.media")

APP_IMAGE_TYPES = frozenset({"image/jpeg", "image/png"})  # the app's image message: JPG or PNG; others go as files


class RepMedia:
    def __init__(self, link: Callable[[int], str], agent_id: int, link_ttl_s: int) -> None:
        self.link = link  # item id -> signed URL ("" when links are off)
        self.agent_id = agent_id
        self.link_days = max(1, link_ttl_s // 86400)

    async def forward(self, session: AsyncSession, item: MediaItem, stored: StoredMedia) -> int:
        """In the transaction that records the item as stored: the rep's two app messages; outbox rows written."""
        handoff = await open_handoff_of(session, item.customer_id)
        if handoff is None or not _served_outside_kf(handoff, item) or handoff.rep_userid is None:
            return 0
        rep = handoff.rep_userid
        customer = await session.get(Customer, item.customer_id)
        name = (customer.display_name if customer else "") or "客户"
        content_type = stored.content_type.split(";", 1)[0].strip().lower()
        msgtype = "image" if item.kind == "image" and content_type in APP_IMAGE_TYPES else "file"
        filename = item.filename or stored.filename
        queue_call(session, f"media:{item.id}#0", rep_media_call(rep, self.agent_id, msgtype, stored.key, filename),
                   queue_key=f"rep:{rep}", lane=Lane.TRANSACTIONAL)
        text = f"{name}（{item.customer_id}）发来{MEDIA_LABELS.get(item.kind, '文件')}" + (f"「{filename}」" if filename else "")
        link = self.link(item.id)
        text += f'：<a href="{link}">查看原件</a>（{self.link_days} 天内有效）' if link else "。"
        queue_call(session, f"media:{item.id}#1", rep_call(ToRep(rep, text), self.agent_id), queue_key=f"rep:{rep}",
                   lane=Lane.TRANSACTIONAL)
        await record(session, item.customer_id, "media.forwarded", {"item_id": item.id, "rep": rep, "as": msgtype,
                                                                    "handoff": handoff.id})
        log.info("media.forward.queued item=%s rep=%s as=%s", item.id, rep, msgtype)
        return 2


def _served_outside_kf(handoff: Handoff, item: MediaItem) -> bool:
    """A rep took the customer before the item arrived, and not in kf (WeCom shows kf messages to the rep)."""
    if handoff.status != "taken" or handoff.kf_account or handoff.taken_at is None:
        return False
    return as_utc(item.created_at) >= as_utc(handoff.taken_at)
