"""What the FAQ answerer asks of a customer's timeline: the choices last offered, and when an entry was last answered.

The offer and the answers are timeline events of the turns that made them (`faq.offered`,
`faq.answered`), so they need no state of their own and survive a restart; a customer's
timeline is short and indexed by customer.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.models import TimelineEvent

FAQ_OFFERED = "faq.offered"
FAQ_ANSWERED = "faq.answered"
TURN_UNANSWERED = "turn.unanswered"  # no flow and no FAQ answered a customer's message: the fallback did


async def last_offer(session: AsyncSession, customer_id: int, since: datetime) -> tuple[str, ...]:
    """The entries offered as choices in the customer's latest offer after `since`, unless one was answered after it."""
    row = (await session.execute(
        select(TimelineEvent.kind, TimelineEvent.data)
        .where(TimelineEvent.customer_id == customer_id, TimelineEvent.kind.in_((FAQ_OFFERED, FAQ_ANSWERED)),
               TimelineEvent.created_at >= since)
        .order_by(TimelineEvent.id.desc()).limit(1))).first()
    if row is None or row.kind != FAQ_OFFERED:
        return ()
    return tuple(str(entry) for entry in (row.data or {}).get("entries") or ())


async def answered_since(session: AsyncSession, customer_id: int, entry: str, since: datetime) -> bool:
    """Was `entry` answered to this customer after `since`? (Asked again soon: the answer did not help.)"""
    rows = await session.scalars(
        select(TimelineEvent.data)
        .where(TimelineEvent.customer_id == customer_id, TimelineEvent.kind == FAQ_ANSWERED,
               TimelineEvent.created_at >= since)
        .order_by(TimelineEvent.id.desc()).limit(20))
    return any((data or {}).get("entry") == entry for data in rows)
