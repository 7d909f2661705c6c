"""Operations: graceful shutdown finishes in-flight work; logs mask phone numbers and secrets."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select

from bot.logs import MaskingFormatter, mask
from bot.runtime import Runtime
from core.events import Reply
from crm_store.models import InboxItem, OutboxItem
from flows.pipeline import Next, Pipeline
from flows.turn import Turn
from tests.bot.conftest import Bot


class SlowStage:
    name = "slow"

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def __call__(self, turn: Turn, next: Next) -> None:
        self.entered.set()
        await asyncio.sleep(0.2)
        turn.effects.append(Reply("慢慢来"))


async def test_shutdown_finishes_the_turn_in_flight(bot: Bot) -> None:

    slow = SlowStage()
    runtime = await Runtime.open(bot.runtime.settings, Pipeline([slow]))
    runtime.start_background()
    await bot.simulator.kf_says(bot.url, "wmShutdown", "你好")
    runtime.inbox.wake()
    await asyncio.wait_for(slow.entered.wait(), 10)
    await runtime.close()  # what SIGTERM does: stop claiming, finish what is in flight
    async with bot.runtime.sessions() as session:
        statuses = set((await session.scalars(select(InboxItem.status))).all())
        outbox = (await session.scalars(select(OutboxItem.payload))).all()
    assert statuses == {"done"}
    assert [payload["text"]["content"] for payload in outbox] == ["慢慢来"]


def test_logs_mask_phone_numbers_and_secrets() -> None:
    assert mask("客户手机 13812345678 已登记") == "客户手机 138****5678 已登记"
    assert mask("GET /cgi-bin/gettoken?corpid=ww1&corpsecret=abcDEF123") == "GET /cgi-bin/gettoken?corpid=ww1&corpsecret=***"
    assert mask("access_token=XYZ&x=1") == "access_token=***&x=1"
    assert mask("订单号 2023123456789012") == "订单号 2023123456789012"  # not a phone number


def test_json_log_lines_are_masked() -> None:
    record = logging.LogRecord("scrm.test", logging.INFO, __file__, 1, "phone %s", ("13900001111",), None)
    line = MaskingFormatter(as_json=True).format(record)
    assert "139****1111" in line and "13900001111" not in line
