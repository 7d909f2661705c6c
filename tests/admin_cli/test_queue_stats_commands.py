"""`scrm inbox stats` and `scrm outbox stats` through Click's runner, text and --json, on SQLite and PostgreSQL
(with Redis there, so the outbox's API budgets are read as every sender counts them)."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from bot.api_budget import ApiBudgets
from bot.settings import load_settings
from bot.wechat_api import wecom_credential
from core.shared_state import open_shared_state
from crm_store.models import InboxItem, Lane, OutboxItem, utcnow
from tests.admin_cli.harness import ScrmRunner
from tests.conftest import Backend
from tests.crm_store.test_queue_stats import LONG_AGO, Row, done, queue_rows


class Scrm(ScrmRunner):
    pass


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> Scrm:
    return Scrm(backend.store_url, SCRM__REDIS__URL=backend.redis_url)


def fill(scrm: Scrm) -> None:
    async def work(session: AsyncSession) -> None:
        now = utcnow()  # the CLI reads the queues at its own now, a moment later
        await queue_rows(session, InboxItem, [Row("pending", age_s=42), Row("claimed"), done(10), done(20),
                                              done(LONG_AGO), done(30, status="failed")], now)
        await queue_rows(session, OutboxItem, [
            Row("pending", lane=Lane.REPLY), *[Row("pending", age_s=300, lane=Lane.MARKETING)] * 2,
            done(LONG_AGO, Lane.MARKETING, "failed"), done(5, Lane.REPLY)], now)

    scrm.run(work)


def test_inbox_stats_as_text_and_json(scrm: Scrm) -> None:
    fill(scrm)
    text = scrm("inbox", "stats").output
    assert text.startswith("inbox: backlog 2 (pending 1, claimed 1), lag 4")  # 42 s and a moment
    assert "drain 0.05/s (3 finished in the last minute), failed 1" in text
    shown = scrm.json("inbox", "stats")
    assert shown["queue"] == "inbox" and "lanes" not in shown and "api_budgets" not in shown
    assert (shown["backlog"], shown["pending"], shown["claimed"], shown["failed"]) == (2, 1, 1, 1)
    assert shown["finished_last_minute"] == 3 and shown["drain_per_s"] == 0.05 and shown["drain_complete"]
    assert 42 <= shown["lag_s"] < 60


def test_outbox_stats_show_each_lane(scrm: Scrm) -> None:
    fill(scrm)
    lines = scrm("outbox", "stats").output.splitlines()
    assert lines[0].startswith("outbox: backlog 3 (pending 3, claimed 0), lag 30")
    assert lines[0].endswith("(1 finished in the last minute), failed 1")
    assert lines[1].split()[:5] == ["reply", "backlog", "1", "failed", "0"]
    assert lines[2].split()[:5] == ["transactional", "backlog", "0", "failed", "0"]
    assert lines[3].split()[:5] == ["marketing", "backlog", "2", "failed", "1"]
    lanes = scrm.json("outbox", "stats")["lanes"]
    assert list(lanes) == ["reply", "transactional", "marketing"]
    marketing = lanes["marketing"]
    assert marketing | {"lag_s": 0} == {"backlog": 2, "pending": 2, "claimed": 0, "failed": 1, "lag_s": 0}
    assert 300 <= marketing["lag_s"] < 330


def test_outbox_stats_show_the_calls_left_in_each_api_budget(scrm: Scrm, backend: Backend) -> None:
    if not backend.redis_url:
        assert "api budgets: counted in each `scrm serve` process (no redis.url)" in scrm("outbox", "stats").output
        assert scrm.json("outbox", "stats")["api_budgets"] is None
        return
    corp_id = load_settings(store={"url": backend.store_url}).wecom.corp_id

    async def send_three() -> None:
        state = open_shared_state(backend.redis_url)
        try:
            assert await ApiBudgets(state).take(wecom_credential("wecom.kf", "", corp_id, "-"), "kf/send_msg", 3) is None
        finally:
            await state.close()

    asyncio.run(send_three())
    budgets = scrm.json("outbox", "stats")["api_budgets"]
    kf = {row["window"]: row for row in budgets if row["api"] == "kf/send_msg"}
    assert kf["minute"]["used"] == 3 and kf["minute"]["left"] == kf["minute"]["limit"] - 3
    assert set(kf) == {"minute", "hour"} and {row["account"] for row in kf.values()} == {corp_id}
    text = scrm("outbox", "stats").output
    minute = kf["minute"]
    assert f"{corp_id} kf/send_msg " in text and f"minute {minute['left']}/{minute['limit']}" in text


def test_outbox_stats_say_when_redis_does_not_answer(scrm: Scrm) -> None:
    nobody = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    lines = scrm("outbox", "stats", env={"SCRM__REDIS__URL": nobody}).output.splitlines()
    assert lines[0].startswith("outbox: backlog 0") and lines[-1].startswith("api budgets: Redis does not answer (")
    shown = json.loads(scrm("outbox", "stats", "--json", env={"SCRM__REDIS__URL": nobody}).stdout)
    assert shown["backlog"] == 0 and shown["api_budgets"] is None
