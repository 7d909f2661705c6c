"""The customer-group (客户群) report: joins and leaves per day, groups and members now, top inviters, per
live code. `scrm report group-chats` and a section of `scrm report html`.

Joins and leaves are customers' (reps are staff, not growth), counted from group_chat_changes:
a member who leaves and comes back is two joins and a leave. Days are the brand's
(growth.timezone): the changes are grouped by 15-minute UTC slot in SQL (every time zone's offset
is a whole number of quarter hours) and the few slots are named by day here, so no dialect needs
a time-zone database and no row is loaded one by one. "Now" figures ignore the window. A
personal fission code counts towards the live code it was made from; the inviter is the
customer whose personal code brought the member (GroupChatChange.inviter_id).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, ColumnElement, Integer, and_, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.group_chat_models import GroupChat, GroupChatChange, GroupChatMember, GroupJoinCode
from crm_store.models import Customer
from crm_store.reports import window

SLOT_S = 900  # a quarter of an hour
TOP_INVITERS = 10


@dataclass(frozen=True)
class DayLine:
    day: str  # YYYY-MM-DD in the brand's time zone
    joins: int
    leaves: int


@dataclass(frozen=True)
class GroupInviterLine:
    customer_id: int
    name: str
    joins: int  # members their personal codes brought in the window
    members_now: int  # of everyone they ever brought, still in a group now


@dataclass(frozen=True)
class CodeLine:
    code: str
    name: str
    groups: int  # groups it offers now
    joins: int  # in the window, through it or a personal code made from it
    leaves: int  # in the window, by members who came through it
    members_now: int  # customers in a group now who came through it


@dataclass(frozen=True)
class GroupChatReport:
    timezone: str
    owner: str | None  # only this owner's groups, when given
    groups_now: int  # active groups
    members_now: int  # customers and reps in them
    customers_now: int
    joins: int  # in the window
    leaves: int
    days: list[DayLine]  # from the first to the last day with a change, every day listed
    top_inviters: list[GroupInviterLine]
    codes: list[CodeLine]  # every live code, oldest first


def slot_of(session: AsyncSession, column: Any) -> ColumnElement[Any]:
    """The 15-minute UTC slot (seconds since 1970 // 900) in the dialect's own functions."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column) / SLOT_S), BigInteger)
    return cast(func.strftime("%s", column), Integer) / SLOT_S  # SQLite keeps UTC text


def _owned(owner: str | None, group_id: Any) -> list[ColumnElement[bool]]:
    return [] if owner is None else [group_id.in_(select(GroupChat.id).where(GroupChat.owner_userid == owner))]


async def group_chats_report(session: AsyncSession, since: datetime | None, until: datetime | None, *,
                             timezone: str = "Asia/Shanghai", owner: str | None = None) -> GroupChatReport:
    """Everything the report shows, in a handful of grouped queries."""
    changes = [GroupChatChange.kind == "customer", *window(GroupChatChange.at, since, until),
               *_owned(owner, GroupChatChange.group_id)]
    days = await _days(session, changes, ZoneInfo(timezone))
    groups, members, customers = await _now(session, owner)
    return GroupChatReport(timezone, owner, groups, members, customers, sum(d.joins for d in days),
                           sum(d.leaves for d in days), days, await _inviters(session, changes, owner),
                           await _codes(session, changes, owner))


async def _days(session: AsyncSession, changes: list[ColumnElement[bool]], zone: ZoneInfo) -> list[DayLine]:
    slot = slot_of(session, GroupChatChange.at)
    rows = await session.execute(
        select(slot, GroupChatChange.change, func.count()).where(*changes).group_by(slot, GroupChatChange.change))
    counts: dict[str, Counter[date]] = {"join": Counter(), "leave": Counter()}
    for at_slot, change, count in rows.tuples():
        moment = datetime.fromtimestamp(int(at_slot) * SLOT_S, UTC)
        counts[change][moment.astimezone(zone).date()] += int(count)
    seen = sorted({*counts["join"], *counts["leave"]})
    if not seen:
        return []
    every = [seen[0] + timedelta(days=n) for n in range((seen[-1] - seen[0]).days + 1)]
    return [DayLine(day.isoformat(), counts["join"][day], counts["leave"][day]) for day in every]


async def _now(session: AsyncSession, owner: str | None) -> tuple[int, int, int]:
    active = [GroupChat.status == "active", *([] if owner is None else [GroupChat.owner_userid == owner])]
    groups = await session.scalar(select(func.count()).select_from(GroupChat).where(*active)) or 0
    customers = func.count().filter(GroupChatMember.kind == "customer")
    members, in_groups = (await session.execute(
        select(func.count(), customers).join(GroupChat, GroupChat.id == GroupChatMember.group_id)
        .where(GroupChatMember.left_at.is_(None), *active))).one()
    return int(groups), int(members or 0), int(in_groups or 0)


async def _inviters(session: AsyncSession, changes: list[ColumnElement[bool]], owner: str | None
                    ) -> list[GroupInviterLine]:
    joins = func.count()
    top = (await session.execute(
        select(GroupChatChange.inviter_id, Customer.display_name, joins)
        .join(Customer, Customer.id == GroupChatChange.inviter_id)
        .where(GroupChatChange.change == "join", *changes)
        .group_by(GroupChatChange.inviter_id, Customer.display_name)
        .order_by(joins.desc(), GroupChatChange.inviter_id)
        .limit(TOP_INVITERS))).tuples().all()
    ids = [inviter_id for inviter_id, _, _ in top]
    still: dict[Any, int] = dict((await session.execute(
        select(GroupChatMember.inviter_id, func.count())
        .where(GroupChatMember.inviter_id.in_(ids), GroupChatMember.left_at.is_(None),
               GroupChatMember.kind == "customer", *_owned(owner, GroupChatMember.group_id))
        .group_by(GroupChatMember.inviter_id))).tuples().all()) if ids else {}
    return [GroupInviterLine(int(inviter_id or 0), name or "", int(count), int(still.get(inviter_id, 0)))
            for inviter_id, name, count in top]


async def _codes(session: AsyncSession, changes: list[ColumnElement[bool]], owner: str | None) -> list[CodeLine]:
    # a personal fission code counts for the live code it was made from
    root: ColumnElement[Any] = func.coalesce(GroupJoinCode.parent_id, GroupJoinCode.id)
    # a leave may not name the code; the member's row says which code they had come through
    came_through = func.coalesce(GroupChatChange.code_id, GroupChatMember.code_id)
    moved: dict[tuple[int, str], int] = {
        (int(code_id), change): int(count) for code_id, change, count in (await session.execute(
            select(root, GroupChatChange.change, func.count()).select_from(GroupChatChange)
            .outerjoin(GroupChatMember, and_(GroupChatMember.group_id == GroupChatChange.group_id,
                                             GroupChatMember.userid == GroupChatChange.userid))
            .join(GroupJoinCode, GroupJoinCode.id == came_through)
            .where(*changes).group_by(root, GroupChatChange.change))).tuples()}
    now: dict[Any, int] = dict((await session.execute(
        select(root, func.count()).select_from(GroupChatMember)
        .join(GroupJoinCode, GroupJoinCode.id == GroupChatMember.code_id)
        .where(GroupChatMember.left_at.is_(None), GroupChatMember.kind == "customer",
               *_owned(owner, GroupChatMember.group_id))
        .group_by(root))).tuples().all())
    codes = await session.scalars(select(GroupJoinCode).where(GroupJoinCode.parent_id.is_(None))
                                  .order_by(GroupJoinCode.id))
    return [CodeLine(c.code, c.name, len(c.chat_ids or []), moved.get((c.id, "join"), 0),
                     moved.get((c.id, "leave"), 0), int(now.get(c.id, 0))) for c in codes]
