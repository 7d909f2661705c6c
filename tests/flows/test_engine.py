"""The flow engine end to end: signed callbacks in, replies out of the fake WeCom/OA API, state in a real store.

NLU runs in rules mode (deterministic intents); flows are the shipped ones unless a
test writes its own directory.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from crm_store.conversations import active_conversation
from crm_store.models import Conversation, Customer, Identity, StageChange, TimelineEvent, utcnow
from crm_store.tags import tags_of
from flows.publishing import publish_flows, validate
from flows.settings import SHIPPED_FLOWS
from tests.bot.conftest import Bot

ASK_PRODUCT = "请问您想了解哪款商品呢？告诉我商品名称就好～"


async def customer_of(bot: Bot, external_id: str) -> Customer:
    async with bot.runtime.sessions() as session:
        customer = await session.scalar(select(Customer).join(Identity).where(Identity.external_id == external_id))
    assert customer is not None
    return customer


async def timeline_kinds(bot: Bot, customer_id: int) -> list[str]:
    async with bot.runtime.sessions() as session:
        rows = await session.scalars(
            select(TimelineEvent.kind).where(TimelineEvent.customer_id == customer_id).order_by(TimelineEvent.id)
        )
        return list(rows)


async def say(bot: Bot, user: str, text: str, menu_id: str = "") -> list[str]:
    """Send one kf message and return the texts of the replies it produced."""
    before = len(bot.replies_to(user))
    assert await bot.simulator.kf_says(bot.url, user, text, menu_id=menu_id) == 200
    await bot.drain()
    return [reply.text for reply in bot.replies_to(user)[before:]]


def flow_dir(tmp_path: Path, **files: str) -> Path:
    """A flow directory: the shipped tag catalog plus the given files."""
    directory = tmp_path / "flows"
    directory.mkdir(exist_ok=True)
    (directory / "tags.yaml").write_text((SHIPPED_FLOWS / "tags.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    for name, text in files.items():
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
    return directory


async def test_welcome_menu_leads_into_the_price_flow_and_moves_the_stage(bot: Bot) -> None:
    await bot.simulator.kf_enters(bot.url, "wmShop")
    await bot.drain()
    [welcome] = bot.replies_to("wmShop")
    assert welcome.path == "kf/send_msg_on_event" and welcome.body["msgtype"] == "msgmenu"
    assert await say(bot, "wmShop", "问价格", menu_id="price") == [ASK_PRODUCT]
    replies = await say(bot, "wmShop", "连衣裙")
    assert replies[0].startswith("连衣裙 的实时价格") and "https://shop.example.com/search" in replies[1]
    assert replies[2] == "需要我送您一张新人优惠券吗？"
    customer = await customer_of(bot, "wmShop")
    assert customer.stage == "interested"
    async with bot.runtime.sessions() as session:
        assert set(await tags_of(session, customer.id)) == {"来自客服", "询价"}
        reason = await session.scalar(select(StageChange.reason).where(StageChange.customer_id == customer.id))
    assert reason == "flow:price_question.interested"
    coupon = await say(bot, "wmShop", "好的")
    assert coupon[0].startswith("这是您的专属优惠券") and "https://shop.example.com/coupon" in coupon[1]


async def test_phone_answer_is_validated_with_a_reprompt_then_handed_off(bot: Bot) -> None:
    assert (await say(bot, "wmOrder", "查订单"))[0].startswith("请告诉我下单时留的手机号")
    assert (await say(bot, "wmOrder", "不记得了"))[0].startswith("手机号好像不太对")
    [handoff] = await say(bot, "wmOrder", "+86 １３８-1234-5678")  # the turn's two texts, merged into one message
    assert "13812345678" in handoff and "转接" in handoff
    assert handoff.endswith("\n\n客服同事都在忙，已为您排队，稍后会有专人联系您。")  # no rep is on duty in this store
    customer = await customer_of(bot, "wmOrder")
    assert "handoff.requested" in await timeline_kinds(bot, customer.id)
    async with bot.runtime.sessions() as session:
        assert await active_conversation(session, customer.id) is None
        ended = await session.scalar(select(Conversation).where(Conversation.customer_id == customer.id))
    assert ended is not None and ended.end_reason == "handoff" and ended.slots == {"phone": "13812345678"}


async def test_wrong_answers_run_out_of_retries_into_on_fail(bot: Bot) -> None:
    await say(bot, "wmRetry", "查订单")
    await say(bot, "wmRetry", "a")
    await say(bot, "wmRetry", "b")
    [handoff] = await say(bot, "wmRetry", "c")  # retries: 2, then on_fail: the human flow
    assert handoff.startswith("好的，正在为您转接人工客服，请稍候。\n\n")
    kinds = await timeline_kinds(bot, (await customer_of(bot, "wmRetry")).id)
    assert "flow.ask_failed" in kinds


async def test_a_stronger_trigger_interrupts_the_running_flow(bot: Bot) -> None:
    assert await say(bot, "wmAngry", "多少钱") == [ASK_PRODUCT]
    replies = await say(bot, "wmAngry", "我要投诉")
    assert replies[0].startswith("非常抱歉")
    async with bot.runtime.sessions() as session:
        reasons = (await session.scalars(select(Conversation.end_reason).order_by(Conversation.id))).all()
    assert reasons == ["interrupted:complaint", "handoff"]


async def test_free_text_ask_gives_way_to_another_flow_but_typed_answers_do_not(bot: Bot) -> None:
    await say(bot, "wmHello", "多少钱")
    [greeting] = await say(bot, "wmHello", "你好")  # not a product name: smalltalk answers
    assert greeting.startswith("您好")


async def test_a_lone_number_with_no_question_gets_clarifying_choices(bot: Bot) -> None:
    [clarify] = await say(bot, "wmOne", "1")
    assert clarify.startswith("抱歉，我没太明白")
    [reply] = bot.replies_to("wmOne")
    assert reply.body["msgtype"] == "msgmenu" and len(reply.body["msgmenu"]["list"]) == 4
    assert await say(bot, "wmOne", "1") == [ASK_PRODUCT]  # now "1" is an answer: 问价格


async def test_asking_the_price_three_times_tags_high_intent(bot: Bot) -> None:
    for _ in range(3):
        await say(bot, "wmKeen", "多少钱")
    customer = await customer_of(bot, "wmKeen")
    async with bot.runtime.sessions() as session:
        assert "高意向" in await tags_of(session, customer.id)
        causes = (await session.scalars(select(TimelineEvent.data).where(TimelineEvent.kind == "tag.added"))).all()
    assert {"tag": "高意向", "cause": "rule:price_thrice"} in causes


async def test_unsubscribe_stops_marketing_and_resubscribe_resumes(bot: Bot) -> None:
    [done] = await say(bot, "wmStop", "退订")
    assert done.startswith("已为您退订")
    assert (await customer_of(bot, "wmStop")).marketing_opt_out
    coupon = await say(bot, "wmStop", "领券")
    assert coupon == ["您已退订营销消息，回复“订阅”即可重新领取优惠。"]
    await say(bot, "wmStop", "订阅")
    assert not (await customer_of(bot, "wmStop")).marketing_opt_out


async def test_oa_unfollow_churns_and_a_new_message_brings_the_customer_back(bot: Bot) -> None:
    for text in ("多少钱", "连衣裙"):
        await bot.simulator.oa_says(bot.url, "oBack", text)
        await bot.drain()
    customer = await customer_of(bot, "oBack")
    assert customer.stage == "interested"
    await bot.simulator.oa_unsubscribes(bot.url, "oBack")
    await bot.drain()
    assert (await customer_of(bot, "oBack")).stage == "churned"
    await bot.simulator.oa_says(bot.url, "oBack", "你好")
    await bot.drain()
    assert (await customer_of(bot, "oBack")).stage == "interested"
    async with bot.runtime.sessions() as session:
        moves = (await session.execute(select(StageChange.from_stage, StageChange.to_stage)
                                       .order_by(StageChange.id))).all()
    assert [tuple(move) for move in moves] == [("lead", "interested"), ("interested", "churned"),
                                                ("churned", "interested")]


async def test_one_running_flow_per_customer_is_a_database_constraint(bot: Bot) -> None:
    await say(bot, "wmOnce", "多少钱")
    customer = await customer_of(bot, "wmOnce")
    async with bot.runtime.sessions() as session:
        running = await active_conversation(session, customer.id)
        assert running is not None
        session.add(Conversation(customer_id=customer.id, flow_id="coupon", flow_version=1,
                                 release_id=running.release_id, step_id="check"))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_a_conversation_keeps_its_version_after_a_new_publish(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flow = """flow: survey
