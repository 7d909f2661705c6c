"""Merging two customers' handoffs (the same person on the OA and in WeCom): one open handoff at most."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.handoff_models import OPEN_STATUSES, Handoff


async def merge_handoffs(session: AsyncSession, keep_id: int, absorb_id: int) -> None:
    """Two identities turned out to be one person: one open handoff at most, the history kept.

    Keep's open handoff wins; absorb's is closed as merged.
    """
    kept = await session.scalar(
        select(Handoff.id).where(Handoff.customer_id == keep_id, Handoff.status.in_(OPEN_STATUSES))
    )
    if kept is not None:
        await session.execute(
            update(Handoff).where(Handoff.customer_id == absorb_id, Handoff.status.in_(OPEN_STATUSES))
            .values(status="closed", closed_by="merged", closed_at=func.now(), due_at=None)
            .execution_options(synchronize_session=False)
        )
    await session.execute(
        update(Handoff).where(Handoff.customer_id == absorb_id).values(customer_id=keep_id)
        .execution_options(synchronize_session=False)
    )
