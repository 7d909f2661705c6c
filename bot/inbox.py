"""The durable inbox: events are stored before WeChat is answered; retries are no-ops."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from bot.events import InboundEvent
from crm_store.models import InboxItem, utcnow
from crm_store.work_queue import insert_ignoring_duplicates


async def store_events(session: AsyncSession, events: Sequence[InboundEvent]) -> int:
    """Insert events; a retried callback or a re-pulled message is ignored. Returns how many were new."""
    if not events:
        return 0
    now = utcnow()
    rows = [
        {
            "dedup_key": event.dedup_key,
            "queue_key": event.queue_key,
            "channel": event.channel,
            "kind": event.kind,
            "payload": event.to_payload(),
            "status": "pending",
            "attempts": 0,
            "available_at": now,
            "created_at": now,
        }
        for event in _unique(events)
    ]
    result = await insert_ignoring_duplicates(session, InboxItem, rows)
    return len(result.all())


def _unique(events: Sequence[InboundEvent]) -> list[InboundEvent]:
    seen: dict[str, InboundEvent] = {}
    for event in events:
        seen.setdefault(event.dedup_key, event)
    return list(seen.values())
