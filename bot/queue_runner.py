"""A loop that claims items from a work queue (inbox or outbox) and handles them concurrently.

It wakes at once when told new work arrived in this process (`wake()`), and polls so
that work stored by other instances, or put back for a retry, is found too. While a backlog
lasts it claims once a quarter of its slots are free: a claim transaction per batch, not one
per finished item. Stopping finishes what is in flight; anything left is claimed again after
a restart.

Work this process stores can skip the claim: whoever stores it (a callback, a kf pull,
a turn writing its replies) claims, in the same transaction, as many of the new items as
the runner has `room()` for and hands them over with `start()`. A runner that is not
running (nor draining) has no room, so stored work then waits to be claimed as usual.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Generic

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import metrics
from core.faults import FAULTS, Component, fault_component
from crm_store import work_queue
from crm_store.models import QueueItem
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
        self.claim_batch = max(1, concurrency // 4)  # with a backlog, claim once this many slots are free
        self.in_flight: set[asyncio.Task[None]] = set()
        self.paused_until = 0.0
        self.lanes_paused: dict[int, float] = {}  # outbox lane -> until when it and later lanes are not claimed
        self._wake = asyncio.Event()
        self._stopping = False
        self._running = 0  # the loop and drains under way: while none is, nothing is handed over
        # What finishing an item should look for next (else the poll finds work of other processes):
        self._more = True  # work was stored that no claim has looked at yet
        self._wakes = 0  # how often wake() was called: a claim compares it before and after
        self._blocked: frozenset[str] = frozenset()  # queues whose ready items wait behind an unfinished head
        self._backlog = False  # the last claim left queue heads for want of room: older work goes first
        self._queue_of: dict[asyncio.Task[None], str] = {}
        self.last_error: str | None = None
        self._handed_over = metrics.HANDED_OVER.labels(name)

    def wake(self) -> None:
        """New work was stored (or put back) that was not handed over: claim it now."""
        self._more = True
        self._wakes += 1
        self._wake.set()

    async def run(self) -> None:
        log.info("%s.started concurrency=%s", self.name, self.concurrency)
        self._running += 1
        try:
            await self._loop()
        finally:
            self._running -= 1

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before the claim: a wake-up during it is not lost
            claimed = 0
            try:
                claimed = await self.claim_and_start()
            except Exception as exc:  # noqa: BLE001 - the store may be briefly down; keep the loop alive
                self._failed(exc, "claim", f"every {self.poll_interval_s:g}s")
            if claimed and (self._more or self._backlog) and len(self.in_flight) < self.concurrency:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            except TimeoutError:
                pass

    async def claim_and_start(self) -> int:
        free = self._free()
        if free <= 0 or (self._backlog and self.in_flight and free < self.claim_batch):
            return 0  # a backlog is claimed a batch at a time, not a transaction per finished item
        wakes = self._wakes
        async with self.sessions() as session:
            claimed = await work_queue.claim_heads(session, self.model, free, self.claim_ttl_s, self._below_lane())
        if "store" in FAULTS.outages:
            FAULTS.cleared("store")
        self._more = self._wakes != wakes  # what was stored during the claim may be unseen by it
        self._blocked, self._backlog = claimed.blocked, claimed.heads_left
        self.start(claimed.items)
        return len(claimed.items)

    def _free(self, ending: int = 0) -> int:
        if self._stopping or not self._running or asyncio.get_running_loop().time() < self.paused_until:
            return 0
        return max(self.concurrency - len(self.in_flight) + ending, 0)

    def room(self, ending: int = 0) -> int:
        """How many of the items it stores a caller may hand to this runner now (`ending`: the caller's own
        item, about to end). Nothing while older work waits: new work then queues behind it, in order."""
        return 0 if self._backlog else self._free(ending)

    async def claim_stored(self, session: AsyncSession, dedup_keys: Collection[str], ending: int = 0) -> list[Item]:
        """In the transaction that stores them: claim for this runner as many of the new items as it has room
        for (the heads of their queues); `start()` them once that transaction has committed."""
        room = self.room(ending)
        if not room:
            return []
        claimed = await work_queue.claim_stored(session, self.model, dedup_keys, room, self.claim_ttl_s)
        self._handed_over.inc(len(claimed))
        return claimed

    def start(self, items: list[Item]) -> None:
        """Handle items claimed for this runner (by its own claim, or by whoever stored them)."""
        for item in items:
            task = asyncio.create_task(self._run_one(item), name=f"{self.name}-{item.id}")
            self.in_flight.add(task)
            self._queue_of[task] = item.queue_key
            task.add_done_callback(self._done)

    def pause(self, seconds: float, lane: int | None = None) -> None:
        """Stop claiming for a while (the API asked us to slow down); with `lane`, only the outbox rows of that
        lane and later ones (marketing used its share of a budget: replies still go)."""
        until = asyncio.get_running_loop().time() + seconds
        if lane is None:
            self.paused_until = max(self.paused_until, until)
        else:
            self.lanes_paused[lane] = max(self.lanes_paused.get(lane, 0.0), until)

    def _below_lane(self) -> int | None:
        """Claim only lanes below this one (None: every lane): the first lane still paused."""
        now = asyncio.get_running_loop().time()
        return min((lane for lane, until in self.lanes_paused.items() if until > now), default=None)

    async def _run_one(self, item: Item) -> None:
        try:
            await self.handle(item)
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop the loop
            self._failed(exc, "item", "when its claim expires", item.id)

    def _failed(self, exc: Exception, place: str, retry: str, item_id: int | None = None) -> None:
        """A store or Redis outage is one warning (core/faults.py); anything else is a bug: its traceback."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        component = fault_component(exc)
        if component is not None:
            FAULTS.seen(component, f"{self.name}.{place}", exc, retry)
        elif item_id is None:
            log.exception("%s.%s.failed", self.name, place)
        else:
            log.exception("%s.item.crashed id=%s", self.name, item_id)

    def _done(self, task: asyncio.Task[None]) -> None:
        """A slot is free: claim again when that can find something here, namely work stored since the last
        claim, a backlog, or items queued behind the one that just finished. Not after every item."""
        self.in_flight.discard(task)
        queue_key = self._queue_of.pop(task, "")
        if self._more or self._backlog or queue_key in self._blocked:
            self._wake.set()

    async def drain(self, rounds: int = 1000) -> None:
        """Handle everything that is due now, then return (for tests and the CLI)."""
        self._running += 1
        try:
            for _ in range(rounds):
                started = await self.claim_and_start()
                if not started and not self.in_flight:
                    return
                while self.in_flight:  # and what they hand over on the way
                    await asyncio.gather(*list(self.in_flight), return_exceptions=True)
        finally:
            self._running -= 1

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


async def put_back_after_fault(sessions: async_sessionmaker[AsyncSession], item: QueueItem, component: Component,
                               exc: Exception, place: str) -> None:
    """An item stopped by a store or Redis outage: put back without using up an attempt, to be tried
    again after a pause that grows with the outage; with the store itself down, its claim expires instead."""
    delay = min(30.0, max(1.0, FAULTS.down_for_s(component) / 2))
    FAULTS.seen(component, place, exc, retry="put back, tried again after a pause that grows with the outage")
    reason = f"{component} unavailable: {type(exc).__name__}"
    try:
        async with sessions() as session, session.begin():
            await work_queue.retry_later(session, item, delay, reason, refund=True)
    except Exception as again:  # noqa: BLE001 - the store is down too: the claim's expiry brings it back
        second = fault_component(again)
        if second is None:
            raise
        FAULTS.seen(second, f"{place}.put_back", again, retry="when its claim expires")