triggers: [{keywords: [问卷]}]
steps:
  - {ask: 您的年龄？, expect: number, slot: age}
  - {end: "版本一：{{ slots.age }}"}
"""
    directory = flow_dir(tmp_path, survey=flow)
    bot = await start_bot(flows={"directory": str(directory)})
    await say(bot, "wmOld", "问卷")
    (directory / "survey.yaml").write_text(flow.replace("版本一", "版本二"), encoding="utf-8")
    settings = bot.settings
    async with bot.runtime.sessions() as session, session.begin():
        flows = validate({p.name: p.read_text(encoding="utf-8") for p in directory.iterdir()},
                         settings.lifecycle, settings.nlu)
        published = await publish_flows(session, flows)
    assert published.changed == ("survey",)
    assert await say(bot, "wmOld", "三十") == ["版本一：30"]  # started on version 1
    await say(bot, "wmNew", "问卷")
    assert await say(bot, "wmNew", "25") == ["版本二：25"]
    async with bot.runtime.sessions() as session:
        versions = (await session.scalars(select(Conversation.flow_version).order_by(Conversation.id))).all()
    assert versions == [1, 2]


async def test_wait_and_ask_timeouts_are_woken_by_the_scheduler_job(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flows = flow_dir(
        tmp_path,
        nudge="""flow: nudge
