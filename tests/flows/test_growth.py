"""Group-buy and invite-for-reward end to end: signed callbacks in, the fake API's messages out, a real store.

Customers open and join groups by chat, share links (scene_param, qrscene_) and typed
codes; members are told when a group fills or expires; invitees are attributed and
inviters rewarded through the ledger, once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from crm_store import social
from crm_store.campaigns import create_campaign, spec_from_mapping
from crm_store.growth_models import Campaign, GroupBuy, GroupMember, InviteCode, Referral, RewardEntry
from crm_store.models import Customer, TimelineEvent, utcnow
from crm_store.tags import tags_of
from tests.bot.conftest import Bot
from tests.flows.test_engine import customer_of, say, timeline_kinds


async def campaign(bot: Bot, **fields: Any) -> Campaign:
    data = {"code": "tea", "name": "春茶", "price": "59.90", "group_size": 3, "group_hours": 24,
            "ends": (utcnow() + timedelta(days=7)).isoformat(), "stock": 100, **fields}
    async with bot.runtime.sessions() as session, session.begin():
        return await create_campaign(session, spec_from_mapping(data, ["lead", "interested", "customer"], ["拼团成功"]))


async def only_group(bot: Bot) -> GroupBuy:
    async with bot.runtime.sessions() as session:
        [group] = (await session.scalars(select(GroupBuy))).all()
    return group


async def oa_say(bot: Bot, openid: str, text: str) -> list[str]:
    before = len(bot.replies_to(openid))
    assert await bot.simulator.oa_says(bot.url, openid, text) == 200
    await bot.drain()
    return [reply.text for reply in bot.replies_to(openid)[before:]]


async def kf_enter(bot: Bot, user: str, scene: str) -> list[str]:
    before = len(bot.replies_to(user))
    assert await bot.simulator.kf_enters(bot.url, user, scene) == 200
    await bot.drain()
    return [reply.text for reply in bot.replies_to(user)[before:]]


async def test_a_group_opens_fills_by_link_and_typed_code_and_every_member_is_told(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(growth={"share_link": "https://work.weixin.qq.com/kfid/kfcSHOP?enc_scene=X"})
    await campaign(bot, fill_stage="customer")
    [opened] = await say(bot, "wmLeader", "我要开团")
    group = await only_group(bot)
    assert f"团号 {group.code}" in opened and "¥59.90" in opened
    assert f"&scene_param=gb_{group.code}" in opened  # the share link carries the group's code

    [entry] = await kf_enter(bot, "wmFriend", f"gb_{group.code}")  # a friend opens the shared link
    welcome, joined = entry.split("\n\n", 1)  # an entry's welcome code carries one message: merged
    assert welcome == "欢迎！新人礼 新人券5元 已放入您的账户～"  # brought by the leader: an arrival reward
    assert "（2/3 人）" in joined
    assert bot.replies_to("wmFriend")[0].path == "kf/send_msg_on_event"  # the welcome code answers the entry

    typed = " ".join(group.code.lower())  # "k 7 p 3 q x": spaces and lower case are fine
    filled = await oa_say(bot, "oaThird", f"参团 {typed}")
    assert len(filled) == 1 and filled[0].startswith("🎉 拼团成功")
    assert bot.replies_to("wmLeader")[-2].text.startswith("🎉 拼团成功")  # the leader is told at once
    assert bot.replies_to("wmLeader")[-1].text == "好友 一位好友 完成了首单，奖励您 无门槛券20元！"
    # The friend only opened the chat: kf lets the bot write only after a customer message, so their notice waits…
    assert not bot.replies_to("wmFriend")[-1].text.startswith("🎉 拼团成功")
    assert (await say(bot, "wmFriend", "好的"))[-1].startswith("🎉 拼团成功")  # …and goes with the next answer
    assert bot.fake.refused == []

    group = await only_group(bot)
    assert (group.status, group.members) == ("filled", 3)
    leader, friend = await customer_of(bot, "wmLeader"), await customer_of(bot, "wmFriend")
    async with bot.runtime.sessions() as session:
        assert "拼团成功" in await tags_of(session, friend.id)
        assert (await session.get_one(Customer, friend.id)).stage == "customer"
        assert await session.scalar(select(Referral.inviter_id).where(Referral.friend_id == friend.id)) == leader.id
        stats = await social.stats_of(session, leader.id)
        assert stats is not None
        assert (stats.friends, stats.friends_converted, stats.groups_led, stats.groups_filled) == (1, 1, 1, 1)
        assert (await session.get_one(Campaign, group.campaign_id)).sold == 3
    assert "group.filled" in await timeline_kinds(bot, leader.id)


async def test_a_full_group_refuses_and_offers_to_open_one_and_nobody_joins_twice(bot: Bot) -> None:
    await campaign(bot, group_size=2, limit_per_customer=2)
    await say(bot, "wmA", "开团")
    group = await only_group(bot)
    again = await say(bot, "wmA", f"参团 {group.code}")
    assert again == [f"您已经在这个团里了（1/2 人），把团号 {group.code} 分享给好友一起拼吧～"]
    await say(bot, "wmB", f"参团 {group.code}")
    [refused] = await say(bot, "wmC", f"参团 {group.code}")
    assert refused.startswith("这个团已经满员啦") and "开团" in refused
    async with bot.runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(GroupMember)) == 2


async def test_an_expired_group_tells_its_members_gives_stock_back_and_points_to_open_groups(bot: Bot) -> None:
    await campaign(bot, group_hours=1)
    await say(bot, "wmLate", "开团")
    first = await only_group(bot)
    await say(bot, "wmFriend2", f"参团 {first.code}")
    jobs = bot.runtime.growth_jobs
    assert jobs is not None
    assert await jobs.expire_groups() == 0  # not due yet
    await say(bot, "wmOther", "开团")  # another open group to offer
    assert await jobs.expire_groups(utcnow() + timedelta(minutes=59, seconds=59)) == 0
    expired = await jobs.expire_groups(utcnow() + timedelta(hours=1, seconds=1))
    assert expired == 2
    await bot.drain()
    told = bot.replies_to("wmLate")[-1].text
    assert "未能在截止前成团" in told and first.code in told
    async with bot.runtime.sessions() as session:
        assert (await session.get_one(Campaign, first.campaign_id)).sold == 0
        statuses = set((await session.scalars(select(GroupBuy.status))).all())
    assert statuses == {"expired"}
    assert await jobs.expire_groups(utcnow() + timedelta(hours=2)) == 0  # fired once
    [refused] = await say(bot, "wmNew", f"参团 {first.code}")
    assert refused.startswith("这个团已经过了截止时间")


async def test_bad_group_codes_and_closed_campaigns_get_clear_answers(bot: Bot) -> None:
    assert await say(bot, "wmX", "开团") == ["当前没有进行中的拼团活动，敬请期待～"]
    await campaign(bot)
    [unknown] = await say(bot, "wmX", "参团 ZZZ222")
    assert unknown.startswith("没有找到拼团码 ZZZ222")
    await say(bot, "wmY", "开团")
    group = await only_group(bot)
    fullwidth = group.code.translate({ord(c): ord(c) + 0xFEE0 for c in group.code})  # ｋ７… as some keyboards type
    assert (await say(bot, "wmZ", f"参团 {fullwidth}"))[0].startswith("已加入")
    async with bot.runtime.sessions() as session, session.begin():
        from crm_store.campaigns import close_campaign

        await close_campaign(session, "tea")
    [closed] = await say(bot, "wmW", f"参团 {group.code}")
    assert closed == "「春茶」活动已结束，敬请关注下一次活动～"


async def test_sold_out_campaign_refuses_the_next_group(bot: Bot) -> None:
    await campaign(bot, stock=1)
    await say(bot, "wmFirst", "开团")
    [refused] = await say(bot, "wmSecond", "开团")
    assert refused == "「春茶」已经被抢光啦，下次早点来～"


async def invite_code_of(bot: Bot, user: str) -> str:
    [shown] = await say(bot, user, "邀请好友")
    customer = await customer_of(bot, user)
    async with bot.runtime.sessions() as session:
        code = await session.scalar(select(InviteCode.code).where(InviteCode.customer_id == customer.id))
    assert code and f"邀请码：{code}" in shown
    return code


async def test_a_friend_arriving_through_an_invite_link_is_attributed_and_rewards_are_granted_once(bot: Bot) -> None:
    code = await invite_code_of(bot, "wmInviter")
    [welcome] = await kf_enter(bot, "wmInvitee", f"inv_{code}")  # an entry's code carries one message
    reward, hello = welcome.split("\n\n")
    assert reward == "欢迎！新人礼 新人券5元 已放入您的账户～"  # the friend's own arrival reward
    assert hello.startswith("欢迎！您是")
    assert bot.replies_to("wmInviter")[-1].text.endswith("积分10 已到账！")

    # WeChat retries the same enter_session; the friend comes back through the link again later
    bot.fake.add_kf_enter_session(SANDBOX_KF_ACCOUNT, "wmInvitee", f"inv_{code}")
    await kf_enter(bot, "wmInvitee", f"inv_{code}")
    async with bot.runtime.sessions() as session:
        entries = (await session.scalars(select(RewardEntry.rule_id).order_by(RewardEntry.id))).all()
    assert entries == ["friend_arrived", "friend_welcome"]


async def test_typed_invite_codes_refuse_self_invites_and_existing_customers(bot: Bot) -> None:
    code = await invite_code_of(bot, "wmOwner")
    assert await say(bot, "wmOwner", f"邀请码 {code}") == ["不能填写自己的邀请码哦，把它分享给好友吧～"]
    assert await say(bot, "wmNobody", "邀请码 22222222") == [
        "没有找到邀请码 22222222，请核对后再发一次（8 位字母或数字）。"]
    old = await customer_of(bot, "wmNobody")
    async with bot.runtime.sessions() as session, session.begin():
        (await session.get_one(Customer, old.id)).created_at = utcnow() - timedelta(days=30)
    assert await say(bot, "wmNobody", f"邀请码 {code.lower()}") == ["邀请码仅限新朋友使用，您是我们的老朋友啦～"]
    fresh = await say(bot, "wmFresh", f"我的邀请码是 {code[:4]}-{code[4:]}")
    assert "\n\n欢迎！您是" in fresh[-1]  # after the arrival reward, in the same message


async def test_conversions_reward_the_inviter_per_friend_and_at_the_third_friend_once(bot: Bot) -> None:
    code = await invite_code_of(bot, "wmStar")
    star = await customer_of(bot, "wmStar")
    await campaign(bot, group_size=2, fill_stage="customer", limit_per_customer=5)
    for index in range(3):  # each friend arrives by the link, then buys in a group with the star
        friend = f"wmFan{index}"
        await kf_enter(bot, friend, f"inv_{code}")
        await say(bot, friend, "开团")
        async with bot.runtime.sessions() as session:
            group_code = await session.scalar(select(GroupBuy.code).order_by(GroupBuy.id.desc()).limit(1))
        await say(bot, "wmStar", f"参团 {group_code}")
    async with bot.runtime.sessions() as session:
        rules = (await session.scalars(
            select(RewardEntry.rule_id).where(RewardEntry.customer_id == star.id).order_by(RewardEntry.id)
        )).all()
        stats = await social.stats_of(session, star.id)
    assert rules.count("friend_bought") == 3 and rules.count("three_friends") == 1
    assert rules.count("friend_arrived") == 3
    assert stats is not None and (stats.friends, stats.friends_converted, stats.groups_filled) == (3, 3, 0)
    assert any("已有 3 位好友下单" in sent.text for sent in bot.replies_to("wmStar"))


async def test_a_notification_outside_the_service_window_is_recorded_not_forced(bot: Bot) -> None:
    code = await invite_code_of(bot, "wmQuiet")
    quiet = await customer_of(bot, "wmQuiet")
    async with bot.runtime.sessions() as session, session.begin():
        row = await session.get_one(Customer, quiet.id)
        row.reach = {**row.reach, "at": int(row.reach["at"]) - 49 * 3600}
    sent_before = len(bot.replies_to("wmQuiet"))
    await kf_enter(bot, "wmLoud", f"inv_{code}")
    assert len(bot.replies_to("wmQuiet")) == sent_before
    async with bot.runtime.sessions() as session:
        data = await session.scalar(select(TimelineEvent.data).where(
            TimelineEvent.customer_id == quiet.id, TimelineEvent.kind == "notify.undeliverable"))
    assert data is not None and "48-hour service window" in data["reason"]


async def test_an_add_through_a_channel_qr_runs_its_welcome_flow_tags_and_counts_the_rep(bot: Bot) -> None:
    from crm_store.channels import ChannelSpec, add_channel, brand_day, rep_adds

    spec = ChannelSpec(name="双11海报", kind="contact_way", welcome_flow="coupon", tags=("来自企微",),
                       reps=("zhangsan", "lisi"), daily_cap=50)
    async with bot.runtime.sessions() as session, session.begin():
        channel = await add_channel(session, spec, "ch_POSTER11", "cfg1", "https://qr.example/1", spec.reps)
    assert await bot.simulator.contact_adds(bot.url, "wmPoster", "lisi", state="ch_POSTER11") == 200
    await bot.drain()
    [welcome] = bot.replies_to("wmPoster")
    assert welcome.path == "externalcontact/send_welcome_msg"  # inside the WelcomeCode's 20 seconds
    assert "优惠券" in welcome.text  # the channel's welcome flow, not the default contact welcome
    customer = await customer_of(bot, "wmPoster")
    async with bot.runtime.sessions() as session:
        assert "来自企微" in await tags_of(session, customer.id)
        assert (await session.get_one(Customer, customer.id)).entry_channel_id == channel.id
        assert await rep_adds(session, channel, brand_day("Asia/Shanghai")) == {"lisi": 1}
    assert "channel.arrived" in await timeline_kinds(bot, customer.id)


async def test_a_welcome_that_missed_its_20_seconds_is_not_sent_and_says_why(bot: Bot) -> None:
    from crm_store.models import OutboxItem

    assert await bot.simulator.contact_adds(bot.url, "wmSlow", "lisi") == 200
    await bot.runtime.inbox.drain()
    async with bot.runtime.sessions() as session, session.begin():
        item = await session.scalar(select(OutboxItem).where(OutboxItem.kind == "contacts.send_welcome_msg"))
        assert item is not None and item.payload["_send_by"] > utcnow().timestamp()
        item.payload = {**item.payload, "_send_by": int(utcnow().timestamp()) - 1}  # the worker was too slow
    await bot.drain()
    assert bot.replies_to("wmSlow") == []
    async with bot.runtime.sessions() as session:
        item = await session.get_one(OutboxItem, item.id)
    assert (item.status, item.last_error) == ("failed", "not sent: the welcome code's 20 seconds had passed")


VIP_FLOW = """
flow: vip
triggers:
  - keywords: [会员]
steps:
  - branch:
      - {when: {social_min: 6}, goto: influencer}
      - else: regular
  - {id: influencer, end: 您是我们的推荐官，专属顾问马上联系您！}
  - {id: regular, end: 欢迎了解会员权益～}
"""


async def test_flows_branch_on_social_value(start_bot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.flows.test_engine import flow_dir

    bot = await start_bot(flows={"directory": str(flow_dir(tmp_path, vip=VIP_FLOW))})
    assert await say(bot, "wmPlain", "会员") == ["欢迎了解会员权益～"]
    star = await customer_of(bot, "wmPlain")
    async with bot.runtime.sessions() as session, session.begin():
        await social.bump(session, [star.id], "friends_converted", bot.settings.growth.social_weights)  # 5
        await social.bump(session, [star.id], "friends", bot.settings.growth.social_weights)  # +1
    assert await say(bot, "wmPlain", "会员") == ["您是我们的推荐官，专属顾问马上联系您！"]
