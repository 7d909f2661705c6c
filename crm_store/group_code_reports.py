"""What each group live code brought: joins, leaves, members now, new customers, conversions, top inviters.

Counted from the joins and leaves as they happened (`group_chat_changes`, which carry the
code the member came through) and from the members now (`group_chat_members`). A fission
code's figures include its members' personal codes: a friend brought by a personal code
came through the campaign all the same.

A customer is *new* through a code when the store first knew them when they joined through it
(created no earlier than their first join through it, less a minute for the clocks of WeCom
and ours); a *conversion* is a customer who joined through the code and is now at a purchase
stage they reached after joining (a new customer's every purchase is).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.group_chat_models import GroupChatChange, GroupChatMember, GroupJoinCode
from crm_store.models import Customer, as_utc

CLOCK_SLACK = timedelta(seconds=60)


@dataclass(frozen=True)
class CodeFigures:
    joins: int = 0  # every join, a re-join counted again
    leaves: int = 0
    members_now: int = 0
    joiners: int = 0  # customers who joined through it
    new_customers: int = 0  # …of whom the store first knew then
    conversions: int = 0  # …who reached a purchase stage after joining

    @property
    def conversion_rate(self) -> float | None:
        return round(self.conversions / self.joiners, 4) if self.joiners else None


@dataclass(frozen=True)
class Inviter:
    customer_id: int
    name: str
    code: str  # their personal code
    friends: int  # other customers who joined through it (each once)
    joins: int


@dataclass(frozen=True)
class CodeReport:
    code: str
    name: str
    active: bool
    fission: bool
    chat_ids: tuple[str, ...]
    qr_code: str
    config_id: str
    auto_create_room: bool
    room_base_name: str
    room_base_id: int
    welcome: dict[str, Any]
    welcome_template_id: str
    tags: tuple[str, ...]
    created_at: datetime
    figures: CodeFigures
    conversion_rate: float | None
    personal_codes: int  # fission: members who asked for a code of their own
    inviter_id: int | None = None  # a personal code's owner
    top_inviters: tuple[Inviter, ...] = ()


async def code_report(
    session: AsyncSession, row: GroupJoinCode, purchase_stages: Iterable[str], inviters: int = 10
) -> CodeReport:
    """One code's figures (a fission code's with its personal codes), and its top inviters."""
    children = list(await session.scalars(select(GroupJoinCode.id).where(GroupJoinCode.parent_id == row.id)))
    root_of = {row.id: row.id, **{child: row.id for child in children}}
    figures = (await _figures(session, root_of, set(purchase_stages))).get(row.id, CodeFigures())
    top = await top_inviters(session, row.id, inviters) if row.fission or children else []
    return _report(row, figures, len(children), tuple(top))


async def list_codes(
    session: AsyncSession, purchase_stages: Iterable[str], personal: bool = False
) -> list[CodeReport]:
    """Every live code, oldest first, with its figures (personal codes folded into their parent's,
    or listed too with `personal`)."""
    rows = list(await session.scalars(select(GroupJoinCode).order_by(GroupJoinCode.id)))
    root_of = {row.id: (row.parent_id if row.parent_id is not None and not personal else row.id) for row in rows}
    figures = await _figures(session, root_of, set(purchase_stages))
    children: dict[int, int] = defaultdict(int)
    for row in rows:
        if row.parent_id is not None:
            children[row.parent_id] += 1
    shown = [row for row in rows if personal or row.parent_id is None]
    return [_report(row, figures.get(row.id, CodeFigures()), children[row.id]) for row in shown]


async def top_inviters(session: AsyncSession, parent_id: int, limit: int = 10) -> list[Inviter]:
    """The members whose personal codes brought the most friends (themselves not counted)."""
    friend = and_(GroupChatChange.customer_id.is_not(None), GroupChatChange.customer_id != GroupJoinCode.inviter_id)
    rows = await session.execute(
        select(GroupJoinCode.inviter_id, Customer.display_name, GroupJoinCode.code,
               func.count(distinct(GroupChatChange.customer_id)).label("friends"), func.count().label("joins"))
        .join(GroupChatChange, and_(GroupChatChange.code_id == GroupJoinCode.id, GroupChatChange.change == "join",
                                    friend))
        .join(Customer, Customer.id == GroupJoinCode.inviter_id)
        .where(GroupJoinCode.parent_id == parent_id)
        .group_by(GroupJoinCode.inviter_id, Customer.display_name, GroupJoinCode.code)
        .order_by(func.count(distinct(GroupChatChange.customer_id)).desc(), GroupJoinCode.inviter_id)
        .limit(limit)
    )
    return [Inviter(int(inviter or 0), name or "", code, int(friends), int(joins))
            for inviter, name, code, friends, joins in rows.tuples()]


async def friends_brought(session: AsyncSession, personal_code_id: int, inviter_id: int) -> int:
    """Other customers who joined through the inviter's personal code, each once."""
    count = await session.scalar(
        select(func.count(distinct(GroupChatChange.customer_id))).where(
            GroupChatChange.code_id == personal_code_id, GroupChatChange.change == "join",
            GroupChatChange.customer_id.is_not(None), GroupChatChange.customer_id != inviter_id)
    )
    return int(count or 0)