triggers: [{keywords: [提醒我]}]
steps:
  - say: 好的，一小时后提醒您
  - wait: 1h
  - {ask: 还需要帮忙吗？, expect: intent, intents: [affirm, deny], timeout: 10m, on_timeout: bye}
  - {end: 好的}
  - {id: bye, end: 那我先不打扰啦}
""",
    )
    bot = await start_bot(flows={"directory": str(flows)})
    assert await say(bot, "wmLater", "提醒我") == ["好的，一小时后提醒您"]
    waker = bot.runtime.waker
    assert waker is not None
    assert await waker.wake_due() == 0  # nothing is due yet
    assert await waker.wake_due(utcnow() + timedelta(minutes=61)) == 1
    await bot.drain()
    assert bot.replies_to("wmLater")[-1].text == "还需要帮忙吗？"
    assert await waker.wake_due(utcnow() + timedelta(minutes=75)) == 1
    assert await waker.wake_due(utcnow() + timedelta(minutes=75)) == 0  # woken once, not twice
    await bot.drain()
    assert [r.text for r in bot.replies_to("wmLater")][-1] == "那我先不打扰啦"
    assert [r.path for r in bot.replies_to("wmLater")] == ["kf/send_msg"] * 3


async def test_inactivity_ends_the_conversation_and_the_next_message_starts_fresh(bot: Bot) -> None:
    await say(bot, "wmIdle", "多少钱")
    waker = bot.runtime.waker
    assert waker is not None
    assert await waker.wake_due(utcnow() + timedelta(hours=1)) == 1  # ask_product's 30 min timeout → END
    customer = await customer_of(bot, "wmIdle")
    async with bot.runtime.sessions() as session:
        assert await active_conversation(session, customer.id) is None
    assert (await say(bot, "wmIdle", "你好"))[0].startswith("您好")


async def test_tag_and_stage_triggers_and_sub_flows(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory = flow_dir(
        tmp_path,
        vip="""flow: vip
triggers: [{keywords: [会员]}]
steps:
  - call: perks
  - {tag: 高意向}
  - say: 已为您升级
""",
        perks="""flow: perks
steps:
  - say: 会员权益：包邮
""",
        hot="""flow: hot
triggers: [{tag: 高意向}]
steps:
  - set_stage: 意向
  - say: "{{ customer.stage_label }}客户专属顾问稍后联系您"
""",
    )
    bot = await start_bot(flows={"directory": str(directory)})
    assert await say(bot, "wmVip", "会员") == ["会员权益：包邮\n\n已为您升级\n\n意向客户专属顾问稍后联系您"]
    kinds = await timeline_kinds(bot, (await customer_of(bot, "wmVip")).id)
    assert kinds.count("flow.started") == 2 and "stage.changed" in kinds


async def test_an_unknown_message_with_no_fallback_flow_gets_no_reply_and_no_error(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory = flow_dir(tmp_path, hi="flow: hi\ntriggers: [{keywords: [嗨]}]\nsteps:\n  - say: 嗨\n")
    bot = await start_bot(flows={"directory": str(directory)})
    assert await say(bot, "wmQuiet", "1") == []
    async with bot.runtime.sessions() as session:
        failed = await session.scalar(select(func.count()).select_from(TimelineEvent)
                                      .where(TimelineEvent.kind == "flow.loop_guard"))
    assert failed == 0


async def test_kf_account_of_the_reply_is_the_one_the_customer_wrote_to(bot: Bot) -> None:
    await say(bot, "wmAcct", "多少钱")
    assert bot.replies_to("wmAcct")[0].body["open_kfid"] == SANDBOX_KF_ACCOUNT


async def test_interrupts_can_be_turned_off(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(flows={"interrupt": "never"})
    await say(bot, "wmStay", "查订单")
    [reprompt] = await say(bot, "wmStay", "我要投诉")  # the running flow keeps the message
    assert reprompt.startswith("手机号好像不太对")


async def test_a_new_contact_is_welcomed_owned_and_tagged_on_the_wecom_side(bot: Bot) -> None:
    bot.fake.contacts["wmFriend"] = {"name": "李先生", "unionid": "uFRIEND"}
    bot.fake.add_follow_user("wmFriend", "rep_li")
    assert await bot.simulator.contact_adds(bot.url, "wmFriend", "rep_li") == 200
    await bot.drain()
    [welcome] = bot.replies_to("wmFriend")
    assert welcome.path == "externalcontact/send_welcome_msg" and "李先生" in welcome.text
    customer = await customer_of(bot, "wmFriend")
    assert customer.owner_userid == "rep_li"
    assert bot.fake.corp_tag_names("wmFriend", "rep_li") == {"来自企微"}
