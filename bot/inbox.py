"""The durable inbox: events are stored before WeChat is answered; retries are no-ops.

Callbacks that arrive together share one INSERT and one COMMIT (group commit): the
first caller starts a flush, and whoever arrives while it runs joins the next one. No
callback waits for a timer, and each is answered only after its own rows are committed.
The same transaction claims what this process's inbox worker has room for, which is
then handed to it without a claim of its own (bot/queue_runner.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.queue_runner import QueueRunner
from core.events import InboundEvent
from crm_store.models import InboxItem, utcnow
from crm_store.work_queue import insert_ignoring_duplicates


async def store_events(session: AsyncSession, events: Sequence[InboundEvent]) -> set[str]:
    """Insert events; a retried callback or a re-pulled message is ignored. Returns the new dedup keys."""
    if not events:
        return set()
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
    return await insert_ignoring_duplicates(session, InboxItem, rows)


def _unique(events: Sequence[InboundEvent]) -> list[InboundEvent]:
    seen: dict[str, InboundEvent] = {}
    for event in events:
        seen.setdefault(event.dedup_key, event)
    return list(seen.values())


class InboxWriter:
    """Stores the events of concurrent callbacks in shared transactions."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], inbox: QueueRunner[InboxItem] | None = None,
                 max_batch: int = 500) -> None:
        self.sessions = sessions
        self.inbox = inbox  # this process's inbox worker (idle in a web-only process: it then takes nothing)
        self.max_batch = max_batch
        self._waiting: list[tuple[Sequence[InboundEvent], asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def store(self, events: Sequence[InboundEvent]) -> int:
        """Store durably; returns how many of `events` were new (not retries)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((events, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all(), name="inbox-writer")
        return await future

    async def _flush_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            try:
                async with self.sessions() as session, session.begin():
                    new_keys = await store_events(session, [event for events, _ in batch for event in events])
                    claimed = await self.inbox.claim_stored(session, new_keys) if self.inbox and new_keys else []
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.inbox is not None:
                self.inbox.start(claimed)
                if len(new_keys) > len(claimed):
                    self.inbox.wake()
            for events, future in batch:
                if not future.done():
                    future.set_result(sum(1 for event in _unique(events) if event.dedup_key in new_keys))
