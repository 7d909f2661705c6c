"""Customer groups (客户群) as WeCom last described them: applying a group read in full, dismissing one.

WeCom's change events say what kind of change happened, not who joined or left (its answer:
events may arrive out of order or not at all), so a group is always applied as a whole
snapshot of `externalcontact/groupchat/get` (https://developer.work.weixin.qq.com/document/path/92122)
and compared with the members we hold. Applying the same snapshot twice changes nothing, and a
snapshot read before the one already applied (`synced_at`) is ignored, so the order in which
callbacks and a full sync apply their reads does not matter. The group row is locked first:
concurrent applies of one group take turns. The work is crm_store/group_chat_batch.py's Core
statements, for one group (a callback) as for a batch of them (a full sync).

Every join and leave is a `group_chat_changes` row (unique per group, member, change and moment)
and, for a customer, an entry on their timeline: `group.joined` / `group.left` with the chat id,
the group's name, the scene (see `scene_name`), and the live code and inviter when known.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.group_chat_batch import AppliedGroup, Change, Read, apply_groups, write_changes
from crm_store.group_chat_info import (
    DISMISSED,
    JOIN_SCENES,
    MEMBER_TYPE_CUSTOMER,
    MEMBER_TYPE_REP,
    QUIT_SCENES,
    GroupChatDataError,
    GroupInfo,
    MemberInfo,
    scene_name,
)
from crm_store.group_chat_models import GroupChat, GroupChatMember

__all__ = ["DISMISSED", "JOIN_SCENES", "MEMBER_TYPE_CUSTOMER", "MEMBER_TYPE_REP", "QUIT_SCENES", "AppliedGroup",
           "GroupApplied", "GroupChatDataError", "GroupInfo", "MemberInfo", "Read", "apply_group", "apply_groups",
           "dismiss_group", "group_by_chat_id", "groups_of_customer", "scene_name"]


@dataclass(frozen=True)
class GroupApplied:
    """What applying a snapshot changed: who joined (again) and who left, as rows the join hook reads."""

    group: GroupChat
    joined: list[GroupChatMember]
    left: list[GroupChatMember]
    created: bool


async def group_by_chat_id(session: AsyncSession, chat_id: str) -> GroupChat | None:
    return await session.scalar(select(GroupChat).where(GroupChat.chat_id == chat_id))


async def groups_of_customer(session: AsyncSession, customer_id: int) -> list[GroupChat]:
    """The groups the customer is in now."""
    rows = await session.scalars(
        select(GroupChat).join(GroupChatMember, GroupChatMember.group_id == GroupChat.id)
        .where(GroupChatMember.customer_id == customer_id, GroupChatMember.left_at.is_(None),
               GroupChat.status == "active")
        .order_by(GroupChat.id)
    )
    return list(rows)


async def _locked_group(session: AsyncSession, chat_id: str) -> GroupChat | None:
    statement = select(GroupChat).where(GroupChat.chat_id == chat_id).with_for_update()
    return await session.scalar(statement.execution_options(populate_existing=True))


async def apply_group(session: AsyncSession, info: GroupInfo, now: datetime,
                      quit_scene: int | None = None) -> GroupApplied:
    """Make the store's group what `info` says it is; `now` is when it was read (leaves are dated then).

    `quit_scene`: the change event's QuitScene, given to the members found gone (the event does not
    say which member it was about, so a snapshot that finds several gone gives it to each). The
    group and the members who joined or left come back as ORM rows, for the join hook."""
    [applied] = await apply_groups(session, [(info, now)], quit_scene)
    group = await session.get_one(GroupChat, applied.group_id, populate_existing=True)
    wanted = [*applied.joined, *applied.left]
    rows = {} if not wanted else {row.userid: row for row in await session.scalars(
        select(GroupChatMember).where(GroupChatMember.group_id == group.id, GroupChatMember.userid.in_(wanted))
        .execution_options(populate_existing=True))}
    return GroupApplied(group, [rows[userid] for userid in applied.joined], [rows[userid] for userid in applied.left],
                        applied.created)


async def dismiss_group(session: AsyncSession, chat_id: str, now: datetime) -> GroupApplied | None:
    """The group was dismissed: everyone still in it has left (once: a repeat finds nobody left to go).

    None for a group we never knew (nothing to record)."""
    group = await _locked_group(session, chat_id)
    if group is None:
        return None
    if group.status == "dismissed":
        return GroupApplied(group, [], [], False)
    group.status, group.members, group.updated_at = "dismissed", 0, now
    left = list(await session.scalars(
        select(GroupChatMember).where(GroupChatMember.group_id == group.id, GroupChatMember.left_at.is_(None))))
    for row in left:
        row.left_at, row.quit_scene = now, DISMISSED
    await session.flush()
    await write_changes(session, [Change(group.id, group.chat_id, group.name, row.userid, row.kind, row.customer_id,
                                         "leave", DISMISSED, now, code_id=row.code_id, inviter_id=row.inviter_id)
                                  for row in left])
    return GroupApplied(group, [], left, False)
