"""Where `kf/sync_msg` stopped for each kf account."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.dialect_insert import dialect_insert
from crm_store.models import KfCursor, utcnow


async def kf_cursor(session: AsyncSession, open_kfid: str) -> str:
    return await session.scalar(select(KfCursor.cursor).where(KfCursor.open_kfid == open_kfid)) or ""


async def save_kf_cursor(session: AsyncSession, open_kfid: str, cursor: str) -> None:
    """One statement, whether the account has a cursor yet or not."""
    now = utcnow()
    await session.execute(
        dialect_insert(session, KfCursor)
        .values(open_kfid=open_kfid, cursor=cursor, updated_at=now)
        .on_conflict_do_update(index_elements=["open_kfid"], set_={"cursor": cursor, "updated_at": now})
    )
