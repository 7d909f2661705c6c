"""The intent stage asks the NLU only when the answer matters: not for a typed answer to the step the running
flow waits at (a choice, a phone number, a number, an email), nor while a person has the customer. What it
decided is on the inbound message's timeline row (the NLU report reads it) and in scrm_nlu_not_needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from crm_store.models import TimelineEvent
from flows.answers import is_typed_answer
from flows.model import Ask, MenuChoice
from tests.bot.conftest import Bot
from tests.flows.test_engine import customer_of, flow_dir, say


async def inbound(bot: Bot, user: str) -> list[dict[str, Any]]:
    """The data of the customer's inbound messages, oldest first."""
    customer = await customer_of(bot, user)
    async with bot.runtime.sessions() as session:
        rows = await session.scalars(select(TimelineEvent.data).where(
            TimelineEvent.customer_id == customer.id, TimelineEvent.kind == "inbound.message").order_by(TimelineEvent.id))
        return list(rows)


def not_needed() -> float:
    return REGISTRY.get_sample_value("scrm_nlu_not_needed_total", {"reason": "typed_answer"}) or 0.0


async def test_a_phone_number_for_a_waiting_phone_ask_is_not_parsed(bot: Bot) -> None:
    await say(bot, "wmTypedPhone", "查订单")
    before = not_needed()
    [handoff] = await say(bot, "wmTypedPhone", "138 1234 5678")  # the handoff and the queue notice, merged
    assert "13812345678" in handoff
    asked, answered = await inbound(bot, "wmTypedPhone")
    assert asked["intent"] == "ask_order_status" and asked["intent_source"] == "rules"
    assert answered["text"] == "138 1234 5678" and "intent" not in answered
    assert not_needed() == before + 1


async def test_a_numbered_choice_is_not_parsed_but_a_sentence_is(bot: Bot) -> None:
    [clarify] = await say(bot, "wmTypedChoice", "嗯嗯嗯")
    assert clarify.startswith("抱歉，我没太明白")
    assert (await say(bot, "wmTypedChoice", "2"))[0].startswith("请告诉我下单时留的手机号")  # 2: 查订单
    assert (await say(bot, "wmTypedChoice", "我不记得手机号了"))[0].startswith("手机号好像不太对")
    not_understood, choice, sentence = await inbound(bot, "wmTypedChoice")
    assert "intent" in not_understood and "intent" not in choice and "intent" in sentence


async def test_a_number_inside_a_sentence_is_parsed_so_a_stronger_flow_may_take_it(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    survey = """flow: survey
triggers: [{keywords: [问卷]}]
steps:
  - {ask: 您买了几件？, expect: number, slot: count}
  - {end: "好的，{{ slots.count }} 件"}
"""
    complaint = (Path(__file__).parents[2] / "flows/library/complaint.yaml").read_text(encoding="utf-8")
    bot = await start_bot(flows={"directory": str(flow_dir(tmp_path, survey=survey, complaint=complaint))})
    await say(bot, "wmTypedCount", "问卷")
    assert await say(bot, "wmTypedCount", "3件") == ["好的，3 件"]
    await say(bot, "wmTypedCount", "问卷")
    replies = await say(bot, "wmTypedCount", "3件都坏了，我要投诉")
    assert replies[0].startswith("非常抱歉")  # the complaint flow, not "好的，3 件"
    _start, typed, _again, sentence = await inbound(bot, "wmTypedCount")
    assert "intent" not in typed and sentence["intent"] == "complain"


async def test_nothing_is_parsed_while_a_person_has_the_customer(bot: Bot) -> None:
    await say(bot, "wmTypedHeld", "转人工")
    assert await say(bot, "wmTypedHeld", "在吗？多少钱") == []  # a person answers, the bot is silent
    _asked, held = await inbound(bot, "wmTypedHeld")
    assert held["text"] == "在吗？多少钱" and "intent" not in held


CHOICES = (MenuChoice("price", "问价格"), MenuChoice("order", "查订单"))


@pytest.mark.parametrize(("expect", "text", "menu_id", "typed"), [
    ("choice", "2", "", True),
    ("choice", "查订单", "", True),
    ("choice", "", "price", True),
    ("choice", "我想查订单", "", False),
    ("phone", "+86 138-1234-5678", "", True),
    ("phone", "我的手机号是13812345678", "", False),
    ("number", "12", "", True),
    ("number", "３件", "", True),
    ("number", "两份", "", True),
    ("number", "订单123有问题", "", False),
    ("email", "A@Example.com", "", True),
    ("text", "连衣裙", "", False),
    ("intent", "好的", "", False),
])
def test_a_typed_answer_is_the_whole_message(expect: str, text: str, menu_id: str, typed: bool) -> None:
    step = Ask(id="q", expect=expect, choices=CHOICES if expect == "choice" else ())  # type: ignore[arg-type]
    assert is_typed_answer(step, text, menu_id) is typed
