"""Group fission (群裂变): "bring 3 friends into the group → reward", granted once whatever happens.

End to end through signed callbacks: a customer's personal code, friends joining through it (a
callback delivered twice, a friend who leaves and comes back, the inviter through their own code),
one tier grant, and its reversal. The hook under concurrent joins runs on separate sessions (on
PostgreSQL they really are concurrent). A customer asks for their invite in a chat: the starter flow
answers with their personal QR.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.group_join_ways import create_code, personal_code
from core.events import Notify
from crm_store.customers import Profile, resolve_customer
from crm_store.db import create_engine, session_factory
from crm_store.group_chat_models import GroupChat, GroupChatMember, GroupJoinCode
from crm_store.group_code_reports import code_report
from crm_store.group_join_codes import GroupCodeSpec, add_code, add_personal
from crm_store.growth_models import ReferralMilestone, RewardEntry
from crm_store.growth_settings import GrowthSettings, RewardRule
from crm_store.lifecycle import Lifecycle
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.models import TimelineEvent
from crm_store.rewards import ledger, reverse
from flows.group_joins import GroupJoins
from flows.growth import Growth
from tests.bot.conftest import Bot
from tests.bot.group_code_helpers import customer_id, join, new_group, settle
from tests.conftest import Backend

RULE = {"id": "group_3", "when": "group_joined", "tier": 3, "to": "inviter", "reward": "社群专属券",
        "message": "您已邀请 3 位好友进群，获得{reward}！"}
PURCHASE = ["customer", "repeat", "loyal"]


async def grants(bot_sessions: async_sessionmaker[AsyncSession], inviter: int) -> list[RewardEntry]:
    async with bot_sessions() as session:
        return list(await session.scalars(select(RewardEntry).where(RewardEntry.customer_id == inviter,
                                                                    RewardEntry.kind == "grant")))


async def test_three_friends_through_a_personal_code_earn_one_reward_once(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(growth={"rewards": [RULE]})
    sessions, api = bot.runtime.sessions, bot.runtime.apis["wecom.contacts"]
    chat = await new_group(bot, "福利群1")
    parent = await create_code(sessions, api, GroupCodeSpec("福利群", (chat,), room_base_name="福利群", fission=True))
    await join(bot, "wm_inviter", parent.config_id)
    inviter = await customer_id(bot, "wm_inviter")
    async with sessions() as session, session.begin():
        mine = await personal_code(session, api, parent, inviter)
        again = await personal_code(session, api, parent, inviter)
    assert again.id == mine.id and len(bot.fake.join_ways) == 2  # asked twice, made once
    assert bot.fake.join_ways[mine.config_id].state == mine.code

    await join(bot, "wm_f1", mine.config_id)
    await bot.simulator.customer_leaves_group(bot.url, "wm_f1", chat)
    await settle(bot)
    await join(bot, "wm_f1", mine.config_id)  # left and came back: still one friend
    await join(bot, "wm_f2", mine.config_id, times=2)  # WeCom delivered the callback twice
    assert await grants(sessions, inviter) == []
    await join(bot, "wm_f3", mine.config_id)
    [grant] = await grants(sessions, inviter)
    assert (grant.rule_id, grant.reward, grant.reason) == ("group_3", "社群专属券", "group_joined")
    await join(bot, "wm_f4", mine.config_id)  # a fourth friend: the tier was reached once
    assert len(await grants(sessions, inviter)) == 1

    async with sessions() as session:
        milestones = await session.scalar(select(func.count()).select_from(ReferralMilestone)
                                          .where(ReferralMilestone.inviter_id == inviter))
        kinds = list(await session.scalars(select(TimelineEvent.kind).where(TimelineEvent.customer_id == inviter)))
        report = await code_report(session, parent, PURCHASE)
    assert milestones == 4
    assert kinds.count("group.fission") == 5 and kinds.count("reward.granted") == 1  # every join, one grant
    assert [(i.customer_id, i.friends) for i in report.top_inviters] == [(inviter, 4)]
    assert report.figures.joiners == 5 and report.personal_codes == 1

    async with sessions() as session, session.begin():
        reversal = await reverse(session, grant.id, "好友退群")
    async with sessions() as session:
        entries = await ledger(session, inviter)
    assert [(e.kind, e.reverses_id) for e in entries] == [("reversal", grant.id), ("grant", None)]
    assert reversal.reward == "社群专属券"


@pytest.fixture
async def sessions(backend: Backend) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(backend.store_url)
    yield session_factory(engine)
    await engine.dispose()


async def test_concurrent_joins_through_one_personal_code_grant_the_tier_once(
    sessions: async_sessionmaker[AsyncSession], backend: Backend
) -> None:
    growth = Growth(GrowthSettings(rewards=[RewardRule.model_validate(RULE)]), Lifecycle(LifecycleSettings()))
    hook = GroupJoins(growth)
    async with sessions() as session, session.begin():
        groups = [GroupChat(chat_id=f"wr{n}", name=f"群{n}", owner_userid="zhang") for n in range(3)]
        session.add_all(groups)
        await session.flush()
        inviter = await resolve_customer(session, "wecom", "wm_inviter", Profile("邀请人"))
        parent = await add_code(session, GroupCodeSpec("福利群", ("wr0", "wr1", "wr2"), fission=True), "gc_PARENT22",
                                "cfg", "https://qr/p")
        personal, _ = await add_personal(session, parent, inviter.id, "gc_PERSON22", "cfg_p", "https://qr/me")
        friends = [await resolve_customer(session, "wecom", f"wm_f{n}", Profile(f"好友{n}")) for n in range(3)]
        for n, friend in enumerate(friends):  # each in a group of their own: their callbacks run in parallel
            session.add(GroupChatMember(group_id=groups[n].id, userid=f"wm_f{n}", kind="customer",
                                        customer_id=friend.id, code_id=personal.id, inviter_id=inviter.id))
    ids = [(group.id, f"wm_f{n}") for n, group in enumerate(groups)]

    async def joined(group_id: int, userid: str) -> list[object]:
        async with sessions() as session, session.begin():
            group = await session.get_one(GroupChat, group_id)
            member = await session.get_one(GroupChatMember, (group_id, userid))
            return list(await hook.joined(session, group, member))

    if backend.name == "postgres":
        outcomes = await asyncio.gather(*(joined(*key) for key in ids))
    else:  # SQLite writes one transaction at a time
        outcomes = [await joined(*key) for key in ids]
    outcomes += [await joined(*ids[0])]  # the same join handed over again
    async with sessions() as session:
        entries = list(await session.scalars(select(RewardEntry)))
    assert [(e.rule_id, e.customer_id, e.kind) for e in entries] == [("group_3", inviter.id, "grant")]
    told = [effect for effects in outcomes for effect in effects if isinstance(effect, Notify)]
    assert [effect.text for effect in told].count("您已邀请 3 位好友进群，获得社群专属券！") == 1
    assert all(effect.customer_id == inviter.id for effect in told)


async def test_a_customer_asks_for_their_group_invite_in_a_chat(bot: Bot) -> None:
    sessions, api = bot.runtime.sessions, bot.runtime.apis["wecom.contacts"]
    await bot.simulator.kf_says(bot.url, "wm_asker", "拉好友进群")
    await bot.drain_until_answered("wm_asker")
    assert "没有进行中的邀请进群活动" in bot.replies_to("wm_asker")[-1].text  # no campaign yet: said so
    chat = await new_group(bot, "福利群1")
    await create_code(sessions, api, GroupCodeSpec("福利群", (chat,), room_base_name="福利群", fission=True))
    await bot.simulator.kf_says(bot.url, "wm_asker", "拉好友进群")
    await settle(bot)
    asker = await customer_id(bot, "wm_asker")
    async with sessions() as session:
        mine = await session.scalar(select(GroupJoinCode).where(GroupJoinCode.inviter_id == asker))
    assert mine is not None and bot.fake.join_ways[mine.config_id].state == mine.code
    answer = bot.replies_to("wm_asker")[-1].text
    assert mine.qr_code in answer and "福利群" in answer
