"""Finding customer groups (客户群) and reading one: what `scrm groupchats list|show` and `customers find
--in-group` show.

A page of groups costs two queries whatever its size: the groups with their members now
(one grouped subquery over group_chat_members), and their tags. Members "now" are the rows
without `left_at`, as WeCom last reported them; customers are the external members, reps the
internal ones. A group is named by its chat_id, or by its exact name when that is unambiguous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, SQLColumnExpression, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql import Subquery

from crm_store.group_chat_models import (
    GROUP_STATUSES,
    GroupChat,
    GroupChatChange,
    GroupChatMember,
    GroupChatTag,
    GroupJoinCode,
)
from crm_store.group_chat_tags import tags_of, tags_of_groups
from crm_store.group_chats import scene_name
from crm_store.models import Customer

RECENT_CHANGES = 20


class GroupNotFound(LookupError):
    """Groups named that the store does not know, or names that fit several groups; every one listed."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class GroupFilter:
    owner: str | None = None  # the owner's userid
    tag: str | None = None  # carrying this tag of ours
    name_contains: str | None = None  # any case
    status: str | None = None  # active | dismissed; None: both
    code: str | None = None  # offered by this group live code (gc_…)


@dataclass(frozen=True)
class GroupRow:
    chat_id: str
    name: str
    owner: str
    status: str
    members: int  # in the group now, customers and reps
    customers: int  # of them, customers
    tags: tuple[str, ...]
    code: str | None  # the group live code offering it
    created: datetime | None  # WeCom's create_time, else when the store first saw it


@dataclass(frozen=True)
class MemberLine:
    userid: str
    kind: str  # customer | rep
    name: str  # as shown in the group
    customer_id: int | None
    customer_name: str
    joined_at: datetime | None
    scene: str  # how they came, in words (group_chats.scene_name; "" when WeCom did not say)
    code: str | None  # the group live code they came through
    inviter_id: int | None  # the customer whose personal code brought them
    invitor_userid: str  # the member who invited them (WeCom's spelling)


@dataclass(frozen=True)
class ChangeLine:
    at: datetime
    change: str  # join | leave
    userid: str
    kind: str
    customer_id: int | None
    customer_name: str
    scene: str
    code: str | None
    inviter_id: int | None


@dataclass(frozen=True)
class GroupDetail:
    row: GroupRow
    notice: str
    synced_at: datetime | None
    members_now: list[MemberLine]  # customers first, then reps; earliest joined first
    recent: list[ChangeLine]  # newest first


def _filters(where: GroupFilter) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if where.owner:
        found.append(GroupChat.owner_userid == where.owner)
    if where.tag:
        found.append(exists().where(GroupChatTag.group_id == GroupChat.id, GroupChatTag.tag == where.tag))
    if where.name_contains and where.name_contains.strip():
        escaped = where.name_contains.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        found.append(func.lower(GroupChat.name).like(f"%{escaped}%", escape="\\"))
    if where.status:
        if where.status not in GROUP_STATUSES:
            raise ValueError(f"status {where.status!r}: use one of {', '.join(GROUP_STATUSES)}")
        found.append(GroupChat.status == where.status)
    if where.code:
        found.append(GroupChat.code_id.in_(select(GroupJoinCode.id).where(GroupJoinCode.code == where.code)))
    return found


def _members_now() -> Subquery:
    """group id -> members now and customers now, as one grouped subquery."""
    customers = func.count().filter(GroupChatMember.kind == "customer")
    return (select(GroupChatMember.group_id, func.count().label("members"), customers.label("customers"))
            .where(GroupChatMember.left_at.is_(None))
            .group_by(GroupChatMember.group_id)
            .subquery())


async def list_groups(session: AsyncSession, where: GroupFilter = GroupFilter(), limit: int = 50,
                      offset: int = 0) -> list[GroupRow]:
    """Groups matching every filter, newest first (WeCom's creation time), with members now and tags."""
    now = _members_now()
    query = (select(GroupChat, func.coalesce(now.c.members, 0), func.coalesce(now.c.customers, 0),
                    GroupJoinCode.code)
             .outerjoin(now, now.c.group_id == GroupChat.id)
             .outerjoin(GroupJoinCode, GroupJoinCode.id == GroupChat.code_id)
             .where(*_filters(where))
             .order_by(func.coalesce(GroupChat.platform_created_at, GroupChat.created_at).desc(), GroupChat.id.desc())
             .limit(limit).offset(offset))
    found = (await session.execute(query)).tuples().all()
    tags = await tags_of_groups(session, [group.id for group, *_ in found])
    return [_row(group, members, customers, code, tags.get(group.id, []))
            for group, members, customers, code in found]


