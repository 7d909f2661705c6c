"""Handoff to reps end to end: signed callbacks in, the fake API's cards and kf moves out, a real store.

A customer asks for a person, the right rep gets the card, the bot goes quiet, the rep takes
over and releases, the bot resumes; an offer nobody takes escalates; outside office hours the
customer is told when a person will answer; two messages at once make one handoff.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from bot.rep_departure import DepartureError, depart_with
from bot.sandbox.fake_wechat import Sent
from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from crm_store import handoffs
from crm_store.handoff_models import Handoff
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer, utcnow
from crm_store.reps import add_rep, set_team
from crm_store.tags import add_tags
from flows.handoff_desk import HandoffDesk
from tests.bot.conftest import Bot
from tests.flows.test_engine import customer_of, say, timeline_kinds

ALWAYS_OPEN = {"office_hours": "mon-sun 00:00-24:00"}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


async def reps(bot: Bot, *userids: str, capacity: int = 5) -> None:
    async with bot.runtime.sessions() as session, session.begin():
        for userid in userids:
            await add_rep(session, userid, name=userid.title(), capacity=capacity)


async def rep_says(bot: Bot, userid: str, text: str) -> None:
    """A rep types in the self-built app: a signed, encrypted app callback."""
    assert await bot.simulator.rep_says(bot.url, userid, text) == 200
    await bot.drain()


def to_rep(bot: Bot, userid: str) -> list[Sent]:
    return [sent for sent in bot.replies_to(userid) if sent.path == "message/send"]


def card_text(sent: Sent) -> str:
    card = sent.body.get("textcard") or {}
    return f"{card.get('title', '')}\n{card.get('description', '')}" if card else str(sent.body["text"]["content"])


def kf_moves(bot: Bot, user: str) -> list[tuple[int, str]]:
    return [(int(sent.body["service_state"]), str(sent.body.get("servicer_userid", "")))
            for sent in bot.fake.sent if sent.path == "kf/service_state/trans" and sent.body["external_userid"] == user]


async def open_handoff(bot: Bot, user: str) -> Handoff | None:
    customer = await customer_of(bot, user)
    async with bot.runtime.sessions() as session:
        return await handoffs.open_handoff_of(session, customer.id)


async def run_due(bot: Bot, after_s: float) -> int:
    assert bot.runtime.handoff_jobs is not None
    handled = await bot.runtime.handoff_jobs.run_due(utcnow() + timedelta(seconds=after_s))
    await bot.drain()
    return handled


async def test_customer_asks_for_a_person_rep_gets_the_card_bot_goes_quiet_rep_releases_bot_resumes(
    start_bot,  # type: ignore[no-untyped-def]
) -> None:
    bot = await start_bot(handoff=ALWAYS_OPEN)
    await reps(bot, "zhangsan")
    await say(bot, "wmAnna", "这件连衣裙多少钱")
    assert await say(bot, "wmAnna", "转人工") == ["好的，正在为您转接人工客服，请稍候。"]
    anna = await customer_of(bot, "wmAnna")

    [card] = to_rep(bot, "zhangsan")
    text = card_text(card)
    assert card.body["msgtype"] == "textcard" and "转人工：" in text and "客户要求人工" in text
    assert "「这件连衣裙多少钱」" in text and f"接 {anna.id}" in text and "标签：" in text
    assert kf_moves(bot, "wmAnna") == [(3, "zhangsan")]  # kf: the session is in the rep's workspace

    assert await say(bot, "wmAnna", "还在吗？") == []  # a person has the customer: the bot is silent
    await rep_says(bot, "zhangsan", f"接 {anna.id}")
    assert card_text(to_rep(bot, "zhangsan")[-1]).startswith("已接待")
    handoff = await open_handoff(bot, "wmAnna")
    assert handoff is not None and (handoff.status, handoff.rep_userid) == ("taken", "zhangsan")

    await rep_says(bot, "zhangsan", f"放 {anna.id}")
    assert await open_handoff(bot, "wmAnna") is None
    assert kf_moves(bot, "wmAnna") == [(3, "zhangsan"), (4, "")]  # the rep's session ended
    assert bot.replies_to("wmAnna")[-1].text == "本次人工服务已结束，智能助手继续为您服务。"
    assert await say(bot, "wmAnna", "多少钱") != []  # the bot answers again
    kinds = await timeline_kinds(bot, anna.id)
    for kind in ("handoff.opened", "handoff.customer_waiting", "handoff.taken", "handoff.closed"):
        assert kind in kinds


async def test_an_offer_nobody_takes_escalates_to_the_next_rep_then_returns_to_the_bot(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(handoff={**ALWAYS_OPEN, "answer_within_s": 60, "idle_release_s": 600})
    await reps(bot, "amy", "bob")
    await say(bot, "wmCarl", "转人工")
    first = (await open_handoff(bot, "wmCarl"))
    assert first is not None and first.rep_userid == "amy"  # least loaded, then alphabetical

    assert await run_due(bot, 30) == 0  # not yet
    assert await run_due(bot, 61) == 1
    escalated = await open_handoff(bot, "wmCarl")
    assert escalated is not None and (escalated.status, escalated.rep_userid) == ("offered", "bob")
    assert escalated.tried == ["amy", "bob"]
    assert "amy 未接待，转给您" in card_text(to_rep(bot, "bob")[-1])
    assert "已转给 Bob" in card_text(to_rep(bot, "amy")[-1])
    assert kf_moves(bot, "wmCarl") == [(3, "amy"), (3, "bob")]

    assert await run_due(bot, 122) == 1  # nobody else: bob is reminded and keeps it
    assert "提醒" in card_text(to_rep(bot, "bob")[-1])
    assert await run_due(bot, 601) == 1  # still nobody: the customer is not left alone
    assert await open_handoff(bot, "wmCarl") is None
    assert bot.replies_to("wmCarl")[-1].text.startswith("抱歉让您久等了")


async def test_outside_office_hours_the_customer_is_told_when_and_the_queue_is_offered_at_opening(
    start_bot,  # type: ignore[no-untyped-def]
) -> None:
    zone = ZoneInfo("Asia/Shanghai")
    tomorrow = datetime.now(zone) + timedelta(days=1)
    bot = await start_bot(handoff={"office_hours": f"{DAYS[tomorrow.weekday()]} 09:00-18:00"})
    await reps(bot, "zhangsan")
    assert await say(bot, "wmDora", "我要投诉") != []
    told = bot.replies_to("wmDora")[-1].text
    assert "明天 09:00" in told
    queued = await open_handoff(bot, "wmDora")
    assert queued is not None and queued.status == "queued" and queued.reason == "complain"
    assert to_rep(bot, "zhangsan") == []

    opening = datetime.combine(tomorrow.date(), datetime.min.time(), zone).replace(hour=9)
    assert await run_due(bot, (opening - datetime.now(zone)).total_seconds() + 5) == 1
    offered = await open_handoff(bot, "wmDora")
    assert offered is not None and (offered.status, offered.rep_userid) == ("offered", "zhangsan")
    assert "客户投诉" in card_text(to_rep(bot, "zhangsan")[-1])


async def test_two_messages_at_once_make_one_handoff_and_one_card(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(handoff=ALWAYS_OPEN)
    await reps(bot, "zhangsan", "lisi")
    bot.fake.add_kf_text(SANDBOX_KF_ACCOUNT, "wmEve", "转人工")
    bot.fake.add_kf_text(SANDBOX_KF_ACCOUNT, "wmEve", "人工客服")
    assert await bot.simulator._kf_notify(bot.url) == 200
    await bot.drain()
    eve = await customer_of(bot, "wmEve")
    async with bot.runtime.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(Handoff).where(Handoff.customer_id == eve.id))
    assert count == 1
    assert len(to_rep(bot, "zhangsan")) + len(to_rep(bot, "lisi")) == 1
    assert [r.text for r in bot.replies_to("wmEve")] == ["好的，正在为您转接人工客服，请稍候。"]

    if bot.settings.store.url.startswith("sqlite"):
        return  # SQLite has one writer at a time: the race below needs PostgreSQL
    # and when two transactions race (two instances, two channels of one person), the index decides
    desk = HandoffDesk(bot.settings.handoff, Lifecycle(bot.settings.lifecycle))
    async with bot.runtime.sessions() as session, session.begin():
        await desk.release(session, "", eve.id, admin=True)

    async def hand_off() -> bool:
        async with bot.runtime.sessions() as session, session.begin():
            customer = await session.get_one(Customer, eve.id)
            return await handoffs.start(session, customer, "want_human", utcnow()) is not None

    results = await asyncio.gather(*(hand_off() for _ in range(5)), return_exceptions=True)
    assert [r for r in results if r is True] == [True], results


async def test_owner_first_then_a_team_by_tag_and_capacity_is_respected(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(handoff=ALWAYS_OPEN)
    await reps(bot, "owner1", "vip1", "vip2", capacity=1)
    await reps(bot, "zz_general")
    await say(bot, "wmFay", "你好")
    await say(bot, "wmGus", "你好")
    await say(bot, "wmHal", "你好")
    fay, gus, hal = await customer_of(bot, "wmFay"), await customer_of(bot, "wmGus"), await customer_of(bot, "wmHal")
    async with bot.runtime.sessions() as session, session.begin():
        (await session.get_one(Customer, fay.id)).owner_userid = "owner1"
        await set_team(session, "大客户", ["高意向"], [], ["vip1", "vip2"], ["高意向"])
        for user in (gus, hal):
            await add_tags(session, await session.get_one(Customer, user.id), ["高意向"], "test")
    await say(bot, "wmFay", "转人工")
    await say(bot, "wmGus", "转人工")
    await say(bot, "wmHal", "转人工")
    routed = {user: (await open_handoff(bot, user)) for user in ("wmFay", "wmGus", "wmHal")}
    assert routed["wmFay"] is not None and routed["wmFay"].rep_userid == "owner1"
    assert routed["wmGus"] is not None and routed["wmGus"].rep_userid == "vip1" and routed["wmGus"].team == "大客户"
    assert routed["wmHal"] is not None and routed["wmHal"].rep_userid == "vip2"  # vip1 is at capacity

    await say(bot, "wmIvy", "你好")  # a fourth customer for the team: both vips are full → anyone with room
    ivy = await customer_of(bot, "wmIvy")
    async with bot.runtime.sessions() as session, session.begin():
        await add_tags(session, await session.get_one(Customer, ivy.id), ["高意向"], "test")
    await say(bot, "wmIvy", "转人工")
    ivy_handoff = await open_handoff(bot, "wmIvy")
    assert ivy_handoff is not None and ivy_handoff.rep_userid == "zz_general"


async def test_not_understood_twice_in_a_row_hands_off_and_a_high_value_keyword_does_too(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(handoff=ALWAYS_OPEN)
    await reps(bot, "zhangsan")
    await say(bot, "wmJay", "qwzx plomk")
    assert await open_handoff(bot, "wmJay") is None  # once is the fallback's job
    await say(bot, "wmJay", "vbnrt yuiop")
    jay = await open_handoff(bot, "wmJay")
    assert jay is not None and jay.reason == "low_confidence"

    await say(bot, "wmKim", "你们有企业采购的方案吗")
    kim = await open_handoff(bot, "wmKim")
    assert kim is not None and (kim.reason, kim.detail) == ("high_value", "said 企业采购")


async def test_rep_commands_with_bad_input_get_clear_answers_and_change_nothing(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(handoff=ALWAYS_OPEN)
    await reps(bot, "zhangsan", "lisi")
    await say(bot, "wmLeo", "你好")
    leo = await customer_of(bot, "wmLeo")
    await rep_says(bot, "stranger", f"接 {leo.id}")
    assert "不是客服代表" in card_text(to_rep(bot, "stranger")[-1])
    await rep_says(bot, "zhangsan", f"放 {leo.id}")
    assert "没有转人工" in card_text(to_rep(bot, "zhangsan")[-1])
    await rep_says(bot, "zhangsan", "接")
    assert "请写上客户编号" in card_text(to_rep(bot, "zhangsan")[-1])
    await rep_says(bot, "zhangsan", "接 999999")
    assert "没有编号为 999999 的客户" in card_text(to_rep(bot, "zhangsan")[-1])
    await rep_says(bot, "zhangsan", "随便说点什么")
    assert card_text(to_rep(bot, "zhangsan")[-1]).startswith("可用指令")

    await say(bot, "wmLeo", "转人工")
    handoff = await open_handoff(bot, "wmLeo")
    assert handoff is not None
    other = "lisi" if handoff.rep_userid == "zhangsan" else "zhangsan"
    await rep_says(bot, handoff.rep_userid or "", f"接 {leo.id}")
    await rep_says(bot, other, f"放 {leo.id}")  # only the rep serving may release
    assert "只有 TA 能交还" in card_text(to_rep(bot, other)[-1])
    assert await open_handoff(bot, "wmLeo") is not None


async def test_an_oa_customer_is_answered_by_the_rep_through_the_app_and_idle_returns_to_the_bot(
    start_bot,  # type: ignore[no-untyped-def]
) -> None:
    bot = await start_bot(handoff={**ALWAYS_OPEN, "idle_release_s": 600})
    await reps(bot, "zhangsan")
    assert await bot.simulator.oa_says(bot.url, "oaMia", "转人工") == 200
    await bot.drain()
    mia = await customer_of(bot, "oaMia")
    await rep_says(bot, "zhangsan", f"回复 {mia.id} 您好，我是小张，请问需要什么帮助？")
    assert bot.replies_to("oaMia")[-1].text == "您好，我是小张，请问需要什么帮助？"
    handoff = await open_handoff(bot, "oaMia")
    assert handoff is not None and handoff.status == "taken" and handoff.first_response_at is not None
    await rep_says(bot, "zhangsan", "我们今天有优惠")  # plain text: the one customer the rep serves
    assert bot.replies_to("oaMia")[-1].text == "我们今天有优惠"

    assert await run_due(bot, 601) == 1
    assert await open_handoff(bot, "oaMia") is None
    assert bot.replies_to("oaMia")[-1].text.startswith("抱歉让您久等了")
    assert "长时间无回复" in card_text(to_rep(bot, "zhangsan")[-1])


async def test_a_kf_rep_answering_in_the_workspace_takes_over_and_ending_the_session_gives_back(
    start_bot,  # type: ignore[no-untyped-def]
) -> None:
    bot = await start_bot(handoff=ALWAYS_OPEN)
    await reps(bot, "zhangsan")
    await say(bot, "wmNia", "转人工")
    assert await bot.simulator.rep_answers(bot.url, "zhangsan", "wmNia", "您好，我是小张") == 200
    await bot.drain()
    taken = await open_handoff(bot, "wmNia")
    assert taken is not None and taken.status == "taken" and taken.first_response_at is not None
    assert await say(bot, "wmNia", "我想问问尺码") == []  # the rep is talking: the bot stays out

    assert await bot.simulator.rep_ends(bot.url, "zhangsan", "wmNia") == 200
    await bot.drain()
    assert await open_handoff(bot, "wmNia") is None
    nia = await customer_of(bot, "wmNia")
    async with bot.runtime.sessions() as session:
        closed = await session.scalar(select(Handoff).where(Handoff.customer_id == nia.id))
    assert closed is not None and closed.closed_by == "wecom"
    assert kf_moves(bot, "wmNia") == [(3, "zhangsan")]  # WeCom ended it: nothing for the bot to move
    assert await say(bot, "wmNia", "多少钱") != []  # a new session: the bot answers


async def test_a_rep_who_leaves_hands_on_open_handoffs_and_customers_keep_their_history(
    start_bot,  # type: ignore[no-untyped-def]
) -> None:
    bot = await start_bot(handoff=ALWAYS_OPEN)
    await reps(bot, "leaver", "heir")
    await say(bot, "wmOwned", "你好")
    owned = await customer_of(bot, "wmOwned")
    async with bot.runtime.sessions() as session, session.begin():
        (await session.get_one(Customer, owned.id)).owner_userid = "leaver"
    await say(bot, "wmOwned", "转人工")  # the owner is on duty: the card goes to them
    offered = await open_handoff(bot, "wmOwned")
    assert offered is not None and offered.rep_userid == "leaver"
    bot.fake.add_unassigned("leaver", "wmOwned")
    bot.fake.add_unassigned("leaver", "wmOnlyInWeCom")  # a customer who never chatted with the bot
    bot.fake.add_unassigned("someone_else", "wmNotOurs")

    desk = HandoffDesk(bot.settings.handoff, Lifecycle(bot.settings.lifecycle))
    gone = await depart_with(bot.runtime.sessions, bot.runtime.apis["wecom.contacts"], desk, "leaver", None)
    await bot.drain()
    assert (gone.handoffs_moved, gone.unassigned_seen, gone.customers_transferred) == (1, 2, 2)
    assert gone.takeovers == {"heir": 1}
    moved = await open_handoff(bot, "wmOwned")
    assert moved is not None and moved.rep_userid == "heir"
    assert "leaver 未接待，转给您" in card_text(to_rep(bot, "heir")[-1])
    assert sorted(t["external_userid"] for t in bot.fake.transfers) == ["wmOnlyInWeCom", "wmOwned"]
    assert {t["takeover_userid"] for t in bot.fake.transfers} == {"heir"}
    async with bot.runtime.sessions() as session:
        assert (await session.get_one(Customer, owned.id)).owner_userid == "heir"
    kinds = await timeline_kinds(bot, owned.id)
    assert "owner.transferred" in kinds and "inbound.message" in kinds  # the history stays

    await rep_says(bot, "leaver", f"接 {owned.id}")  # someone who left is no longer a rep
    assert "不是客服代表" in card_text(to_rep(bot, "leaver")[-1])
    with pytest.raises(DepartureError, match="no active rep leaver"):
        await depart_with(bot.runtime.sessions, bot.runtime.apis["wecom.contacts"], desk, "leaver", None)
