"""The sender's outcomes and "call started" notes, written in shared transactions (group commit).

A send is a few milliseconds at the API; a transaction of its own to record each outcome would
cost as much again. Outcomes that arrive together share one statement and one COMMIT: the
first caller starts a write, and whoever arrives while it runs joins the next one. No caller
waits for a timer, and each returns only after its own outcome is committed (a "call started"
note before the call leaves, as before).

While the store is restarting, a write is tried again each second for as long as the claims
last (`within_s`) rather than leave rows looking interrupted mid-call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.faults import FAULTS, fault_component
from crm_store.models import OutboxItem
from crm_store.queue_batch import Note, Outcome, finish_many, note_many


class ForItem(Protocol):
    """A write about one queue item."""

    @property
    def item_id(self) -> int: ...


Entry = TypeVar("Entry", bound=ForItem)
T = TypeVar("T")
MAX_BATCH = 500


class GroupCommit(Generic[Entry]):
    """Entries of concurrent callers written by one statement per transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession],
                 write: Callable[[AsyncSession, Sequence[Entry]], Awaitable[set[int]]], within_s: float) -> None:
        self.sessions = sessions
        self.write: Callable[[AsyncSession, Sequence[Entry]], Awaitable[set[int]]] = write
        self.within_s = within_s
        self._waiting: list[tuple[Entry, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, entry: Entry) -> bool:
        """Written and committed: True, or False when the item's claim is no longer this process's."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="outbox-outcomes")
        return await future

    async def _write_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                applied = await self._write([entry for entry, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for entry, future in batch:
                if not future.done():
                    future.set_result(entry.item_id in applied)

    async def _write(self, entries: list[Entry]) -> set[int]:
        return await committed(self.sessions, lambda session: self.write(session, entries), self.within_s)


async def committed(sessions: async_sessionmaker[AsyncSession], write: Callable[[AsyncSession], Awaitable[T]],
                    within_s: float) -> T:
    """`write` in a transaction of its own; while the store or Redis is down, tried again each second for up to
    `within_s` (a call has been made: its outcome must not be lost to a restart)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            async with sessions() as session, session.begin():
                return await write(session)
        except Exception as exc:
            component = fault_component(exc)
            if component is None or time.monotonic() >= deadline:
                raise
            FAULTS.seen(component, "outbox.finish", exc, retry="each second while the claims last")
            await asyncio.sleep(1.0)


def outcome_writer(sessions: async_sessionmaker[AsyncSession], within_s: float) -> GroupCommit[Outcome]:
    return GroupCommit(sessions, lambda session, batch: finish_many(session, OutboxItem, batch), within_s)


def note_writer(sessions: async_sessionmaker[AsyncSession], within_s: float) -> GroupCommit[Note]:
    return GroupCommit(sessions, lambda session, batch: note_many(session, OutboxItem, batch), within_s)
