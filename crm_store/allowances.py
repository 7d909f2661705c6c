"""The quota ledger in the store: each customer's allowance per channel, and the messages held for later.

A row per (customer, channel) holds `core.allowance.Allowance` as JSON: what the customer's
last message and last click/follow/scan earned, what the bot has queued against them, and
(kf) the session's state. Writers read it locked (`FOR UPDATE` on PostgreSQL; SQLite has one
writer at a time), so a turn and another customer's notification cannot both spend the last
message. A notification that finds no allowance is held (`held_messages`) until the
customer's next message earns one, or until it is stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ForeignKey, Index, PrimaryKeyConstraint, String, Text, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.allowance import QUOTA_CHANNELS, Allowance, Grant, QuotaChannel
from crm_store.dialect_insert import dialect_insert
from crm_store.models import Base, BigId, as_utc, utcnow

HOLD_FOR = timedelta(days=7)  # a held notification older than this is stale: dropped, not sent


class SendAllowance(Base):
    __tablename__ = "send_allowances"

    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    channel: Mapped[str] = mapped_column(String(8))
    ledger: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (PrimaryKeyConstraint("customer_id", "channel"),)


class HeldMessage(Base):
    """A message to a customer that no allowance could carry when it was written."""

    __tablename__ = "held_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)  # the outbox key it would have had
    text: Mapped[str] = mapped_column(Text)
    about: Mapped[str] = mapped_column(String(64), default="")
    held_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_held_messages_customer", "customer_id", "id"),)


def to_data(allowance: Allowance) -> dict[str, Any]:
    return {"message": _grant_data(allowance.message), "event": _grant_data(allowance.event),
            "session": allowance.session}


def from_data(channel: QuotaChannel, data: dict[str, Any] | None) -> Allowance:
    data = data or {}
    session = data.get("session")
    return Allowance(channel, _grant(data.get("message")), _grant(data.get("event")),
                     None if session is None else int(session))


def _grant_data(grant: Grant | None) -> dict[str, Any] | None:
    return None if grant is None else asdict(grant)


def _grant(data: Any) -> Grant | None:
    if not isinstance(data, dict):
        return None
    return Grant(str(data["action"]), float(data["at"]), int(data["allowed"]), float(data["until"]),
                 int(data.get("used", 0)))


async def load(session: AsyncSession, customer_id: int, channel: str, lock: bool = True) -> Allowance:
    """The customer's allowance on `channel` (empty when the customer never earned one), locked for update."""
    query = select(SendAllowance.ledger).where(SendAllowance.customer_id == customer_id,
                                               SendAllowance.channel == channel)
    data = await session.scalar(query.with_for_update() if lock else query)
    return from_data(cast(QuotaChannel, channel), data)


async def load_many(session: AsyncSession, customer_ids: Iterable[int], lock: bool = False
                    ) -> dict[tuple[int, str], Allowance]:
    """Every allowance of these customers, by (customer, channel)."""
    ids = list(set(customer_ids))
    if not ids:
        return {}
    query = select(SendAllowance.customer_id, SendAllowance.channel, SendAllowance.ledger).where(
        SendAllowance.customer_id.in_(ids)).order_by(SendAllowance.customer_id, SendAllowance.channel)  # lock order
    rows = await session.execute(query.with_for_update() if lock else query)
    return {(cid, channel): from_data(cast(QuotaChannel, channel), data) for cid, channel, data in rows
            if channel in QUOTA_CHANNELS}


async def save(session: AsyncSession, customer_id: int, allowance: Allowance) -> None:
    await save_many(session, {customer_id: allowance})


async def save_many(session: AsyncSession, allowances: dict[int, Allowance]) -> None:
    """Upsert each customer's allowance (one statement for all of them)."""
    if not allowances:
        return
    now = utcnow()
    rows = [{"customer_id": cid, "channel": a.channel, "ledger": to_data(a), "updated_at": now}
            for cid, a in allowances.items()]
    insert = dialect_insert(session, SendAllowance)
    await session.execute(insert.on_conflict_do_update(
        index_elements=["customer_id", "channel"],
        set_={"ledger": insert.excluded.ledger, "updated_at": insert.excluded.updated_at}), rows)


async def hold(session: AsyncSession, customer_id: int, dedup_key: str, text: str, about: str) -> None:
    """Keep a message for the customer's next message (once per key: a turn run again holds nothing twice)."""
    insert = dialect_insert(session, HeldMessage)
    await session.execute(insert.values(customer_id=customer_id, dedup_key=dedup_key[:200], text=text,
                                        about=about[:64], held_at=utcnow()).on_conflict_do_nothing())


async def take_held(session: AsyncSession, customer_id: int, limit: int) -> tuple[list[HeldMessage], int]:
    """Up to `limit` held messages, oldest first, removed from the hold; and how many stale ones were dropped."""
    held = list(await session.scalars(select(HeldMessage).where(HeldMessage.customer_id == customer_id)
                                      .order_by(HeldMessage.id).with_for_update()))
    fresh = [message for message in held if as_utc(message.held_at) > utcnow() - HOLD_FOR]
    taken = fresh[:max(limit, 0)]
    gone = [message.id for message in held if message not in fresh or message in taken]
    if gone:
        await session.execute(delete(HeldMessage).where(HeldMessage.id.in_(gone)))
    return taken, len(held) - len(fresh)


async def held_count(session: AsyncSession, customer_id: int) -> int:
    return int(await session.scalar(select(func.count()).where(HeldMessage.customer_id == customer_id)) or 0)
