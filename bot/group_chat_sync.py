"""A full sync of customer groups: every group WeCom lists, read in full and applied.

For groups that existed before the bot (or events it missed): `groupchat/list` page by page
(https://developer.work.weixin.qq.com/document/path/92120), `groupchat/get` for each group
(https://developer.work.weixin.qq.com/document/path/92122) with `sync_concurrency` calls in
flight, applied in batches of one transaction each. Each API is paced under `calls_per_minute`
(WeCom limits each API per enterprise per minute, 45009 beyond), leaving room for the bot's
own calls, and within the API's budget shared by every process (bot/api_budget.py). A `group_chat_syncs` row keeps the cursor of the next page once a page is stored,
so a sync stopped by a crash or an API outage continues where it was with the next
`full_sync()`; the page it was in is read again, which applying a group twice makes harmless.
A sync only adds and updates: a group WeCom no longer lists is left as it is (dismissals come
by callback).

One sync runs at a time, across processes: the running row is claimed (`claimed_by`) and kept
fresh (`heartbeat_at`, with every batch's transaction); a second `full_sync` while the lease is
fresh is refused with `SyncAlreadyRunning`, and a unique index on the running row refuses two
that start at the same moment. A sync whose process died is taken over, and continued, once its
lease is stale; should the first process come back to life, its next batch finds its claim gone
and stops (`SyncTakenOver`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

import aiohttp
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.api_budget import ApiBudgets
from bot.group_chat_api import GET_PATH, LIST_PATH, UnknownGroupChat, list_groups, read_group
from bot.runtime import build_apis
from bot.settings import Settings
from bot.wechat_api import ApiError, RetryableApiError, WeChatApi
from core.shared_state import open_shared_state
from crm_store.db import create_engine, session_factory
from crm_store.group_chat_models import GroupChatSync
from crm_store.group_chat_settings import GroupChatSettings
from crm_store.group_chats import GroupInfo, apply_groups
from crm_store.models import as_utc, utcnow

log = logging.getLogger("scrm.groupchat.sync")

T = TypeVar("T")
WINDOW_S = 60.0
RETRY_DELAYS_S = (2.0, 10.0)  # a call refused with a retryable error is tried again after these pauses
STORE_IN_FLIGHT = 2  # batches stored at once: one builds its rows while the store writes the other's
LEASE = timedelta(minutes=5)  # a running sync not heard of for this long is taken to be dead (a batch takes seconds)


class SyncAlreadyRunning(RuntimeError):
    """Another process is running a full sync (its lease is fresh): this one did not start."""


class SyncTakenOver(RuntimeError):
    """This sync's lease went stale and another process took it over: this one stopped."""


