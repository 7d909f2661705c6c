"""Where `kf/sync_msg` stopped for each kf account."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.models import KfCursor


async def kf_cursor(session: AsyncSession, open_kfid: str) -> str:
    return await session.scalar(select(KfCursor.cursor).where(KfCursor.open_kfid == open_kfid)) or ""


async def save_kf_cursor(session: AsyncSession, open_kfid: str, cursor: str) -> None:
    row = await session.get(KfCursor, open_kfid)
    if row is None:
        session.add(KfCursor(open_kfid=open_kfid, cursor=cursor))
    else:
        row.cursor = cursor
