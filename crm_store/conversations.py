"""Running flows in the store: at most one active conversation per customer.

The partial unique index `uq_conversations_one_active` is what guarantees "one running
flow"; these functions only read and write rows. The row is locked for the turn, so
the inbox worker and the waker never advance the same conversation at once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.models import Conversation, utcnow

_ACTIVE = (  # built once: every turn asks it
    select(Conversation)
    .where(Conversation.customer_id == bindparam("customer_id"), Conversation.status == "active")
    .with_for_update()
)


async def active_conversation(session: AsyncSession, customer_id: int) -> Conversation | None:
    """The customer's running conversation, locked until the end of the transaction."""
    return await session.scalar(_ACTIVE, {"customer_id": customer_id})


async def claim_due(session: AsyncSession, now: datetime, limit: int) -> list[Conversation]:
    """Active conversations whose wake-up time has come, skipping rows another waker holds."""
    rows = await session.scalars(
        select(Conversation)
        .where(Conversation.status == "active", Conversation.wake_at <= now)
        .order_by(Conversation.wake_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(rows)


def end_conversation(conversation: Conversation, reason: str) -> None:
    conversation.status = "ended"
    conversation.ended_at = utcnow()
    conversation.end_reason = reason[:64]
    conversation.wake_at = None
