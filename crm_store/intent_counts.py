"""Per-customer intent counters, for tag rules such as "asked the price 3 times → 高意向"."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.models import IntentCount


async def count_intent(session: AsyncSession, customer_id: int, intent: str) -> int:
    """Add one to the customer's count of `intent` and return the new count.

    The inbox worker handles one customer's messages one at a time, so a plain
    read-modify-write under a row lock is enough and works on both dialects.
    """
    row = await session.scalar(
        select(IntentCount)
        .where(IntentCount.customer_id == customer_id, IntentCount.intent == intent)
        .with_for_update()
    )
    if row is None:
        row = IntentCount(customer_id=customer_id, intent=intent, count=0)
        session.add(row)
    row.count += 1
    return row.count
