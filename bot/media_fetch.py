"""Keeping what customers send: each photo, voice note, video or file is copied from WeChat into the media store.

WeChat keeps temporary media 3 days (`media/get`, on WeCom and on the OA). The turn that receives
such a message only queues its download (`queue_media`, one row in the turn's transaction): the
reply never waits for it. `MediaFetcher`, a scheduled job, claims due rows (crm_store.media_items:
leased, so a crash leaves them to be claimed again), downloads each through its channel's
credential (kf: the WeCom kf app's token; oa: the OA's), puts it in the media store and records the
outcome on the customer's timeline:

    media.stored  {item_id, media_id, kind, key, size, where}
    media.failed  {item_id, media_id, kind, reason, retry}

Whatever is stored goes through `on_stored` in the same transaction: while a rep serves the customer
outside kf, that forwards it to them (bot/media_to_reps.py). A rep's own media in the kf workspace
(a rep_message with content) is queued and kept like the customer's.

Retried, with back-off up to worker.max_attempts, only where retrying can help: WeChat busy (-1) or
asking to slow down (45009), 5xx, timeouts, no connection or no token, the media store unavailable.
An invalid or expired media id (40007: WeChat answers the same for both) and an item over
media.max_bytes fail at once. The job runs alone per process (bot.jobs.every); several processes
share the rows through the claim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.jobs import every
from bot.wechat_api import ApiError, WeChatApi
from core.content import Media, MediaKind
from core.events import InboundEvent
from core.faults import FAULTS, fault_component
from crm_store import media_items
from crm_store.customers import record
from crm_store.media_items import MediaChannel, MediaItem
from crm_store.media_store import MediaError, MediaStore, MediaTooLarge, StoredMedia, clean_content_type
from crm_store.work_queue import backoff_s

log = logging.getLogger("scrm.media")

CREDENTIALS: dict[MediaChannel, str] = {"kf": "wecom.kf", "oa": "oa"}  # the API client of each channel
MEDIA_GET = "media/get"  # the same path on WeCom's base and on the OA's
INVALID_MEDIA_ID = 40007  # unknown or past its 3 days: WeChat does not tell them apart
LEASE_S = 300.0  # a claimed row is due again after this: a 20 MB file at 100 KB/s takes 200 s
DOWNLOAD_WITHIN_S = LEASE_S * 0.8  # a download is cut off before its lease ends, so two never overlap
CONCURRENCY = 4  # downloads at a time per process (an S3 put holds up to one item in memory)
ROUNDS = 100  # claims per run at most; what is left waits for the next run


async def queue_media(session: AsyncSession, customer_id: int, event: InboundEvent) -> bool:
    """In the turn's transaction: queue the download of the media the message carries (kf and OA messages).

    Keyed by the message's inbox key, so a retried callback or a turn run again queues nothing."""
    media, channel = event.content, event.channel
    if not isinstance(media, Media) or channel not in CREDENTIALS or not media.media_id:
        return False
    return await media_items.add(session, customer_id, channel, media.kind, media.media_id, media.safe_filename,
                                 event.dedup_key)


@dataclass(frozen=True)
class Outcome:
    """Why a download did not end in the store, and whether trying again can change that."""

    reason: str
    retry: bool


class MediaFetcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        apis: Mapping[str, WeChatApi],
        store: MediaStore,
        max_attempts: int,
        retry_base_s: float,
        interval_s: float,
    ) -> None:
        self.sessions = sessions
        self.apis = apis
        self.store = store
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.interval_s = interval_s
        self.stored = 0  # counts of this process's outcomes (given up: failed)
        self.failed = 0
        # Called in the transaction that records an item as stored (reps see media: bot/media_to_reps.py);
        # returns the outbox rows it wrote, and on_outbox wakes this process's sender for them.
        self.on_stored: Callable[[AsyncSession, MediaItem, StoredMedia], Awaitable[int]] | None = None
        self.on_outbox: Callable[[], None] = lambda: None

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        every(scheduler, self.interval_s, "media-fetch", self.run_due)

    async def run_due(self) -> int:
        """Download every row due now, CONCURRENCY at a time; how many were tried."""
        tried = 0
        for _ in range(ROUNDS):
            async with self.sessions() as session, session.begin():
                items = await media_items.claim_due(session, CONCURRENCY, LEASE_S)
            if not items:
                break
            await asyncio.gather(*(self._fetch_one(item) for item in items))
            tried += len(items)
            if len(items) < CONCURRENCY:
                break
        return tried

    async def close(self) -> None:
        await self.store.close()

    async def _fetch_one(self, item: MediaItem) -> None:
        try:
            stored = await asyncio.wait_for(self._download(item), DOWNLOAD_WITHIN_S)
        except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded on the row
            await self._record(item, None, _outcome(exc, item))
            return
        await self._record(item, stored, None)

    async def _download(self, item: MediaItem) -> StoredMedia:
        kind: MediaKind = item.kind  # type: ignore[assignment]  # written from a Media's kind
        api = self.apis[CREDENTIALS[item.channel]]  # type: ignore[index]  # written as kf or oa only
        async with api.download(MEDIA_GET, {"media_id": item.media_id}, self.store.limits[kind], kind) as got:
            filename = item.filename or Media(kind, item.media_id, filename=got.filename).safe_filename
            return await self.store.put(got.stream, kind, _content_type(got.content_type), filename)

    async def _record(self, item: MediaItem, stored: StoredMedia | None, outcome: Outcome | None) -> None:
        """The row and the timeline in one transaction; nothing when the claim was lost (the row was taken
        over after its lease: the other fetcher records). A store outage here leaves the lease to end."""
        queued = 0
        try:
            async with self.sessions() as session, session.begin():
                if stored is not None:
                    queued = await self._stored(session, item, stored)
                elif outcome is not None:
                    await self._failed(session, item, outcome)
            if queued:
                self.on_outbox()
        except Exception as exc:
            component = fault_component(exc)
            if component is None:
                raise
            FAULTS.seen(component, "media.fetch.record", exc, retry=f"when its lease ends ({LEASE_S:g}s)")

    async def _stored(self, session: AsyncSession, item: MediaItem, stored: StoredMedia) -> int:
        """The row, the timeline and what the hook queues (outbox rows: returned) in one transaction."""
        if not await media_items.mark_stored(session, item, stored):
            log.warning("media.fetch.claim_lost id=%s", item.id)
            return 0
        await record(session, item.customer_id, "media.stored", {
            "item_id": item.id, "media_id": item.media_id, "kind": item.kind, "key": stored.key,
            "size": stored.size, "where": stored.where})
        self.stored += 1
        log.info("media.fetch.stored id=%s kind=%s size=%s key=%s", item.id, item.kind, stored.size, stored.key)
        return await self.on_stored(session, item, stored) if self.on_stored is not None else 0

    async def _failed(self, session: AsyncSession, item: MediaItem, outcome: Outcome) -> None:
        retry = outcome.retry and item.attempts < self.max_attempts
        if retry:
            delay = backoff_s(item.attempts, self.retry_base_s)
            done = await media_items.retry_later(session, item, delay, outcome.reason)
        else:
            done = await media_items.mark_failed(session, item, outcome.reason)
        if not done:
            log.warning("media.fetch.claim_lost id=%s", item.id)
            return
        await record(session, item.customer_id, "media.failed", {
            "item_id": item.id, "media_id": item.media_id, "kind": item.kind, "reason": outcome.reason,
            "retry": retry})
        if not retry:
            self.failed += 1
        log.warning("media.fetch.failed id=%s kind=%s attempts=%s retry=%s %s", item.id, item.kind, item.attempts,
                    retry, outcome.reason)


def _outcome(exc: Exception, item: MediaItem) -> Outcome:
    """What a failed download means: only a passing trouble (WeChat's, the network's, ours) is retried."""
    if isinstance(exc, MediaTooLarge):
        return Outcome(str(exc), retry=False)
    if isinstance(exc, ApiError) and exc.errcode == INVALID_MEDIA_ID:
        return Outcome(f"invalid or expired media id (WeChat keeps media 3 days): {exc}", retry=False)
    if isinstance(exc, ApiError):
        return Outcome(str(exc), retry=exc.retryable)
    if isinstance(exc, TimeoutError):
        return Outcome(f"the download took longer than {DOWNLOAD_WITHIN_S:g}s", retry=True)
    if isinstance(exc, MediaError | OSError):  # the store unavailable (S3 down, a full disk): ours to fix
        return Outcome(f"media store: {type(exc).__name__}: {exc}", retry=True)
    component = fault_component(exc)
    if component is not None:
        FAULTS.seen(component, "media.fetch", exc, retry="with back-off")
    else:
        log.exception("media.fetch.crashed id=%s", item.id)  # a bug: retried, up to the attempts allowed
    return Outcome(f"{type(exc).__name__}: {exc}"[:1000], retry=True)


def _content_type(value: str) -> str:
    """The type WeChat sent, when it is one a store can keep (else the store's default)."""
    try:
        return clean_content_type(value.strip())
    except ValueError:
        return ""
