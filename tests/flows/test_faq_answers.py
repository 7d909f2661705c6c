"""The FAQ answers what no flow takes: sure → the answer; unsure → the closest entries as choices; a flow may take
an entry over; a repeated question goes to a person. Rasa is the outside world here: a scripted server that
answers `/model/parse` with a ResponseSelector's output as Rasa 3.6 does (the real model is tested in tests/nlu)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select

from crm_store.models import TimelineEvent
from flows.loader import read_directory
from flows.publishing import publish_flows, validate
from flows.settings import SHIPPED_FLOWS
from tests.bot.conftest import Bot
from tests.flows.conftest import ScriptedRasa
from tests.flows.test_engine import customer_of, say

FAQ = """\
faq:
  - id: delivery_time
    title: 多久发货
    questions: [多久发货, 几天能到, 什么时候发货, 发货要多久]
    answer: 下单后 48 小时内发货，一般 2-4 天送到。
  - id: invoice
    title: 开发票
    questions: [能开发票吗, 发票怎么开, 要发票, 可以开专票吗]
    answer: 可以开电子发票，下单时填写抬头即可。
    tags: [高意向]
  - id: returns
    title: 怎么退货
    questions: [怎么退货, 能退吗, 七天无理由吗, 退货流程]
    answer: 签收 7 天内可无理由退货，在订单页点「申请售后」。
    handoff_if_repeated: 10m
"""

TAKEOVER = """\
flow: invoice_flow
triggers:
  - faq: invoice
steps:
  - say: 发票请把抬头和税号发给我～
