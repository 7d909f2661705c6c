"""Where `kf/sync_msg` stopped for each kf account."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.dialect_insert import dialect_insert
from crm_store.models import InboxItem, KfCursor, utcnow


async def start_of_pull(session: AsyncSession, open_kfid: str, queue_key: str) -> tuple[str, int]:
    """The saved cursor, and the newest notification of the account waiting in the inbox (0: none), in one
    statement: every notification stored by then is covered by the pull that starts now."""
    cursor, waiting = (await session.execute(select(
        select(KfCursor.cursor).where(KfCursor.open_kfid == open_kfid).scalar_subquery(),
        select(func.max(InboxItem.id)).where(InboxItem.queue_key == queue_key, InboxItem.status == "pending")
        .scalar_subquery(),
    ))).one()
    return cursor or "", int(waiting or 0)


async def save_kf_cursor(session: AsyncSession, open_kfid: str, cursor: str) -> None:
    """One statement, whether the account has a cursor yet or not."""
    now = utcnow()
    await session.execute(
        dialect_insert(session, KfCursor)
        .values(open_kfid=open_kfid, cursor=cursor, updated_at=now)
        .on_conflict_do_update(index_elements=["open_kfid"], set_={"cursor": cursor, "updated_at": now})
    )
