"""The media download queue: one row per image, voice note, video or file a customer sent, until it is kept.

The turn that received the message writes the row, in its own transaction, keyed by the message's
inbox dedup key: a retried callback or a turn run again finds it there and queues nothing. A
fetcher (bot/media_fetch.py) claims due rows, downloads them from WeChat into the media store and
marks them `stored` (with the store's key, size, hash and type) or `failed` (with the reason).

There is no `claimed` status: claiming a row moves its `due_at` past the download's longest run (a
lease) and counts the attempt, in one conditional UPDATE (on PostgreSQL after `FOR UPDATE SKIP
LOCKED`, so fetchers on several machines share the rows). A fetcher that crashes leaves the row
pending, due again when its lease ends. Finishing checks the attempt it claimed, so a fetcher whose
lease ran out and was taken over cannot record its late result after the other one.

    pending ──claim──► pending (due after the lease, attempts + 1) ──► stored
                                   │                               ├─► failed (permanent, or out of attempts)
                                   └── retry_later: due after a back-off
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import CTE, BigInteger, ForeignKey, Index, String, Text, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm_store.dialect_insert import dialect_insert
from crm_store.media_store import StoredMedia
from crm_store.models import Base, BigId, Customer, utcnow

MediaStatus = Literal["pending", "stored", "failed"]
MediaChannel = Literal["kf", "oa"]
PENDING = "status = 'pending'"
FILENAME_MAX = 255


class MediaItem(Base):
    __tablename__ = "media_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    channel: Mapped[str] = mapped_column(String(8))  # kf | oa: whose media/get, with whose token
    kind: Mapped[str] = mapped_column(String(8))  # image | voice | video | file
    media_id: Mapped[str] = mapped_column(Text)  # WeChat's, valid 3 days from the message
    filename: Mapped[str] = mapped_column(String(FILENAME_MAX), default="")  # Media.safe_filename: data, not a path
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)  # the message's inbox key
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    due_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    key: Mapped[str | None] = mapped_column(String(120))  # the media store's, once stored
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    content_type: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_media_items_due", "due_at", "id", postgresql_where=text(PENDING), sqlite_where=text(PENDING)),
        Index("ix_media_items_customer", "customer_id", "id"),
    )


async def add(session: AsyncSession, customer_id: int, channel: MediaChannel, kind: str, media_id: str,
              filename: str, dedup_key: str) -> bool:
    """Queue a download in the caller's transaction; False when this message's row is already there."""
    statement = dialect_insert(session, MediaItem).values(
        customer_id=customer_id, channel=channel, kind=kind, media_id=media_id, filename=filename[:FILENAME_MAX],
        dedup_key=dedup_key, status="pending", attempts=0, due_at=utcnow(), created_at=utcnow(),
    ).on_conflict_do_nothing(index_elements=["dedup_key"]).returning(MediaItem.id)
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def claim_due(session: AsyncSession, limit: int, lease_s: float) -> list[MediaItem]:
    """Up to `limit` due rows, oldest due first, each leased for `lease_s` and its attempt counted.

    The caller commits, so the lease is seen by other fetchers before any download starts."""
    now = utcnow()
    candidates = (
        select(MediaItem.id).where(MediaItem.status == "pending", MediaItem.due_at <= now)
        .order_by(MediaItem.due_at, MediaItem.id).limit(limit).with_for_update(skip_locked=True)
    )
    ids = list((await session.scalars(candidates)).all())
    if not ids:
        return []
    claimed = await session.scalars(
        update(MediaItem)
        .where(MediaItem.id.in_(ids), MediaItem.status == "pending", MediaItem.due_at <= now)
        .values(attempts=MediaItem.attempts + 1, due_at=now + timedelta(seconds=lease_s))
        .returning(MediaItem)
        .execution_options(synchronize_session=False)
    )
    return sorted(claimed.all(), key=lambda item: item.id)


async def mark_stored(session: AsyncSession, item: MediaItem, stored: StoredMedia) -> bool:
    """Record where the item went (and the name WeChat gave it, when the message had none: an OA photo);
    False when the claim was lost (another fetcher took the row over)."""
    return await _finish(session, item, status="stored", last_error=None, key=stored.key, size=stored.size,
                         sha256=stored.sha256, content_type=stored.content_type,
                         filename=(item.filename or stored.filename)[:FILENAME_MAX])


async def retry_later(session: AsyncSession, item: MediaItem, delay_s: float, reason: str) -> bool:
    """Due again after `delay_s`, with the reason; False when the claim was lost."""
    return await _finish(session, item, due_at=utcnow() + timedelta(seconds=delay_s), last_error=reason[:1000])


async def mark_failed(session: AsyncSession, item: MediaItem, reason: str) -> bool:
    """Given up, with the reason (expired or invalid id, too large, out of attempts); False when the claim was lost."""
    return await _finish(session, item, status="failed", last_error=reason[:1000])


async def _finish(session: AsyncSession, item: MediaItem, **values: Any) -> bool:
    """Update the row only while it is still this claim's: pending, at the attempt claimed."""
    result = await session.execute(
        update(MediaItem)
        .where(MediaItem.id == item.id, MediaItem.attempts == item.attempts, MediaItem.status == "pending")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], result).rowcount == 1


