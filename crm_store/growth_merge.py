"""When two customers turn out to be one person (OA and WeCom, one unionid), their growth history joins.

Attribution survives: if only one of them was attributed, the merged customer is; if
both were, the earlier attribution wins (first touch). A referral between the two
halves (the person invited themself across accounts) is dropped. Friends, groups,
milestones, rewards and social counters move to the customer that is kept; invite
codes stay with the row that made them and resolve through the merge. Customer-group
memberships, joins and leaves (each keyed by the WeCom identity, so they never clash) move
too; a personal group code moves unless the kept customer has one for the same live code.
"""

from __future__ import annotations

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.group_chat_models import GroupChatChange, GroupChatMember, GroupJoinCode
from crm_store.growth_models import (
    GroupBuy,
    GroupMember,
    Referral,
    ReferralMilestone,
    RewardEntry,
    SocialStats,
)
from crm_store.social import COUNTERS


async def merge_growth(session: AsyncSession, keep_id: int, absorb_id: int) -> None:
    await session.execute(delete(Referral).where(or_(
        and_(Referral.friend_id == keep_id, Referral.inviter_id == absorb_id),
        and_(Referral.friend_id == absorb_id, Referral.inviter_id == keep_id),
    )))
    await _first_touch(session, keep_id, absorb_id)
    await _move(session, Referral.inviter_id, keep_id, absorb_id)
    await _drop_duplicates(session, GroupMember, GroupMember.group_id, keep_id, absorb_id)
    await _move(session, GroupMember.customer_id, keep_id, absorb_id)
    await _move(session, GroupBuy.leader_id, keep_id, absorb_id)
    await _drop_duplicates(session, ReferralMilestone, ReferralMilestone.milestone, keep_id, absorb_id,
                           ReferralMilestone.friend_id)
    for column in (ReferralMilestone.friend_id, ReferralMilestone.inviter_id, RewardEntry.customer_id,
                   RewardEntry.friend_id):
        await _move(session, column, keep_id, absorb_id)
    await _add_social(session, keep_id, absorb_id)
    await _merge_group_chats(session, keep_id, absorb_id)


async def _merge_group_chats(session: AsyncSession, keep_id: int, absorb_id: int) -> None:
    for column in (GroupChatMember.customer_id, GroupChatMember.inviter_id, GroupChatChange.customer_id,
                   GroupChatChange.inviter_id):
        await _move(session, column, keep_id, absorb_id)
    kept_parents = select(GroupJoinCode.parent_id).where(GroupJoinCode.inviter_id == keep_id)
    await session.execute(
        update(GroupJoinCode).where(GroupJoinCode.inviter_id == absorb_id, GroupJoinCode.parent_id.not_in(kept_parents))
        .values(inviter_id=keep_id).execution_options(synchronize_session=False)
    )


async def _first_touch(session: AsyncSession, keep_id: int, absorb_id: int) -> None:
    """Rows, not objects: the friend's key changes under the ORM's feet here."""
    when = dict((await session.execute(
        select(Referral.friend_id, Referral.created_at).where(Referral.friend_id.in_((keep_id, absorb_id)))
    )).tuples().all())
    if absorb_id not in when:
        return
    if keep_id in when and when[keep_id] <= when[absorb_id]:
        await session.execute(delete(Referral).where(Referral.friend_id == absorb_id))
        return
    await session.execute(delete(Referral).where(Referral.friend_id == keep_id))
    await _move(session, Referral.friend_id, keep_id, absorb_id)


async def _move(session: AsyncSession, column, keep_id: int, absorb_id: int) -> None:  # type: ignore[no-untyped-def]
    await session.execute(
        update(column.class_).where(column == absorb_id).values({column.key: keep_id})
        .execution_options(synchronize_session=False)
    )


async def _drop_duplicates(session: AsyncSession, model, key, keep_id: int, absorb_id: int,  # type: ignore[no-untyped-def]
                           owner=None) -> None:
    owner = owner if owner is not None else model.customer_id
    kept = select(key).where(owner == keep_id)
    await session.execute(delete(model).where(owner == absorb_id, key.in_(kept)))


async def _add_social(session: AsyncSession, keep_id: int, absorb_id: int) -> None:
    absorbed = await session.get(SocialStats, absorb_id)
    if absorbed is None:
        return
    kept = await session.get(SocialStats, keep_id)
    if kept is None:
        kept = SocialStats(customer_id=keep_id, **{name: 0 for name in COUNTERS}, score=0.0)
        session.add(kept)
    for name in COUNTERS:
        setattr(kept, name, getattr(kept, name) + getattr(absorbed, name))
    kept.score += absorbed.score
    await session.delete(absorbed)
    await session.flush()
