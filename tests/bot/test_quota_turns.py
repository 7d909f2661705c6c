"""The bot budgets every send against the platform's quota, end to end through the fake that enforces it.

A turn's texts are merged before they are counted, what exceeds the allowance is held back
(answers before suggestions), a notification with nothing left waits for the customer's next
message, and nothing goes to a kf session a rep serves. The fake refuses what the platform
would (bot/sandbox/fake_quotas.py): every test ends with nothing refused.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from bot.effects_writer import write_notification
from core.events import Notify
from crm_store import allowances
from crm_store.models import TimelineEvent
from tests.bot.conftest import Bot
from tests.bot.test_handoff import rep_says, reps
from tests.flows.test_engine import customer_of, flow_dir, say

SEVEN = "flow: seven\ntriggers:\n  - keywords: [七件事]\nsteps:\n" + "".join(
    f'  - say: "第{n}件事"\n' for n in range(1, 8))

# Texts and suggestions (a menu each) alternating: seven messages even after merging.
CROWDED = """\
flow: crowded
triggers:
  - keywords: [好多]
steps:
""" + "".join(f"""  - say: "答案{n}"
  - say: "要看看别的吗{n}"
    links: [{{title: "推荐{n}", url: "https://shop.example/{n}"}}]
""" for n in range(1, 5))

OA_WELCOME = """\
flow: oa_welcome
priority: 90
triggers:
  - {event: subscribe, channel: oa}
steps:
""" + "".join(f"""  - say: "欢迎{n}"
    links: [{{title: "第{n}篇", url: "https://shop.example/a{n}"}}]
""" for n in range(1, 6))


async def _timeline(bot: Bot, customer_id: int, kind: str) -> list[dict[str, object]]:
    async with bot.runtime.sessions() as session:
        return list(await session.scalars(select(TimelineEvent.data).where(
            TimelineEvent.customer_id == customer_id, TimelineEvent.kind == kind).order_by(TimelineEvent.id)))


async def test_seven_things_in_one_turn_arrive_merged_within_five_messages(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(flows={"directory": str(flow_dir(tmp_path, seven=SEVEN))})
    texts = await say(bot, "wmSeven", "七件事")
    assert 1 <= len(texts) <= 5
    said = "\n".join(texts)
    assert all(f"第{n}件事" in said for n in range(1, 8))
    assert bot.fake.refused == []


async def test_a_crowded_turn_sends_answers_first_and_records_what_it_held_back(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(flows={"directory": str(flow_dir(tmp_path, crowded=CROWDED))})
    texts = await say(bot, "wmCrowd", "好多")
    assert len(texts) == 5 and bot.fake.refused == []
    said = "\n".join(texts)
    assert all(f"答案{n}" in said for n in range(1, 5))  # every answer went; one suggestion waited
    customer = await customer_of(bot, "wmCrowd")
    [held] = await _timeline(bot, customer.id, "reply.held_back")
    assert held["count"] == 3 and len(held["texts"]) == 3  # type: ignore[arg-type]


async def test_an_oa_follow_gets_at_most_three_messages(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(flows={"directory": str(flow_dir(tmp_path, oa_welcome=OA_WELCOME))})
    assert await bot.simulator.oa_subscribes(bot.url, "oFollow") == 200
    await bot.drain()
    assert [reply.text for reply in bot.replies_to("oFollow")] == ["欢迎1", "欢迎2", "欢迎3"]
    assert bot.fake.refused == []
    customer = await customer_of(bot, "oFollow")
    [held] = await _timeline(bot, customer.id, "reply.held_back")
    assert held["count"] == 7  # the three welcomes went (texts before cards); the rest waited


async def test_a_notice_to_a_customer_with_nothing_left_waits_for_their_next_message(bot: Bot) -> None:
    await say(bot, "wmMember", "你好")  # one reply: four messages left of the five
    customer = await customer_of(bot, "wmMember")
    async with bot.runtime.sessions() as session, session.begin():
        for n in range(5):
            await write_notification(session, f"test-notice:{n}", Notify(customer.id, f"拼团通知{n}", "group.filled"))
    await bot.drain()
    received = [reply.text for reply in bot.replies_to("wmMember")]
    assert [text for text in received if text.startswith("拼团通知")] == [f"拼团通知{n}" for n in range(4)]
    async with bot.runtime.sessions() as session:
        assert await allowances.held_count(session, customer.id) == 1
    texts = await say(bot, "wmMember", "谢谢")
    assert texts[-1] == "拼团通知4"  # after the answer to the message that earned it
    assert bot.fake.refused == []
    async with bot.runtime.sessions() as session:
        assert await allowances.held_count(session, customer.id) == 0


async def test_a_turn_run_again_after_a_crash_holds_and_releases_nothing_twice(bot: Bot) -> None:
    await say(bot, "wmTwice", "你好")
    customer = await customer_of(bot, "wmTwice")
    async with bot.runtime.sessions() as session, session.begin():
        allowance = await allowances.load(session, customer.id, "kf")
        await allowances.save(session, customer.id, allowance.spent(5, 0))
    for _ in range(2):  # the same notification key twice: one held message
        async with bot.runtime.sessions() as session, session.begin():
            await write_notification(session, "test-notice:again", Notify(customer.id, "好友到了", "referral.arrived"))
    async with bot.runtime.sessions() as session:
        assert await allowances.held_count(session, customer.id) == 1
    texts = await say(bot, "wmTwice", "在吗")
    assert texts.count("好友到了") == 1


async def test_nothing_goes_to_a_kf_session_a_rep_serves(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(handoff={"office_hours": "mon-sun 00:00-24:00"})
    await reps(bot, "zhangsan")
    await say(bot, "wmRep", "这件多少钱")
    assert await bot.simulator.kf_says(bot.url, "wmRep", "转人工") == 200
    await bot.runtime.inbox.drain()  # answered and handed off: the reply and the move wait in the outbox…
    customer = await customer_of(bot, "wmRep")
    async with bot.runtime.sessions() as session, session.begin():  # …when a group fills
        await write_notification(session, "test-notice:served", Notify(customer.id, "您的团满了", "group.filled"))
    await bot.drain()
    assert bot.fake.kf_state("wkSandboxKf", "wmRep") == (3, "zhangsan")
    moved_at = next(i for i, sent in enumerate(bot.fake.sent) if sent.path == "kf/service_state/trans")
    assert not [s for s in bot.fake.sent[moved_at:] if s.path == "kf/send_msg" and s.to == "wmRep"]
    assert bot.fake.refused == []
    async with bot.runtime.sessions() as session:
        assert await allowances.held_count(session, customer.id) == 1  # for when the bot has the customer again
    await rep_says(bot, "zhangsan", f"放 {customer.id}")  # the rep's session ends; the customer writes again
    texts = await say(bot, "wmRep", "在吗")
    assert texts[-1] == "您的团满了" and bot.fake.refused == []