class Pacer:
    """At most `per_minute` calls in any 60 s (a sliding window): a call waits for the oldest to age out.
    That is this process's pace, leaving room for the bot's own calls; `shared` then waits for the API's
    budget that every process spends (bot/api_budget.py), so several syncs and senders stay under WeCom's limit.

    A few lines rather than a dependency: no rate limiter is among the project's dependencies."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 shared: Callable[[], Awaitable[None]] | None = None) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.sleep = sleep
        self.shared = shared
        self.sent: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            while True:
                now = self.clock()
                while self.sent and self.sent[0] <= now - WINDOW_S:
                    self.sent.popleft()
                if len(self.sent) < self.per_minute:
                    self.sent.append(now)
                    break
                await self.sleep(self.sent[0] + WINDOW_S - now)
        if self.shared is not None:
            await self.shared()


@dataclass(frozen=True)
class SyncOutcome:
    sync_id: int
    status: str  # done | failed
    groups: int  # groups applied, this run and the runs it continued
    calls: int  # API calls made, likewise
    seconds: float  # this run's
    resumed: bool
    error: str = ""


@dataclass
class _Run:
    """A sync under way: its row's id, and what it has done so far."""

    sync_id: int
    claim: str  # host:pid:token, in the row while this run holds it
    cursor: str
    groups: int
    calls: int
    resumed: bool
    list_pacer: Pacer
    get_pacer: Pacer
    retry_delays_s: Sequence[float]

    async def call(self, pacer: Pacer, request: Callable[[], Awaitable[T]]) -> T:
        """One API call, paced and counted; a retryable refusal tried again after a pause."""
        for delay in (*self.retry_delays_s, None):
            await pacer.wait()
            self.calls += 1
            try:
                return await request()
            except RetryableApiError as exc:
                if delay is None:
                    raise
                log.info("groupchat.sync.retry errcode=%s in_s=%s", exc.errcode, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


async def full_sync(sessions: async_sessionmaker[AsyncSession], api: WeChatApi, settings: GroupChatSettings,
                    restart: bool = False, progress: Callable[[int], None] | None = None,
                    retry_delays_s: Sequence[float] = RETRY_DELAYS_S, lease: timedelta = LEASE,
                    budgets: ApiBudgets | None = None) -> SyncOutcome:
    """Sync every group; continues an unfinished sync unless `restart`. `progress` gets the groups done so far.
    `budgets`: the shared API budgets (default: over the API's shared state, at the default share).

    Raises SyncAlreadyRunning while another process's sync holds a fresh lease."""
    started = time.monotonic()
    budgets = budgets or ApiBudgets(api.state)
    list_pacer, get_pacer = (Pacer(settings.calls_per_minute, shared=partial(budgets.wait, api.credential, path))
                             for path in (LIST_PATH, GET_PATH))
    run = await _start(sessions, restart, retry_delays_s, lease, (list_pacer, get_pacer))
    log.info("groupchat.sync.started id=%s resumed=%s cursor=%s", run.sync_id, run.resumed, bool(run.cursor))
    try:
        while True:
            page = await run.call(run.list_pacer, lambda: list_groups(api, run.cursor, settings.sync_page_size))
            await _sync_page(sessions, api, settings, run, page.chat_ids, page.next_cursor, progress)
            log.info("groupchat.sync.page id=%s groups=%s calls=%s", run.sync_id, run.groups, run.calls)
            if not page.next_cursor:
                break
    except ApiError as exc:  # the API stayed unavailable: stopped where it was, continued next time
        error = f"{type(exc).__name__}: {exc}"[:1000]
        await _finish(sessions, run, "failed", error)
        log.warning("groupchat.sync.failed id=%s groups=%s calls=%s error=%s", run.sync_id, run.groups,
                    run.calls, error)
        return SyncOutcome(run.sync_id, "failed", run.groups, run.calls, time.monotonic() - started, run.resumed,
                           error)
    await _finish(sessions, run, "done")
    seconds = time.monotonic() - started
    log.info("groupchat.sync.done id=%s groups=%s calls=%s seconds=%.1f", run.sync_id, run.groups, run.calls, seconds)
    return SyncOutcome(run.sync_id, "done", run.groups, run.calls, seconds, run.resumed)


async def _start(sessions: async_sessionmaker[AsyncSession], restart: bool, retry_delays_s: Sequence[float],
                 lease: timedelta, pacers: tuple[Pacer, Pacer]) -> _Run:
    """The unfinished sync to continue (the newest, when it is not done), or a new one; claimed by this run."""
    claim = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        async with sessions() as session, session.begin():
            latest = await session.scalar(select(GroupChatSync).order_by(GroupChatSync.id.desc()).limit(1)
                                          .with_for_update())
            now = utcnow()
            if latest is not None and latest.status == "running" and _alive(latest, now, lease):
                raise SyncAlreadyRunning(_running_since(latest, lease))
            resumed = latest is not None and latest.status != "done" and not restart
            if latest is not None and latest.status != "done" and restart:
                latest.status, latest.error, latest.finished_at = "failed", "restarted from the first page", now
                await session.flush()  # no longer the running row: the new one may be
            if not resumed or latest is None:
                latest = GroupChatSync(status="running")
                session.add(latest)
            latest.status, latest.error, latest.claimed_by, latest.heartbeat_at = "running", "", claim, now
            await session.flush()
            return _Run(latest.id, claim, latest.cursor, latest.groups, latest.calls, resumed, *pacers,
                        retry_delays_s)
    except IntegrityError as exc:  # uq_group_chat_syncs_running: another process started one this moment
        raise SyncAlreadyRunning("a sync is already running: another process started one at the same moment") from exc


def _alive(sync: GroupChatSync, now: datetime, lease: timedelta) -> bool:
    return sync.heartbeat_at is not None and as_utc(sync.heartbeat_at) > now - lease


def _running_since(sync: GroupChatSync, lease: timedelta) -> str:
    heard = as_utc(sync.heartbeat_at).strftime("%H:%M:%S") if sync.heartbeat_at else "-"
    return (f"a sync is already running since {as_utc(sync.started_at):%Y-%m-%d %H:%M:%S} UTC, started by "
            f"{sync.claimed_by or 'an unknown process'} (sync {sync.id}, {sync.groups} groups done, last heard of "
            f"at {heard}); it is taken over once not heard of for {int(lease.total_seconds())} s")


async def _sync_page(sessions: async_sessionmaker[AsyncSession], api: WeChatApi, settings: GroupChatSettings,
                     run: _Run, chat_ids: Sequence[str], next_cursor: str,
                     progress: Callable[[int], None] | None) -> None:
    """Read and apply one page's groups, batch by batch; the last batch saves the next page's cursor.

    The next batch is read while earlier ones are stored, and STORE_IN_FLIGHT batches are stored at
    once (each in its own transaction; their groups differ, and a customer two of them meet is made
    once by the identity's unique key): the sync takes as long as the slower of reading and storing.
    The page's last batch, which moves the cursor on, is stored once all the others are."""
    batch_size = max(10, settings.sync_concurrency)
    batches = [chat_ids[start:start + batch_size] for start in range(0, len(chat_ids), batch_size)] or [()]
    page = _Page(sessions, run, progress, run.groups)
    reading = asyncio.ensure_future(_read_batch(api, settings.sync_concurrency, run, batches[0]))
    try:
        for index in range(len(batches)):
            read = await reading
            if index == len(batches) - 1:
                await page.settle()
                await page.store(read, next_cursor)
            else:
                reading = asyncio.ensure_future(_read_batch(api, settings.sync_concurrency, run, batches[index + 1]))
                await page.start(read)
    finally:  # stopped by a failure: what is in flight finishes (every call made is counted), unused
        await asyncio.gather(reading, *page.storing, return_exceptions=True)
    run.groups, run.cursor = page.done, next_cursor


@dataclass
class _Page:
    """The batches of one page being stored, and the groups stored so far (counted in the row with the last)."""

    sessions: async_sessionmaker[AsyncSession]
    run: _Run
    progress: Callable[[int], None] | None
    done: int
    storing: set[asyncio.Future[None]] = field(default_factory=set)

    async def start(self, read: list[tuple[GroupInfo, datetime]]) -> None:
        """Store a batch beside the others in flight, once fewer than STORE_IN_FLIGHT are."""
        while len(self.storing) >= STORE_IN_FLIGHT:
            finished, self.storing = await asyncio.wait(self.storing, return_when=asyncio.FIRST_COMPLETED)
            for future in finished:
                future.result()  # a failed batch stops the page
        self.storing.add(asyncio.ensure_future(self.store(read, None)))

    async def settle(self) -> None:
        """Every batch in flight stored (the first failure raised)."""
        storing, self.storing = self.storing, set()
        for outcome in await asyncio.gather(*storing, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def store(self, read: list[tuple[GroupInfo, datetime]], next_cursor: str | None) -> None:
        async with self.sessions() as session, session.begin():
            await _beat(session, self.run)
            await apply_groups(session, read)
            if next_cursor is not None:
                await _save(session, self.run, self.done + len(read), next_cursor)
        self.done += len(read)
        if self.progress is not None:
            self.progress(self.done)


async def _read_batch(api: WeChatApi, concurrency: int, run: _Run,
                      chat_ids: Sequence[str]) -> list[tuple[GroupInfo, datetime]]:
    """The batch's groups in full, `concurrency` at a time; a group gone since it was listed is skipped.

    After a failure no further call is started, and those in flight are let finish, so that every
    call made is counted before the sync stops."""
    limit = asyncio.Semaphore(concurrency)
    failed = False

    async def one(chat_id: str) -> tuple[GroupInfo, datetime] | None:
        nonlocal failed
        async with limit:
            if failed:
                return None
            try:
                info = await run.call(run.get_pacer, lambda: read_group(api, chat_id))
            except UnknownGroupChat as exc:
                log.info("groupchat.sync.skipped chat_id=%s errcode=%s", chat_id, exc.errcode)
                return None
            except BaseException:
                failed = True
                raise
            return info, utcnow()

    read = await asyncio.gather(*(one(chat_id) for chat_id in chat_ids), return_exceptions=True)
    errors = [entry for entry in read if isinstance(entry, BaseException)]
    if errors:
        raise errors[0]
    return [entry for entry in read if entry is not None and not isinstance(entry, BaseException)]


async def _beat(session: AsyncSession, run: _Run) -> None:
    """Renew the lease, in the batch's transaction; a claim gone (taken over) stops this run, nothing applied."""
    await _claimed(session, run, heartbeat_at=utcnow())


async def _claimed(session: AsyncSession, run: _Run, **values: object) -> None:
    """Write the sync's row while this run still holds it (a guarded UPDATE), else SyncTakenOver."""
    renewed = await session.execute(
        update(GroupChatSync).where(GroupChatSync.id == run.sync_id, GroupChatSync.claimed_by == run.claim,
                                    GroupChatSync.status == "running").values(**values))
    if renewed.rowcount != 1:  # type: ignore[attr-defined]
        log.warning("groupchat.sync.taken_over id=%s claim=%s", run.sync_id, run.claim)
        raise SyncTakenOver(f"sync {run.sync_id} was taken over by another process after its lease went stale")


async def _save(session: AsyncSession, run: _Run, groups: int, cursor: str) -> None:
    await _claimed(session, run, groups=groups, calls=run.calls, cursor=cursor)


async def _finish(sessions: async_sessionmaker[AsyncSession], run: _Run, status: str, error: str = "") -> None:
    async with sessions() as session, session.begin():
        await _claimed(session, run, status=status, error=error, calls=run.calls, finished_at=utcnow(),
                       **({"cursor": ""} if status == "done" else {}))


async def full_sync_from(settings: Settings, restart: bool = False,
                         progress: Callable[[int], None] | None = None) -> SyncOutcome:
    """`full_sync` with the store and the contacts API built from settings (the CLI's way in)."""
    engine = create_engine(settings.store.url)
    state = open_shared_state(settings.redis.url or None)
    try:
        async with aiohttp.ClientSession() as http:
            api = build_apis(settings, http, state)["wecom.contacts"]
            budgets = ApiBudgets(state, settings.sender.budget_share)
            return await full_sync(session_factory(engine), api, settings.groupchats, restart, progress,
                                   budgets=budgets)
    finally:
        await state.close()
        await engine.dispose()