def _row(group: GroupChat, members: int, customers: int, code: str | None, tags: Sequence[str]) -> GroupRow:
    return GroupRow(group.chat_id, group.name, group.owner_userid, group.status, int(members), int(customers),
                    tuple(tags), code, group.platform_created_at or group.created_at)


async def resolve_groups(session: AsyncSession, refs: Sequence[str]) -> dict[str, GroupChat]:
    """ref -> group, each ref a chat_id or a group's exact name; GroupNotFound names every unknown or
    ambiguous ref."""
    wanted = list(dict.fromkeys(ref.strip() for ref in refs if ref.strip()))
    if not wanted:
        return {}
    rows = await session.scalars(select(GroupChat).where(
        or_(GroupChat.chat_id.in_(wanted), GroupChat.name.in_(wanted))).order_by(GroupChat.id))
    groups = list(rows)
    found: dict[str, GroupChat] = {}
    problems: list[str] = []
    for ref in wanted:
        by_id = [group for group in groups if group.chat_id == ref]
        by_name = [group for group in groups if group.name == ref]
        if by_id or len(by_name) == 1:
            found[ref] = (by_id or by_name)[0]
        elif by_name:
            problems.append(f"{len(by_name)} groups are named {ref!r} ({', '.join(g.chat_id for g in by_name)}): "
                            "name one by its chat id")
        else:
            problems.append(f"no group {ref!r} (list them with: scrm groupchats list)")
    if problems:
        raise GroupNotFound(problems)
    return found


async def group_detail(session: AsyncSession, chat_id: str, recent: int = RECENT_CHANGES) -> GroupDetail | None:
    """One group: its figures, its members now and how each came, and its latest joins and leaves."""
    group = await session.scalar(select(GroupChat).where(GroupChat.chat_id == chat_id.strip()))
    if group is None:
        return None
    code = await session.scalar(select(GroupJoinCode.code).where(GroupJoinCode.id == group.code_id)) \
        if group.code_id is not None else None
    members = await _member_lines(session, group.id)
    customers = sum(1 for member in members if member.kind == "customer")
    row = _row(group, len(members), customers, code, await tags_of(session, group.id))
    return GroupDetail(row, group.notice, group.synced_at, members, await _change_lines(session, group.id, recent))


async def _member_lines(session: AsyncSession, group_id: int) -> list[MemberLine]:
    rows = await session.execute(
        select(GroupChatMember, Customer.display_name, GroupJoinCode.code)
        .outerjoin(Customer, Customer.id == GroupChatMember.customer_id)
        .outerjoin(GroupJoinCode, GroupJoinCode.id == GroupChatMember.code_id)
        .where(GroupChatMember.group_id == group_id, GroupChatMember.left_at.is_(None))
        .order_by(GroupChatMember.kind, GroupChatMember.joined_at.asc().nulls_first(), GroupChatMember.userid))
    return [MemberLine(m.userid, m.kind, m.name, m.customer_id, name or "", m.joined_at,
                       scene_name("join", m.join_scene), code, m.inviter_id, m.invitor_userid)
            for m, name, code in rows.tuples()]


async def _change_lines(session: AsyncSession, group_id: int, limit: int) -> list[ChangeLine]:
    code = aliased(GroupJoinCode)
    rows = await session.execute(
        select(GroupChatChange, Customer.display_name, code.code)
        .outerjoin(Customer, Customer.id == GroupChatChange.customer_id)
        .outerjoin(code, code.id == GroupChatChange.code_id)
        .where(GroupChatChange.group_id == group_id)
        .order_by(GroupChatChange.at.desc(), GroupChatChange.id.desc())
        .limit(limit))
    return [ChangeLine(c.at, c.change, c.userid, c.kind, c.customer_id, name or "",
                       scene_name(c.change, c.scene), code_name, c.inviter_id)
            for c, name, code_name in rows.tuples()]


def member_of_groups(customer_id: SQLColumnExpression[int], group_ids: Sequence[int]) -> list[ColumnElement[bool]]:
    """One condition per group: the customer is in it now (for `customers find --in-group`)."""
    return [exists().where(GroupChatMember.group_id == group_id, GroupChatMember.customer_id == customer_id,
                           GroupChatMember.left_at.is_(None))
            for group_id in group_ids]
