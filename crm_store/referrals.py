"""Invite codes and who brought whom: attribution, the referral tree, conversions up the tree.

A friend is attributed once, to the first inviter whose code they arrived through
(the referral's primary key is the friend). Refused, with a reason the customer can
be told: inviting yourself, a customer who was already ours, a friend who is already
attributed, and a loop (the inviter was brought, at some depth, by this friend).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.codes import INVITE_LENGTH, new_code
from crm_store.dialect_insert import dialect_insert
from crm_store.growth_models import InviteCode, Referral
from crm_store.models import Customer, as_utc, utcnow

CODE_ATTEMPTS = 5
MAX_TREE_ROWS = 5000


@dataclass(frozen=True)
class Attribution:
    referral: Referral | None
    refused: str = ""  # self | existing | already | loop


@dataclass(frozen=True)
class TreeRow:
    customer_id: int
    parent_id: int | None
    depth: int
    name: str
    stage: str
    converted: bool
    joined_at: datetime


async def invite_code_for(session: AsyncSession, customer_id: int) -> str:
    """The customer's personal code, made on first use (a collision or a concurrent first use is retried)."""
    for _ in range(CODE_ATTEMPTS):
        existing = await session.scalar(select(InviteCode.code).where(InviteCode.customer_id == customer_id))
        if existing:
            return existing
        try:
            async with session.begin_nested():
                session.add(InviteCode(customer_id=customer_id, code=new_code(INVITE_LENGTH)))
        except IntegrityError:
            continue
    raise RuntimeError(f"could not make an invite code for customer {customer_id}")


async def owner_of_code(session: AsyncSession, code: str) -> int | None:
    """The customer a code belongs to now (a code made before a merge leads to the merged customer)."""
    owner = await session.scalar(
        select(Customer).join(InviteCode, InviteCode.customer_id == Customer.id).where(InviteCode.code == code)
    )
    while owner is not None and owner.merged_into_id is not None:
        owner = await session.get(Customer, owner.merged_into_id)
    return None if owner is None else owner.id


async def inviter_of(session: AsyncSession, friend_id: int) -> int | None:
    return await session.scalar(select(Referral.inviter_id).where(Referral.friend_id == friend_id))


async def attribute(
    session: AsyncSession, friend: Customer, inviter_id: int, via: str, channel: str, window_s: int
) -> Attribution:
    """Attribute `friend` to `inviter_id`, first touch wins; refused with a reason otherwise."""
    if friend.id == inviter_id:
        return Attribution(None, "self")
    current = await inviter_of(session, friend.id)
    if current is not None:
        return Attribution(None, "already")
    if utcnow() - as_utc(friend.created_at) > timedelta(seconds=window_s):
        return Attribution(None, "existing")
    if friend.id in await ancestors(session, inviter_id, depth=50):
        return Attribution(None, "loop")
    inserted = await session.scalar(
        dialect_insert(session, Referral)
        .values(friend_id=friend.id, inviter_id=inviter_id, via=via[:32], channel=channel, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["friend_id"])
        .returning(Referral.friend_id)
    )
    if inserted is None:  # a concurrent arrival attributed the friend first
        return Attribution(None, "already")
    referral = await session.get(Referral, friend.id)
    return Attribution(referral)


async def ancestors(session: AsyncSession, customer_id: int, depth: int) -> list[int]:
    """The inviter, the inviter's inviter…, nearest first, at most `depth` levels."""
    up = select(Referral.inviter_id.label("id"), literal(1).label("level")).where(Referral.friend_id == customer_id)
    chain = up.cte("chain", recursive=True)
    step = select(Referral.inviter_id, chain.c.level + 1).join(chain, Referral.friend_id == chain.c.id).where(
        chain.c.level < depth
    )
    chain = chain.union_all(step)
    rows = await session.execute(select(chain.c.id).order_by(chain.c.level))
    return [row[0] for row in rows]


async def mark_converted(session: AsyncSession, friend_id: int) -> int | None:
    """The friend's first conversion: their inviter's id, once; None when not referred or already counted."""
    result = await session.execute(
        update(Referral)
        .where(Referral.friend_id == friend_id, Referral.converted_at.is_(None))
        .values(converted_at=utcnow())
        .returning(Referral.inviter_id)
        .execution_options(synchronize_session=False)
    )
    row = result.first()
    return None if row is None else int(row[0])


async def tree(session: AsyncSession, root_id: int, depth: int, limit: int = MAX_TREE_ROWS) -> list[TreeRow]:
    """Who `root_id` brought, and whom they brought, to `depth` levels: one recursive query."""
    columns = (Referral.friend_id, Referral.inviter_id, Referral.converted_at, Referral.created_at)
    down = select(*columns, literal(1).label("level")).where(Referral.inviter_id == root_id)
    walk = down.cte("walk", recursive=True)  # the walk carries every column: no join back to all referrals
    walk = walk.union_all(
        select(*columns, walk.c.level + 1).join(walk, Referral.inviter_id == walk.c.friend_id)
        .where(walk.c.level < depth)
    )
    rows = await session.execute(
        select(walk.c.friend_id, walk.c.inviter_id, walk.c.level, Customer.display_name, Customer.stage,
               walk.c.converted_at, walk.c.created_at)
        .join(Customer, Customer.id == walk.c.friend_id)
        .order_by(walk.c.level, walk.c.created_at)
        .limit(limit)
    )
    return [
        TreeRow(int(cid), int(parent), int(level), name or "", stage, converted is not None, joined)
        for cid, parent, level, name, stage, converted, joined in rows
    ]


async def tree_size(session: AsyncSession, root_id: int, depth: int) -> dict[int, int]:
    """How many people at each level under `root_id`."""
    down = select(Referral.friend_id.label("id"), literal(1).label("level")).where(Referral.inviter_id == root_id)
    walk = down.cte("walk_size", recursive=True)
    walk = walk.union_all(
        select(Referral.friend_id, walk.c.level + 1).join(walk, Referral.inviter_id == walk.c.id)
        .where(walk.c.level < depth)
    )
    rows = await session.execute(select(walk.c.level, func.count()).group_by(walk.c.level))
    return {int(level): int(count) for level, count in rows}
