"""Groups of a group-buy campaign: open, join, fill, expire — safe when a thousand people join at once.

A seat is taken with one guarded UPDATE (`members < size`, still open, before the
deadline) and a unit of stock with another (`sold < stock`): the row locks order the
contenders and the loser's UPDATE matches nothing, so a group never overfills and
stock is never oversold (CHECK constraints stand behind both). The seat, the unit and
the membership row are one savepoint: a refusal leaves nothing half-written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.codes import GROUP_LENGTH, new_code
from crm_store.growth_models import Campaign, GroupBuy, GroupMember
from crm_store.models import Customer, StageChange, as_utc, utcnow

CODE_ATTEMPTS = 5

# Why a customer could not open or join; the bot turns each into a helpful answer.
REFUSALS = (
    "unknown", "full", "expired", "closed", "not_started", "sold_out", "already_member", "limit", "not_new",
    "no_campaign",
)


class GroupRefused(Exception):
    def __init__(self, reason: str, group: GroupBuy | None = None, campaign: Campaign | None = None) -> None:
        assert reason in REFUSALS, reason
        super().__init__(reason)
        self.reason = reason
        self.group = group
        self.campaign = campaign


@dataclass(frozen=True)
class Joined:
    group: GroupBuy
    campaign: Campaign
    filled: bool


async def open_group(
    session: AsyncSession, campaign: Campaign, leader: Customer, now: datetime | None = None
) -> GroupBuy:
    """The leader opens a group and takes its first seat (and a unit of stock)."""
    now = now or utcnow()
    _check_window(campaign, now)
    await _check_limit(session, campaign, leader.id)
    async with session.begin_nested():
        await _take_stock(session, campaign)
        group = GroupBuy(
            campaign_id=campaign.id, code=await _free_code(session), leader_id=leader.id, size=campaign.group_size,
            members=1, status="open", created_at=now,
            deadline=min(now + timedelta(seconds=campaign.group_ttl_s), as_utc(campaign.ends_at)),
        )
        session.add(group)
        await session.flush()
        session.add(GroupMember(group_id=group.id, customer_id=leader.id, campaign_id=campaign.id, joined_at=now))
        await session.flush()
    return group


async def join_group(
    session: AsyncSession, code: str, customer: Customer, purchase_stages: Sequence[str],
    now: datetime | None = None,
) -> Joined:
    """Take a seat in the group with `code`; GroupRefused says why not (nothing is written then)."""
    now = now or utcnow()
    group = await group_by_code(session, code)
    if group is None:
        raise GroupRefused("unknown")
    campaign = await session.get(Campaign, group.campaign_id)
    assert campaign is not None
    if await is_member(session, group.id, customer.id):
        raise GroupRefused("already_member", group, campaign)
    if campaign.status != "open":
        raise GroupRefused("closed", group, campaign)
    if campaign.new_customers_only and not await is_new_customer(session, customer, purchase_stages):
        raise GroupRefused("not_new", group, campaign)
    await _check_limit(session, campaign, customer.id)
    try:
        async with session.begin_nested():
            members = await session.scalar(
                update(GroupBuy)
                .where(GroupBuy.id == group.id, GroupBuy.status == "open", GroupBuy.members < GroupBuy.size,
                       GroupBuy.deadline > now)
                .values(members=GroupBuy.members + 1)
                .returning(GroupBuy.members)
                .execution_options(synchronize_session=False)
            )
            if members is None:
                await session.refresh(group)
                raise GroupRefused("expired" if group.status == "expired" or as_utc(group.deadline) <= now
                                   else "full", group, campaign)
            await _take_stock(session, campaign)
            session.add(GroupMember(group_id=group.id, customer_id=customer.id, campaign_id=campaign.id,
                                    joined_at=now))
            await session.flush()
            filled = members >= group.size
            if filled:
                await session.execute(
                    update(GroupBuy).where(GroupBuy.id == group.id).values(status="filled", closed_at=now)
                    .execution_options(synchronize_session=False)
                )
    except IntegrityError:
        raise GroupRefused("already_member", group, campaign) from None
    await session.refresh(group)
    return Joined(group, campaign, filled)


async def expire_due(session: AsyncSession, now: datetime, limit: int) -> list[GroupBuy]:
    """Claim open groups past their deadline (SKIP LOCKED: several schedulers share the work), expire them
    and give their seats back to the campaign's stock."""
    groups = list(
        await session.scalars(
            select(GroupBuy)
            .where(GroupBuy.status == "open", GroupBuy.deadline <= now)
            .order_by(GroupBuy.deadline)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for group in groups:
        group.status, group.closed_at = "expired", now
        await session.execute(
            update(Campaign).where(Campaign.id == group.campaign_id).values(sold=Campaign.sold - group.members)
            .execution_options(synchronize_session=False)
        )
    await session.flush()
    return groups


async def group_by_code(session: AsyncSession, code: str) -> GroupBuy | None:
    return await session.scalar(select(GroupBuy).where(GroupBuy.code == code))


async def is_member(session: AsyncSession, group_id: int, customer_id: int) -> bool:
    found = await session.scalar(
        select(GroupMember.customer_id).where(GroupMember.group_id == group_id, GroupMember.customer_id == customer_id)
    )
    return found is not None


async def member_ids(session: AsyncSession, group_id: int) -> list[int]:
    rows = await session.scalars(
        select(GroupMember.customer_id).where(GroupMember.group_id == group_id).order_by(GroupMember.joined_at)
    )
    return list(rows)


async def open_groups(session: AsyncSession, campaign_id: int, now: datetime, exclude: int, limit: int = 3
                      ) -> list[GroupBuy]:
    """Open groups a customer could still join (fullest first: they fill soonest)."""
    rows = await session.scalars(
        select(GroupBuy)
        .where(GroupBuy.campaign_id == campaign_id, GroupBuy.status == "open", GroupBuy.deadline > now,
               GroupBuy.leader_id != exclude)
        .order_by(GroupBuy.members.desc(), GroupBuy.deadline)
        .limit(limit)
    )
    return list(rows)


async def groups_of(session: AsyncSession, customer_id: int, limit: int = 5) -> list[GroupBuy]:
    """The customer's groups, newest first."""
    rows = await session.scalars(
        select(GroupBuy).join(GroupMember, GroupMember.group_id == GroupBuy.id)
        .where(GroupMember.customer_id == customer_id).order_by(GroupBuy.id.desc()).limit(limit)
    )
    return list(rows)


async def is_new_customer(session: AsyncSession, customer: Customer, purchase_stages: Sequence[str]) -> bool:
    """Never bought: not at a purchase stage now, and never moved to one."""
    if customer.stage in purchase_stages:
        return False
    bought = await session.scalar(
        select(StageChange.id).where(StageChange.customer_id == customer.id,
                                     StageChange.to_stage.in_(list(purchase_stages))).limit(1)
    )
    return bought is None


def _check_window(campaign: Campaign, now: datetime) -> None:
    if campaign.status != "open" or as_utc(campaign.ends_at) <= now:
        raise GroupRefused("closed", campaign=campaign)
    if as_utc(campaign.starts_at) > now:
        raise GroupRefused("not_started", campaign=campaign)


async def _check_limit(session: AsyncSession, campaign: Campaign, customer_id: int) -> None:
    held = await session.scalar(
        select(func.count()).select_from(GroupMember).join(GroupBuy, GroupBuy.id == GroupMember.group_id)
        .where(GroupMember.customer_id == customer_id, GroupMember.campaign_id == campaign.id,
               GroupBuy.status.in_(("open", "filled")))
    )
    if (held or 0) >= campaign.limit_per_customer:
        raise GroupRefused("limit", campaign=campaign)


async def _take_stock(session: AsyncSession, campaign: Campaign) -> None:
    sold = await session.scalar(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.status == "open", Campaign.sold < Campaign.stock)
        .values(sold=Campaign.sold + 1)
        .returning(Campaign.sold)
        .execution_options(synchronize_session=False)
    )
    if sold is None:
        raise GroupRefused("sold_out", campaign=campaign)


async def _free_code(session: AsyncSession) -> str:
    for _ in range(CODE_ATTEMPTS):
        code = new_code(GROUP_LENGTH)
        if await group_by_code(session, code) is None:
            return code
    raise RuntimeError("no free group code")