def _report(row: GroupJoinCode, figures: CodeFigures, children: int, top: tuple[Inviter, ...] = ()) -> CodeReport:
    return CodeReport(
        code=row.code, name=row.name, active=row.active, fission=row.fission, chat_ids=tuple(row.chat_ids),
        qr_code=row.qr_code, config_id=row.config_id, auto_create_room=row.auto_create_room,
        room_base_name=row.room_base_name, room_base_id=row.room_base_id, welcome=dict(row.welcome or {}),
        welcome_template_id=row.welcome_template_id, tags=tuple(row.tags), created_at=row.created_at,
        figures=figures, conversion_rate=figures.conversion_rate, personal_codes=children,
        inviter_id=row.inviter_id, top_inviters=top,
    )


async def _figures(session: AsyncSession, root_of: dict[int, int], purchase: set[str]) -> dict[int, CodeFigures]:
    """root code id -> figures, each code's numbers added to its root's (`root_of`: code id -> root id)."""
    codes = list(root_of)
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for code_id, change, count in (await session.execute(_changes(codes))).tuples():
        counts[root_of[code_id]][change] += int(count)
    for member_code, count in (await session.execute(_members_now(codes))).tuples():
        counts[root_of[member_code or 0]]["members"] += int(count)
    first_join: dict[int, dict[int, datetime]] = defaultdict(dict)
    customers: dict[int, tuple[datetime, str, datetime | None]] = {}
    for joined_code, joiner, at, created, stage, changed in (await session.execute(_joiners(codes))).tuples():
        root, customer_id, at = root_of[joined_code or 0], joiner or 0, as_utc(at)
        earlier = first_join[root].get(customer_id)
        first_join[root][customer_id] = at if earlier is None else min(earlier, at)
        customers[customer_id] = (as_utc(created), stage, as_utc(changed) if changed else None)
    result = {}
    for root in set(root_of.values()):
        new, converted = _new_and_converted(first_join[root], customers, purchase)
        c = counts[root]
        result[root] = CodeFigures(c["join"], c["leave"], c["members"], len(first_join[root]), new, converted)
    return result


def _new_and_converted(
    joined: dict[int, datetime], customers: dict[int, tuple[datetime, str, datetime | None]], purchase: set[str]
) -> tuple[int, int]:
    new = converted = 0
    for customer_id, at in joined.items():
        created, stage, changed = customers[customer_id]
        is_new = created >= at - CLOCK_SLACK
        new += is_new
        converted += stage in purchase and (is_new or (changed is not None and changed >= at))
    return new, converted


def _changes(codes: Sequence[int]) -> Select[int, str, int]:
    """Joins and leaves per code. A leave row names no code: the member's (the code of their last join) does."""
    code = func.coalesce(GroupChatChange.code_id, GroupChatMember.code_id)
    return (select(code, GroupChatChange.change, func.count())
            .outerjoin(GroupChatMember, and_(GroupChatMember.group_id == GroupChatChange.group_id,
                                             GroupChatMember.userid == GroupChatChange.userid))
            .where(code.in_(codes)).group_by(code, GroupChatChange.change))


def _members_now(codes: Sequence[int]) -> Select[int | None, int]:
    return (select(GroupChatMember.code_id, func.count())
            .where(GroupChatMember.code_id.in_(codes), GroupChatMember.left_at.is_(None))
            .group_by(GroupChatMember.code_id))


def _joiners(codes: Sequence[int]) -> Select[int | None, int | None, datetime, datetime, str, datetime | None]:
    """Per code and customer: the first join through it, and the customer's creation and stage."""
    return (
        select(GroupChatChange.code_id, GroupChatChange.customer_id, func.min(GroupChatChange.at),
               Customer.created_at, Customer.stage, Customer.stage_changed_at)
        .join(Customer, Customer.id == GroupChatChange.customer_id)
        .where(GroupChatChange.code_id.in_(codes), GroupChatChange.change == "join")
        .group_by(GroupChatChange.code_id, GroupChatChange.customer_id, Customer.created_at, Customer.stage,
                  Customer.stage_changed_at)
    )