async def for_customer(session: AsyncSession, customer_id: int) -> list[MediaItem]:
    """A customer's media, oldest first (what they sent, and whether it was kept)."""
    rows = await session.scalars(select(MediaItem).where(MediaItem.customer_id == customer_id)
                                 .order_by(MediaItem.id))
    return list(rows.all())


async def latest_stored(session: AsyncSession, customer_id: int) -> MediaItem | None:
    """The customer's most recent item that is kept (a rep's card links to it), or None."""
    return await session.scalar(select(MediaItem).where(MediaItem.customer_id == customer_id,
                                                        MediaItem.status == "stored")
                                .order_by(MediaItem.id.desc()).limit(1))


# ---------------------------------------------------------------- reading (the admin CLI)

RECENT = 20  # a customer's card lists this many, newest first


@dataclass(frozen=True)
class MediaLine:
    """One received item as people read it: what came, when, and where it is kept or why it is not."""

    id: int
    customer_id: int
    channel: str  # kf | oa
    kind: str  # image | voice | video | file
    filename: str  # the customer's name for it: data, never a path
    status: str  # pending | stored | failed
    size: int | None  # once stored
    content_type: str | None
    key: str | None  # the media store's, once stored
    sha256: str | None
    attempts: int
    last_error: str | None  # why it failed, or why the last attempt of a pending item did not work
    received_at: datetime


def _line(item: MediaItem) -> MediaLine:
    return MediaLine(item.id, item.customer_id, item.channel, item.kind, item.filename, item.status, item.size,
                     item.content_type, item.key, item.sha256, item.attempts, item.last_error, item.created_at)


async def media_line(session: AsyncSession, item_id: int) -> MediaLine | None:
    item = await session.get(MediaItem, item_id)
    return None if item is None else _line(item)


async def received(session: AsyncSession, *, customer_id: int | None = None, status: MediaStatus | None = None,
                   kind: str | None = None, limit: int = RECENT) -> list[MediaLine]:
    """Received items, newest first: a customer's (with those of customers merged into them), or everyone's."""
    query = select(MediaItem).order_by(MediaItem.id.desc()).limit(limit)
    if customer_id is not None:
        query = query.where(MediaItem.customer_id.in_(select(_merged_into(customer_id).c.id)))
    if status is not None:
        query = query.where(MediaItem.status == status)
    if kind is not None:
        query = query.where(MediaItem.kind == kind)
    return [_line(item) for item in (await session.scalars(query)).all()]


def _merged_into(customer_id: int) -> CTE:
    """The customer and everyone merged into them, at any depth: a merge moves the timeline, not these rows."""
    tree = select(Customer.id).where(Customer.id == customer_id).cte("merged", recursive=True)
    return tree.union(select(Customer.id).where(Customer.merged_into_id == tree.c.id))
