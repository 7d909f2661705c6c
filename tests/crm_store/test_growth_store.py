"""The growth store under contention: seats, stock, attribution and rewards are each taken once.

Each concurrent attempt runs in its own session and transaction, as separate bot
instances would; on PostgreSQL they really race for the same rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_store import group_buys, referrals, rewards, social
from crm_store.campaigns import CampaignError, create_campaign, spec_from_mapping
from crm_store.codes import ALPHABET, codes_in, new_code, normalise_code
from crm_store.customers import merge_customers, resolve_customer
from crm_store.db import create_engine, session_factory
from crm_store.group_chat_models import GroupChat, GroupChatChange, GroupChatMember, GroupJoinCode
from crm_store.growth_models import Campaign, GroupMember, Referral, RewardEntry
from crm_store.growth_settings import RewardRule, SocialWeights
from crm_store.models import Customer, utcnow
from tests.conftest import Backend

T = TypeVar("T")
STAGES = ["lead", "interested", "customer"]
RULES = [
    RewardRule(id="per_friend", when="stage:customer", reward="券20"),
    RewardRule(id="third", when="stage:customer", tier=3, reward="券A"),
]


@pytest.fixture
async def sessions(backend: Backend) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(backend.store_url)
    yield session_factory(engine)
    await engine.dispose()


async def in_tx(sessions: async_sessionmaker[AsyncSession], work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async with sessions() as session, session.begin():
        return await work(session)


async def customers(sessions: async_sessionmaker[AsyncSession], count: int, prefix: str = "c") -> list[Customer]:
    async def make(session: AsyncSession) -> list[Customer]:
        return [await resolve_customer(session, "wecom", f"{prefix}{index}") for index in range(count)]

    return await in_tx(sessions, make)


def campaign_data(**fields: Any) -> dict[str, Any]:
    return {"code": "c1", "name": "春茶", "price": "9.90", "group_size": 3, "group_hours": 2,
            "ends": (utcnow() + timedelta(days=1)).isoformat(), "stock": 1000, **fields}


async def new_campaign(sessions: async_sessionmaker[AsyncSession], **fields: Any) -> Campaign:
    spec = spec_from_mapping(campaign_data(**fields), STAGES, [])
    return await in_tx(sessions, lambda session: create_campaign(session, spec))


async def attempt(sessions: async_sessionmaker[AsyncSession], work: Callable[[AsyncSession], Awaitable[Any]]) -> str:
    try:
        await in_tx(sessions, work)
    except group_buys.GroupRefused as refusal:
        return refusal.reason
    return "ok"


async def test_a_crowd_joining_one_group_of_three_leaves_exactly_three_members(sessions) -> None:  # type: ignore[no-untyped-def]
    campaign = await new_campaign(sessions)
    leader, *crowd = await customers(sessions, 41)
    group = await in_tx(sessions, lambda session: group_buys.open_group(session, campaign, leader))

    def join(customer: Customer) -> Callable[[AsyncSession], Awaitable[Any]]:
        return lambda session: group_buys.join_group(session, group.code, customer, STAGES[2:])

    outcomes = await asyncio.gather(*(attempt(sessions, join(customer)) for customer in crowd))
    assert sorted(set(outcomes)) == ["full", "ok"] and outcomes.count("ok") == 2
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(GroupMember)) == 3
        assert (await session.get_one(Campaign, campaign.id)).sold == 3


async def test_stock_is_never_oversold_when_many_open_groups_at_once(sessions) -> None:  # type: ignore[no-untyped-def]
    campaign = await new_campaign(sessions, stock=5)
    crowd = await customers(sessions, 30)

    def open_for(customer: Customer) -> Callable[[AsyncSession], Awaitable[Any]]:
        return lambda session: group_buys.open_group(session, campaign, customer)

    outcomes = await asyncio.gather(*(attempt(sessions, open_for(customer)) for customer in crowd))
    assert outcomes.count("ok") == 5 and set(outcomes) == {"ok", "sold_out"}
    async with sessions() as session:
        assert (await session.get_one(Campaign, campaign.id)).sold == 5
        assert await session.scalar(select(func.count()).select_from(GroupMember)) == 5


async def test_the_per_customer_limit_and_new_customers_only_are_enforced(sessions) -> None:  # type: ignore[no-untyped-def]
    campaign = await new_campaign(sessions, new_customers_only=True)
    leader, buyer = await customers(sessions, 2)
    group = await in_tx(sessions, lambda session: group_buys.open_group(session, campaign, leader))
    assert await attempt(sessions, lambda session: group_buys.open_group(session, campaign, leader)) == "limit"

    async def bought_before(session: AsyncSession) -> None:
        (await session.get_one(Customer, buyer.id)).stage = "customer"

    await in_tx(sessions, bought_before)

    async def join(session: AsyncSession) -> Any:
        return await group_buys.join_group(session, group.code, await session.get_one(Customer, buyer.id), ["customer"])

    assert await attempt(sessions, join) == "not_new"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"group_size": 0}, "group_size: 0 is out of range 2..100"),
        ({"price": "-1"}, "price: -1 is negative"),
        ({"price": "1.999"}, "more than 2 decimals"),
        ({"stock": -3}, "stock: -3 is out of range"),
        ({"ends": "2020-01-01"}, "ends: is in the past"),
        ({"fill_stage": "vip"}, "fill_stage: unknown stage 'vip'"),
        ({"colour": "red"}, "unknown field(s) ['colour']"),
        ({"group_hours": "soon"}, "group_hours: 'soon' is not a number"),
    ],
)
def test_bad_campaign_definitions_are_refused_with_the_reason(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(CampaignError, match="invalid campaign") as refused:
        spec_from_mapping(campaign_data(**fields), STAGES, [])
    assert problem in str(refused.value)


async def test_duplicate_reward_triggers_grant_once_per_rule_and_friend_and_the_tier_once(sessions) -> None:  # type: ignore[no-untyped-def]
    inviter, *friends = await customers(sessions, 5)
    for friend in friends:
        await in_tx(sessions, lambda s, f=friend: referrals.attribute(s, f, inviter.id, "inv_X", "kf", 3600))
    calls = [friend for friend in friends for _ in range(8)]
    results = await asyncio.gather(*(
        in_tx(sessions, lambda s, f=friend: rewards.qualify(s, f.id, "stage:customer", RULES)) for friend in calls
    ))
    granted = [grant.rule.id for batch in results for grant in batch]
    assert granted.count("per_friend") == 4 and granted.count("third") == 1
    async with sessions() as session:
        keys = (await session.scalars(select(RewardEntry.grant_key))).all()
    assert len(keys) == len(set(keys)) == 5


async def test_a_reversal_is_a_new_entry_and_cannot_be_repeated(sessions) -> None:  # type: ignore[no-untyped-def]
    inviter, friend = await customers(sessions, 2)
    await in_tx(sessions, lambda s: referrals.attribute(s, friend, inviter.id, "inv_X", "kf", 3600))
    [grant] = await in_tx(sessions, lambda s: rewards.qualify(s, friend.id, "stage:customer", RULES[:1]))
    reversal = await in_tx(sessions, lambda s: rewards.reverse(s, grant.entry_id, "refunded"))
    assert (reversal.kind, reversal.reverses_id) == ("reversal", grant.entry_id)
    with pytest.raises(rewards.RewardError, match="already reversed"):
        await in_tx(sessions, lambda s: rewards.reverse(s, grant.entry_id, "again"))
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(RewardEntry)) == 2


async def test_attribution_is_first_touch_and_refuses_self_and_loops(sessions) -> None:  # type: ignore[no-untyped-def]
    first, second, friend = await customers(sessions, 3)
    assert (await in_tx(sessions, lambda s: referrals.attribute(s, first, first.id, "v", "kf", 60))).refused == "self"
    assert (await in_tx(sessions, lambda s: referrals.attribute(s, friend, first.id, "v", "kf", 60))).referral
    again = await in_tx(sessions, lambda s: referrals.attribute(s, friend, second.id, "v", "kf", 60))
    assert again.refused == "already"
    loop = await in_tx(sessions, lambda s: referrals.attribute(s, first, friend.id, "v", "kf", 60))
    assert loop.refused == "loop"


async def test_attribution_and_social_value_survive_a_merge_of_the_same_person(sessions) -> None:  # type: ignore[no-untyped-def]
    inviter, oa_half, wecom_half = await customers(sessions, 3)
    await in_tx(sessions, lambda s: referrals.attribute(s, oa_half, inviter.id, "inv_X", "oa", 60))
    weights = SocialWeights()
    await in_tx(sessions, lambda s: social.bump(s, [oa_half.id], "groups_led", weights))

    async def merge(session: AsyncSession) -> None:
        keep, absorb = await session.get_one(Customer, wecom_half.id), await session.get_one(Customer, oa_half.id)
        await merge_customers(session, keep, absorb)

    await in_tx(sessions, merge)
    async with sessions() as session:
        assert await referrals.inviter_of(session, wecom_half.id) == inviter.id
        assert await session.get(Referral, oa_half.id) is None
        stats = await social.stats_of(session, wecom_half.id)
        assert stats is not None and stats.groups_led == 1 and stats.score == weights.groups_led


async def test_the_tree_and_ancestors_walk_the_referrals(sessions) -> None:  # type: ignore[no-untyped-def]
    root, a, b, a1, a1x = await customers(sessions, 5)
    for friend, inviter in ((a, root), (b, root), (a1, a), (a1x, a1)):
        await in_tx(sessions, lambda s, f=friend, i=inviter: referrals.attribute(s, f, i.id, "v", "kf", 60))
    async with sessions() as session:
        rows = await referrals.tree(session, root.id, depth=2)
        assert [(row.customer_id, row.depth) for row in rows] == [(a.id, 1), (b.id, 1), (a1.id, 2)]
        assert await referrals.tree_size(session, root.id, depth=10) == {1: 2, 2: 1, 3: 1}
        assert await referrals.ancestors(session, a1x.id, depth=5) == [a1.id, a.id, root.id]


def test_codes_are_unambiguous_and_read_back_however_they_are_typed() -> None:
    codes = {new_code() for _ in range(2000)}
    assert len(codes) == 2000 and all(set(code) <= set(ALPHABET) for code in codes)
    assert not set("01OIL") & set(ALPHABET)
    assert normalise_code(" inv_ｋ７ｐ３-qx9m ") == "K7P3QX9M"
    assert codes_in("我的邀请码是 ｋ７Ｐ３ ＱＸ９Ｍ，谢谢") == ["K7P3QX9M"]
    assert codes_in("参团 k7p-3qx") == ["K7P3QX"]
    assert codes_in("你好") == []


async def test_customer_group_memberships_and_personal_codes_follow_a_merge(sessions) -> None:  # type: ignore[no-untyped-def]
    keep_half, absorb_half, friend = await customers(sessions, 3, prefix="g")

    async def groups_and_codes(session: AsyncSession) -> None:
        group = GroupChat(chat_id="wrMerge", name="福利群", owner_userid="rep1")
        live = GroupJoinCode(code="gc_MERGE001", name="福利群码", chat_ids=["wrMerge"], fission=True)
        other = GroupJoinCode(code="gc_MERGE002", name="新品群码", chat_ids=["wrMerge"], fission=True)
        session.add_all([group, live, other])
        await session.flush()
        session.add_all([
            GroupJoinCode(code="gc_MKEEP", name="keep's", parent_id=live.id, inviter_id=keep_half.id),
            GroupJoinCode(code="gc_MABS1", name="absorbed's, same live code", parent_id=live.id,
                          inviter_id=absorb_half.id),
            GroupJoinCode(code="gc_MABS2", name="absorbed's, another live code", parent_id=other.id,
                          inviter_id=absorb_half.id),
            GroupChatMember(group_id=group.id, userid="g1", kind="customer", customer_id=absorb_half.id),
            GroupChatMember(group_id=group.id, userid="g2", kind="customer", customer_id=friend.id,
                            inviter_id=absorb_half.id),
            GroupChatChange(group_id=group.id, userid="g2", kind="customer", customer_id=friend.id, change="join",
                            inviter_id=absorb_half.id),
        ])

    async def merge(session: AsyncSession) -> None:
        keep, absorb = await session.get_one(Customer, keep_half.id), await session.get_one(Customer, absorb_half.id)
        await merge_customers(session, keep, absorb)

    await in_tx(sessions, groups_and_codes)
    await in_tx(sessions, merge)
    async with sessions() as session:
        members = {row.userid: (row.customer_id, row.inviter_id) for row in await session.scalars(select(GroupChatMember))}
        assert members == {"g1": (keep_half.id, None), "g2": (friend.id, keep_half.id)}
        assert await session.scalar(select(GroupChatChange.inviter_id)) == keep_half.id
        owners = dict((await session.execute(select(GroupJoinCode.code, GroupJoinCode.inviter_id))).tuples().all())
        assert (owners["gc_MKEEP"], owners["gc_MABS1"], owners["gc_MABS2"]) == (keep_half.id, absorb_half.id,
                                                                                 keep_half.id)
