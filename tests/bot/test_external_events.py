"""External events end to end: another system reports one, a flow with an `external:` trigger answers.

The event goes through the durable inbox like a WeChat callback: once per event id, in order per
customer, with its data as the flow's slots, and the answer goes where the customer last chatted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.external_events import ExternalEventError, report_event
from crm_store.models import InboxItem
from tests.bot.conftest import Bot
from tests.bot.test_api import key_for
from tests.flows.test_engine import customer_of, flow_dir, say, timeline_kinds

SHIPPED = """\
flow: shipped
triggers: [{external: order_shipped}]
slots: [carrier, tracking]
steps:
  - say: "您的订单已发货：{{ slots.carrier }} {{ slots.tracking }}"
"""


async def test_an_external_event_starts_its_flow_once_and_the_customer_is_told(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(flows={"directory": str(flow_dir(tmp_path, shipped=SHIPPED))})
    await say(bot, "wmOrder", "你好")
    customer = await customer_of(bot, "wmOrder")
    for _ in range(2):  # the shop retries: the same event id is stored once
        async with bot.runtime.sessions() as session, session.begin():
            await report_event(session, customer.id, "order_shipped", "erp-778",
                               {"carrier": "顺丰", "tracking": "SF123", "ignored": "x"})
    await bot.drain()
    assert [r.text for r in bot.replies_to("wmOrder")].count("您的订单已发货：顺丰 SF123") == 1
    assert bot.replies_to("wmOrder")[-1].path == "kf/send_msg"  # the kf chat the customer last used
    assert "inbound.external" in await timeline_kinds(bot, customer.id)
    async with bot.runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(InboxItem).where(InboxItem.channel == "api")) == 1


async def test_bad_external_events_are_refused_and_nothing_is_stored(bot: Bot) -> None:
    await say(bot, "wmBad", "你好")
    customer = await customer_of(bot, "wmBad")
    async with bot.runtime.sessions() as session, session.begin():
        for name, event_id, data, why in (("Order Shipped", "e1", {}, "name:"), ("ok", "", {}, "event_id:"),
                                          ("ok", "e1", {"nested": {"a": 1}}, "data:")):
            with pytest.raises(ExternalEventError, match=why):
                await report_event(session, customer.id, name, event_id, data)
        assert await session.scalar(select(func.count()).select_from(InboxItem).where(InboxItem.channel == "api")) == 0


async def test_post_events_queues_once_and_refuses_bad_input(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(flows={"directory": str(flow_dir(tmp_path, shipped=SHIPPED))})
    await say(bot, "wmApi", "你好")
    customer = await customer_of(bot, "wmApi")
    headers = await key_for(bot)
    event = {"event_id": "erp-1", "customer_id": customer.id, "name": "order_shipped",
             "data": {"carrier": "EMS", "tracking": "E1"}}
    first = await bot.client.post("/api/v1/events", json=event, headers=headers)
    again = await bot.client.post("/api/v1/events", json=event, headers=headers)
    assert (first.status, (await first.json())["duplicate"]) == (202, False)
    assert (again.status, (await again.json())["duplicate"]) == (200, True)
    await bot.drain()
    assert bot.replies_to("wmApi")[-1].text == "您的订单已发货：EMS E1"
    for bad, status in (({**event, "name": "Bad Name"}, 422), ({**event, "surprise": 1}, 422),
                        ({**event, "customer_id": 999999}, 404), ({**event, "data": {"a": {"b": 1}}}, 422)):
        response = await bot.client.post("/api/v1/events", json={**bad, "event_id": "erp-x"}, headers=headers)
        assert response.status == status, (bad, await response.text())
    read_only = await key_for(bot, "read", "reader")
    assert (await bot.client.post("/api/v1/events", json=event, headers=read_only)).status == 403
