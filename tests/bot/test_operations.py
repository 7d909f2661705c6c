"""Operations: graceful shutdown finishes in-flight work; logs mask phone numbers and secrets; /healthz and /metrics
show how far behind the queues are and what is left of each API budget."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from bot.logs import MaskingFormatter, mask
from bot.runtime import Runtime
from core.events import Reply
from crm_store.models import InboxItem, Lane, OutboxItem, utcnow
from flows.pipeline import Next, Pipeline
from flows.turn import Turn
from tests.bot.conftest import Bot
from tests.crm_store.test_queue_stats import LONG_AGO, Row, done, queue_rows


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


async def answered_with_a_push_waiting_and_a_reply_failed(bot: Bot) -> None:
    """One kf message answered (two inbox items and one reply finished now); then a push two minutes old
    still waiting, and a reply that failed long ago."""
    await bot.simulator.kf_says(bot.url, "wmQueues", "你好")
    await bot.drain()
    async with bot.runtime.sessions() as session, session.begin():
        await queue_rows(session, OutboxItem, [Row("pending", age_s=120, lane=Lane.MARKETING),
                                               done(LONG_AGO, Lane.REPLY, "failed")], utcnow())


async def test_healthz_shows_backlog_lag_drain_and_failures_of_each_queue(bot: Bot) -> None:
    await answered_with_a_push_waiting_and_a_reply_failed(bot)
    health = await (await bot.client.get("/healthz")).json()
    inbox, sender = health["inbox"], health["sender"]
    assert (inbox["backlog"], inbox["failed"], inbox["lag_s"]) == (0, 0, 0.0)
    assert inbox["finished_last_minute"] == 2 and inbox["drain_per_s"] == round(2 / 60, 3)
    assert (sender["backlog"], sender["failed"], sender["finished_last_minute"]) == (1, 1, 1)
    assert 120 <= sender["lag_s"] < 180
    assert sender["lanes"]["marketing"]["backlog"] == 1 and sender["lanes"]["reply"] == {
        "backlog": 0, "pending": 0, "claimed": 0, "failed": 1, "lag_s": 0.0}
    assert any(line.startswith("sender: 1 messages failed permanently") for line in health["degraded"])


async def test_metrics_show_the_queues_and_the_calls_left_of_each_api_budget(bot: Bot) -> None:
    await answered_with_a_push_waiting_and_a_reply_failed(bot)
    scraped = await (await bot.client.get("/metrics")).text()
    gauges = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
              for family in text_string_to_metric_families(scraped) for sample in family.samples}
    assert gauges["scrm_queue_drain_per_second", (("queue", "inbox"),)] == pytest.approx(2 / 60)
    assert gauges["scrm_queue_drain_per_second", (("queue", "outbox"),)] == pytest.approx(1 / 60)
    assert gauges["scrm_inbox_backlog", ()] == 0 and gauges["scrm_inbox_failed", ()] == 0
    assert gauges["scrm_inbox_lag_seconds", ()] == 0
    assert gauges["scrm_outbox_backlog", ()] == 1 and gauges["scrm_outbox_failed", ()] == 1
    assert 120 <= gauges["scrm_outbox_lag_seconds", ()] < 180
    assert {lane: gauges["scrm_outbox_lane_backlog", (("lane", lane),)] for lane in ("reply", "transactional",
                                                                                    "marketing")} == {
        "reply": 0, "transactional": 0, "marketing": 1}
    assert gauges["scrm_outbox_lane_failed", (("lane", "reply"),)] == 1
    budgets = await bot.runtime.sender.budgets.left()  # type: ignore[union-attr]
    [kf] = [row for row in budgets if row.path == "kf/send_msg" and row.window == "minute"]
    assert kf.used == 1  # the reply
    assert gauges["scrm_api_budget_left", (("api", f"{kf.account} kf/send_msg"), ("window", "minute"))] == kf.left
    assert {window for (name, labels) in gauges if name == "scrm_api_budget_left"
            for key, window in labels if key == "window"} >= {"minute", "hour", "day"}
