"""A group's owner changes hands (a departing rep's groups): the rows, and the members' timelines.

The owner is changed only where it is still the one WeCom moved the group from, so a
departure run twice (or two at once) changes each group once and writes its timeline entries
once: the UPDATE's RETURNING names the groups this call really moved. A rep may own a hundred
groups of two hundred customers, so the `group.owner_changed` entries go in one Core INSERT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.group_chat_models import GroupChat, GroupChatMember
from crm_store.models import TimelineEvent, utcnow

OWNER_CHANGED = "group.owner_changed"


@dataclass(frozen=True)
class OwnerChanged:
    """What one hand-over changed in the store."""

    groups: tuple[str, ...]  # chat ids whose owner this call changed (known groups only)
    entries: int  # timeline entries written, one per customer member of those groups


async def groups_owned_by(session: AsyncSession, userid: str) -> list[str]:
    """Chat ids of the groups (not dismissed) the store says `userid` owns, in order."""
    rows = await session.scalars(
        select(GroupChat.chat_id)
        .where(GroupChat.owner_userid == userid, GroupChat.status == "active")
        .order_by(GroupChat.chat_id)
    )
    return list(rows)


async def hand_over(session: AsyncSession, chat_ids: Sequence[str], from_userid: str, to_userid: str,
                    why: str) -> OwnerChanged:
    """Give `to_userid` the groups among `chat_ids` still owned by `from_userid`, in the caller's transaction.

    Each customer in a moved group now gets `group.owner_changed` {chat_id, group, from, to, why}."""
    if not chat_ids:
        return OwnerChanged((), 0)
    now = utcnow()
    moved = (await session.execute(
        update(GroupChat)
        .where(GroupChat.chat_id.in_(list(chat_ids)), GroupChat.owner_userid == from_userid)
        .values(owner_userid=to_userid, updated_at=now)
        .returning(GroupChat.id, GroupChat.chat_id, GroupChat.name)
        .execution_options(synchronize_session=False)
    )).all()
    if not moved:
        return OwnerChanged((), 0)
    groups = {row.id: (row.chat_id, row.name) for row in moved}
    members = (await session.execute(
        select(GroupChatMember.group_id, GroupChatMember.customer_id)
        .where(GroupChatMember.group_id.in_(list(groups)), GroupChatMember.kind == "customer",
               GroupChatMember.left_at.is_(None), GroupChatMember.customer_id.is_not(None))
        .order_by(GroupChatMember.group_id, GroupChatMember.customer_id)
    )).all()
    rows: list[dict[str, Any]] = [
        {"customer_id": customer_id, "kind": OWNER_CHANGED, "created_at": now,
         "data": {"chat_id": groups[group_id][0], "group": groups[group_id][1], "from": from_userid,
                  "to": to_userid, "why": why}}
        for group_id, customer_id in members
    ]
    if rows:  # Core, executemany: thousands of rows, no objects wanted back
        await session.execute(insert(cast(Table, TimelineEvent.__table__)), rows)
    return OwnerChanged(tuple(sorted(chat_id for chat_id, _name in groups.values())), len(rows))
