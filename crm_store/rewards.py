"""The reward ledger: a friend's milestones qualify rules; each rule grants once per friend, or once per tier.

Exactly-once is the database's doing. A milestone (arrival, a stage, a filled group)
is a row keyed by friend and milestone, inserted or not; a grant is a row with a
unique key (rule, receiver, friend or tier), inserted or not. Retries, redeliveries
and concurrent triggers therefore end in one entry. Milestones of one inviter are
counted under a lock on the inviter's social row, so tiers are reached exactly when
the Nth friend qualifies. A reversal is a new entry pointing at the grant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.customers import record
from crm_store.dialect_insert import dialect_insert
from crm_store.growth_models import ReferralMilestone, RewardEntry, SocialStats
from crm_store.growth_settings import RewardRule
from crm_store.models import utcnow
from crm_store.referrals import inviter_of


class RewardError(ValueError):
    """A ledger command that cannot be carried out (unknown entry, already reversed…)."""


@dataclass(frozen=True)
class Grant:
    rule: RewardRule
    entry_id: int
    customer_id: int  # who receives it
    friend_id: int  # whose milestone earned it


async def qualify(
    session: AsyncSession, friend_id: int, milestone: str, rules: Sequence[RewardRule], inviter_id: int | None = None
) -> list[Grant]:
    """`friend_id` reached `milestone`: record it once and grant what the rules say; the new grants.

    `inviter_id` names the inviter when the milestone itself says who it is (a friend who joined a
    group through a customer's personal code); otherwise it is whoever the friend was referred by.
    Either way the milestone row (friend, milestone) makes it count once per friend.
    """
    if inviter_id is None:
        inviter_id = await inviter_of(session, friend_id)
    if inviter_id is None:
        return []
    await session.execute(  # the row the inviter's milestones are counted under
        dialect_insert(session, SocialStats).values(customer_id=inviter_id, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["customer_id"])
    )
    await session.execute(select(SocialStats.customer_id).where(SocialStats.customer_id == inviter_id).with_for_update())
    new = await session.scalar(
        dialect_insert(session, ReferralMilestone)
        .values(friend_id=friend_id, milestone=milestone, inviter_id=inviter_id, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["friend_id", "milestone"])
        .returning(ReferralMilestone.friend_id)
    )
    if new is None:
        return []
    grants: list[Grant] = []
    reached = 0
    for rule in rules:
        if rule.when != milestone:
            continue
        if rule.tier:
            reached = reached or await _milestones(session, inviter_id, milestone)
            if reached != rule.tier:
                continue
            key = f"{rule.id}:{inviter_id}:tier{rule.tier}"
        else:
            receiver = inviter_id if rule.to == "inviter" else friend_id
            key = f"{rule.id}:{receiver}:{friend_id}"
        receiver = inviter_id if rule.to == "inviter" else friend_id
        entry_id = await _grant(session, rule, receiver, friend_id, key)
        if entry_id is not None:
            grants.append(Grant(rule, entry_id, receiver, friend_id))
    return grants


async def reverse(session: AsyncSession, entry_id: int, reason: str) -> RewardEntry:
    """Take a grant back with a new entry (the refund was refunded, the friend was a fake…)."""
    grant = await session.get(RewardEntry, entry_id)
    if grant is None or grant.kind != "grant":
        raise RewardError(f"no grant #{entry_id} in the ledger (scrm referrals rewards)")
    if await session.scalar(select(RewardEntry.id).where(RewardEntry.reverses_id == entry_id)) is not None:
        raise RewardError(f"grant #{entry_id} is already reversed")
    reversal = RewardEntry(
        kind="reversal", rule_id=grant.rule_id, customer_id=grant.customer_id, friend_id=grant.friend_id,
        reward=grant.reward, reverses_id=grant.id, reason=reason[:200], created_at=utcnow(),
    )
    session.add(reversal)
    await session.flush()
    await record(session, grant.customer_id, "reward.reversed", {"entry": reversal.id, "grant": grant.id,
                                                                  "rule": grant.rule_id, "reward": grant.reward,
                                                                  "reason": reversal.reason})
    return reversal


async def ledger(session: AsyncSession, customer_id: int | None = None, limit: int = 50) -> list[RewardEntry]:
    query = select(RewardEntry).order_by(RewardEntry.id.desc()).limit(limit)
    if customer_id is not None:
        query = query.where(RewardEntry.customer_id == customer_id)
    return list(await session.scalars(query))


async def totals(session: AsyncSession) -> dict[str, dict[str, int]]:
    """Per rule: grants and reversals."""
    rows = await session.execute(
        select(RewardEntry.rule_id, RewardEntry.kind, func.count()).group_by(RewardEntry.rule_id, RewardEntry.kind)
    )
    result: dict[str, dict[str, int]] = {}
    for rule_id, kind, count in rows:
        result.setdefault(rule_id, {"grant": 0, "reversal": 0})[kind] = int(count)
    return result


async def _milestones(session: AsyncSession, inviter_id: int, milestone: str) -> int:
    count = await session.scalar(
        select(func.count()).select_from(ReferralMilestone).where(
            ReferralMilestone.inviter_id == inviter_id, ReferralMilestone.milestone == milestone
        )
    )
    return int(count or 0)


async def _grant(session: AsyncSession, rule: RewardRule, receiver: int, friend_id: int, key: str) -> int | None:
    entry_id = await session.scalar(
        dialect_insert(session, RewardEntry)
        .values(kind="grant", rule_id=rule.id, customer_id=receiver, friend_id=friend_id, reward=rule.reward,
                grant_key=key, reason=rule.when, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["grant_key"])
        .returning(RewardEntry.id)
    )
    return None if entry_id is None else int(entry_id)

