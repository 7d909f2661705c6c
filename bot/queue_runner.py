"""A loop that claims items from a work queue (inbox or outbox) and handles them concurrently.

It wakes at once when told new work arrived in this process (`wake()`), and polls so
that work stored by other instances, or put back for a retry, is found too. Stopping
finishes what is in flight; anything left is claimed again after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_store import work_queue
from crm_store.work_queue import Item

log = logging.getLogger("scrm.queue")


class QueueRunner(Generic[Item]):
    def __init__(
        self,
        name: str,
        sessions: async_sessionmaker[AsyncSession],
        model: type[Item],
        handle: Callable[[Item], Awaitable[None]],
        concurrency: int,
        poll_interval_s: float,
        claim_ttl_s: float,
    ) -> None:
        self.name = name
        self.sessions = sessions
        self.model: type[Item] = model
        self.handle: Callable[[Item], Awaitable[None]] = handle
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.claim_ttl_s = claim_ttl_s
        self.in_flight: set[asyncio.Task[None]] = set()
        self.paused_until = 0.0
        self._wake = asyncio.Event()
        self._stopping = False
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        log.info("%s.started concurrency=%s", self.name, self.concurrency)
        while not self._stopping:
            claimed = 0
            try:
                claimed = await self.claim_and_start()
            except Exception as exc:  # noqa: BLE001 - the store may be briefly down; keep the loop alive
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s.claim.failed", self.name)
            if claimed and len(self.in_flight) < self.concurrency:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            except TimeoutError:
                pass

    async def claim_and_start(self) -> int:
        loop = asyncio.get_running_loop()
        free = self.room()
        if free <= 0 or loop.time() < self.paused_until:
            return 0
        async with self.sessions() as session:
            items = await work_queue.claim(session, self.model, free, self.claim_ttl_s)
        self.start(items)
        return len(items)

    def room(self, ending: int = 0) -> int:
        """How many more items this runner may take on now (`ending`: the caller's own, about to end)."""
        return 0 if self._stopping else max(self.concurrency - len(self.in_flight) + ending, 0)

    def start(self, items: list[Item]) -> None:
        """Handle items claimed for this runner (by its own claim, or by whoever stored them)."""
        for item in items:
            task = asyncio.create_task(self._run_one(item), name=f"{self.name}-{item.id}")
            self.in_flight.add(task)
            task.add_done_callback(self._done)

    def pause(self, seconds: float) -> None:
        """Stop claiming for a while (the API asked us to slow down)."""
        self.paused_until = max(self.paused_until, asyncio.get_running_loop().time() + seconds)

    async def _run_one(self, item: Item) -> None:
        try:
            await self.handle(item)
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop the loop
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("%s.item.crashed id=%s", self.name, item.id)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.wake()

    async def drain(self, rounds: int = 1000) -> None:
        """Handle everything that is due now, then return (for tests and the CLI)."""
        for _ in range(rounds):
            started = await self.claim_and_start()
            if self.in_flight:
                await asyncio.gather(*list(self.in_flight), return_exceptions=True)
            elif not started:
                return

    async def stop(self, timeout_s: float) -> None:
        """Stop claiming and let in-flight items finish (up to `timeout_s`)."""
        self._stopping = True
        self.wake()
        if self.in_flight:
            done, pending = await asyncio.wait(list(self.in_flight), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%s.stop.cancelled count=%s (they will be claimed again)", self.name, len(pending))
        log.info("%s.stopped", self.name)