"""


async def start(start_bot, rasa: ScriptedRasa, tmp_path: Path, **flows: str) -> Bot:  # type: ignore[no-untyped-def]
    directory = tmp_path / "flows"
    shutil.copytree(SHIPPED_FLOWS, directory)  # the shipped flows, with this test's FAQ
    for name, text in flows.items():
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
    (directory / "faq.yaml").write_text(FAQ, encoding="utf-8")
    bot: Bot = await start_bot(flows={"directory": str(directory)},
                               nlu={"mode": "external", "rasa_url": rasa.url, "timeout_ms": 2000})
    assert await bot.runtime.nlu.wait_ready(5)
    return bot


async def notes(bot: Bot, user: str, kind: str) -> list[dict[str, Any]]:
    customer = await customer_of(bot, user)
    async with bot.runtime.sessions() as session:
        return list(await session.scalars(select(TimelineEvent.data).where(
            TimelineEvent.customer_id == customer.id, TimelineEvent.kind == kind).order_by(TimelineEvent.id)))


async def test_a_sure_match_is_answered_from_the_release_and_noted(start_bot, rasa: ScriptedRasa,  # type: ignore[no-untyped-def]
                                                                   tmp_path: Path) -> None:
    rasa.script["啥时候能发出来"] = ("faq", 0.95, [("delivery_time", 0.92), ("returns", 0.05)])
    bot = await start(start_bot, rasa, tmp_path)
    assert await say(bot, "wmAsk", "啥时候能发出来") == ["下单后 48 小时内发货，一般 2-4 天送到。"]
    [answered] = await notes(bot, "wmAsk", "faq.answered")
    assert (answered["entry"], answered["confidence"], answered["source"]) == ("delivery_time", 0.92, "rasa")


async def test_an_unsure_match_offers_the_closest_entries_and_a_button_answers(start_bot, rasa: ScriptedRasa,  # type: ignore[no-untyped-def]
                                                                               tmp_path: Path) -> None:
    rasa.script["发货和发票的事"] = ("faq", 0.6, [("delivery_time", 0.45), ("invoice", 0.4), ("returns", 0.1)])
    bot = await start(start_bot, rasa, tmp_path)
    await say(bot, "wmUnsure", "发货和发票的事")
    offer = bot.replies_to("wmUnsure")[-1]
    items = offer.body["msgmenu"]["list"]
    assert [item["click"]["content"] for item in items] == ["多久发货", "开发票"]  # returns is below the bar
    texts = await say(bot, "wmUnsure", "开发票", menu_id=items[1]["click"]["id"])
    assert texts == ["可以开电子发票，下单时填写抬头即可。"]
    [answered] = await notes(bot, "wmUnsure", "faq.answered")
    assert (answered["entry"], answered["source"]) == ("invoice", "choice")


async def test_on_the_oa_the_choices_are_numbered_and_a_number_answers(start_bot, rasa: ScriptedRasa,  # type: ignore[no-untyped-def]
                                                                       tmp_path: Path) -> None:
    rasa.script["发货和发票的事"] = ("nlu_fallback", 0.4, [("delivery_time", 0.45), ("invoice", 0.4)])
    bot = await start(start_bot, rasa, tmp_path)
    await bot.simulator.oa_says(bot.url, "oUnsure", "发货和发票的事")
    await bot.drain()
    assert bot.replies_to("oUnsure")[-1].text.endswith("1. 多久发货\n2. 开发票")
    await bot.simulator.oa_says(bot.url, "oUnsure", "2")
    await bot.drain()
    assert bot.replies_to("oUnsure")[-1].text == "可以开电子发票，下单时填写抬头即可。"


async def test_off_topic_and_no_match_go_to_the_fallback_and_are_noted_unanswered(start_bot, rasa: ScriptedRasa,  # type: ignore[no-untyped-def]
                                                                                 tmp_path: Path) -> None:
    rasa.script["今天天气怎么样"] = ("out_of_scope", 0.9, [("delivery_time", 0.8)])  # the selector always ranks
    bot = await start(start_bot, rasa, tmp_path)
    [reply] = await say(bot, "wmOff", "今天天气怎么样")
    assert "48 小时" not in reply
    assert await notes(bot, "wmOff", "faq.answered") == []
    assert [n["text"] for n in await notes(bot, "wmOff", "turn.unanswered")] == ["今天天气怎么样"]


async def test_a_shipping_question_read_as_ask_shipping_is_answered_by_a_sure_faq_entry(  # type: ignore[no-untyped-def]
        start_bot, rasa: ScriptedRasa, tmp_path: Path) -> None:
    """flows.faq_answers_intents: Rasa reads "包邮不" as ask_shipping, whose flow (order status) asks for a phone
    number; the FAQ, sure of its entry, answers instead. Unsure, the flow runs as before."""
    rasa.script["几天能到啊"] = ("ask_shipping", 0.99, [("delivery_time", 0.91), ("returns", 0.03)])
    rasa.script["我的快递几天能到"] = ("ask_shipping", 0.99, [("delivery_time", 0.4), ("returns", 0.3)])
    bot = await start(start_bot, rasa, tmp_path)
    assert await say(bot, "wmShip", "几天能到啊") == ["下单后 48 小时内发货，一般 2-4 天送到。"]
    [answered] = await notes(bot, "wmShip", "faq.answered")
    assert (answered["entry"], answered["confidence"]) == ("delivery_time", 0.91)
    [reply] = await say(bot, "wmTrack", "我的快递几天能到")
    assert "手机号" in reply  # the order-status flow: the FAQ was not sure
    assert await notes(bot, "wmTrack", "faq.answered") == [] and await notes(bot, "wmTrack", "faq.offered") == []


async def test_a_flow_takes_over_its_entry_and_tags_come_with_an_answer(start_bot, rasa: ScriptedRasa,  # type: ignore[no-untyped-def]
                                                                        tmp_path: Path) -> None:
    rasa.script["能开票不"] = ("faq", 0.9, [("invoice", 0.9)])
    bot = await start(start_bot, rasa, tmp_path, invoice_flow=TAKEOVER)
    assert await say(bot, "wmTake", "能开票不") == ["发票请把抬头和税号发给我～"]
    assert await notes(bot, "wmTake", "faq.answered") == []


async def test_asked_again_within_its_window_a_person_takes_over(start_bot, rasa: ScriptedRasa,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    rasa.script["退货咋弄"] = ("faq", 0.9, [("returns", 0.9)])
    rasa.script["还是不会退货"] = ("faq", 0.85, [("returns", 0.85)])
    bot = await start(start_bot, rasa, tmp_path)
    assert (await say(bot, "wmAgain", "退货咋弄"))[0].startswith("签收 7 天内")
    [again] = await say(bot, "wmAgain", "还是不会退货")
    assert "转接人工" in again
    assert [n["reason"] for n in await notes(bot, "wmAgain", "handoff.requested")] == ["faq_repeated"]


GIFT_WRAP = """\
  - id: gift_wrap
    title: 礼品包装
    questions: [能礼品包装吗, 可以包装成礼物吗, 送人要包装]
    answer: 可以免费礼品包装，下单备注「礼品包装」即可。
"""


async def test_with_rasa_down_a_newly_published_entry_answers_without_a_restart(start_bot,  # type: ignore[no-untyped-def]
                                                                                 tmp_path: Path) -> None:
    directory = tmp_path / "flows"
    shutil.copytree(SHIPPED_FLOWS, directory)
    (directory / "faq.yaml").write_text(FAQ, encoding="utf-8")
    bot: Bot = await start_bot(flows={"directory": str(directory)}, nlu={"mode": "rules"})
    assert "免费礼品包装" not in " ".join(await say(bot, "wmBefore", "礼品包装"))
    (directory / "faq.yaml").write_text(FAQ + GIFT_WRAP, encoding="utf-8")
    flow_set = validate(read_directory(directory), bot.settings.lifecycle, bot.settings.nlu, directory)
    async with bot.runtime.sessions() as session, session.begin():
        await publish_flows(session, flow_set, note="a new FAQ entry")
    assert await say(bot, "wmWrap", "礼品包装") == ["可以免费礼品包装，下单备注「礼品包装」即可。"]
    [answered] = await notes(bot, "wmWrap", "faq.answered")
    assert (answered["entry"], answered["source"]) == ("gift_wrap", "rules")
