"""Faults without loss: PostgreSQL and Redis restarted under a running bot.

Each test runs its own throwaway servers (bench/servers.py: `initdb`/`pg_ctl`, `redis-server` on
free ports), never the machine's shared ones. WeChat's side behaves as WeChat does: a callback
not answered 200 is delivered again, the same one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from bench.servers import ThrowawayPostgres, ThrowawayRedis
from bot import wechat_api
from bot.app import FAKE_WECHAT, create_app
from bot.health import health_report
from bot.runtime import RUNTIME
from bot.sandbox import wechat_side
from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT, SIMULATOR
from core.faults import FAULTS
from crm_store.migrate import upgrade_async
from crm_store.models import InboxItem, OutboxItem
from tests.bot.conftest import Bot, make_settings
from tests.bot.test_api import key_for
from tests.conftest import Backend

FAST_RECOVERY = {"claim_ttl_s": 4.0, "retry_base_s": 0.2, "poll_interval_s": 0.05}


@pytest.fixture
async def redis_server() -> AsyncIterator[ThrowawayRedis]:
    async with ThrowawayRedis() as server:
        yield server  # type: ignore[misc]


@pytest.fixture
async def pg_server() -> AsyncIterator[ThrowawayPostgres]:
    async with ThrowawayPostgres() as server:
        await upgrade_async(server.url)  # type: ignore[attr-defined]
        yield server  # type: ignore[misc]


@pytest.fixture
async def start_running_bot(aiohttp_client, clean_env) -> AsyncIterator[Callable[..., Any]]:  # type: ignore[no-untyped-def]
    """The app with its worker, sender and scheduler running, on the given servers."""

    async def start(store_url: str, redis_url: str) -> Bot:
        FAULTS.outages.clear()  # one process runs every test: no outage carried over from another
        settings = make_settings(Backend("postgres", store_url, redis_url), worker=FAST_RECOVERY)
        app = create_app(settings, run_workers=True)
        client = await aiohttp_client(app)
        return Bot(client, app[RUNTIME], app[FAKE_WECHAT], app[SIMULATOR])

    yield start
    FAULTS.outages.clear()


async def like_wechat(bot: Bot, path: str, signed: wechat_side.SignedCallback) -> int:
    """Deliver a callback the way WeChat does: the same one again while it is not answered 200."""
    status = 0
    for _ in range(40):
        response = await bot.client.post(path, params=signed.query, data=signed.body)
        status = response.status
        if status == 200:
            return status
        await asyncio.sleep(0.25)
    return status


async def oa_says(bot: Bot, openid: str, text: str) -> int:
    oa = bot.settings.oa
    bot.fake.oa_customer_acted(openid, "message")  # the fake never sees OA callbacks: its send grant
    xml = wechat_side.oa_text_xml(oa.app_id, openid, text)  # one MsgId, kept across retries
    signed = wechat_side.sign_oa(oa.token.get_secret_value(), oa.encoding_aes_key.get_secret_value(), oa.app_id,
                                 xml, oa.mode)
    return await like_wechat(bot, "/oa/callback", signed)


async def kf_says(bot: Bot, user: str, text: str) -> int:
    bot.fake.add_kf_text(SANDBOX_KF_ACCOUNT, user, text)
    keys, corp = bot.settings.wecom.kf, bot.settings.wecom.corp_id
    xml = wechat_side.kf_notification_xml(corp, SANDBOX_KF_ACCOUNT, secrets.token_hex(8))
    signed = wechat_side.sign_wecom(keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(), corp, xml)
    return await like_wechat(bot, "/wecom/kf/callback", signed)


async def until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def outbox_rows(bot: Bot) -> dict[str, int]:
    async with bot.runtime.sessions() as session:
        rows = await session.execute(select(OutboxItem.status, func.count()).group_by(OutboxItem.status))
        return {status: count for status, count in rows.tuples()}


async def unfinished_inbox(bot: Bot) -> int:
    async with bot.runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(InboxItem)
                                        .where(InboxItem.status != "done")) or 0)


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [record.getMessage() for record in records if record.exc_info and record.name.startswith("scrm")]


async def test_postgres_restart_under_load_loses_nothing_repeats_nothing_and_logs_one_line_a_place(
    pg_server: ThrowawayPostgres, redis_server: ThrowawayRedis, start_running_bot, caplog  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.WARNING)
    bot = await start_running_bot(pg_server.url, redis_server.url)
    customers = [f"oFault{index}" for index in range(20)] + [f"wmFault{index}" for index in range(20)]

    async def say(customer: str, index: int) -> int:
        await asyncio.sleep(index * 0.05)  # a steady stream, before, during and after the restart
        return await (oa_says if customer.startswith("o") else kf_says)(bot, customer, "你好")

    talking = asyncio.gather(*(say(customer, index) for index, customer in enumerate(customers)))
    await asyncio.sleep(0.6)
    await pg_server.restart(down_s=1.5)
    statuses = await talking
    assert statuses == [200] * len(customers)  # every callback stored in the end (WeChat's retries)

    assert await until(lambda: all(bot.replies_to(customer) for customer in customers), 60)
    await asyncio.sleep(1.0)  # anything sent twice would arrive by now
    assert {customer: len(bot.replies_to(customer)) for customer in customers} == dict.fromkeys(customers, 1)
    assert await unfinished_inbox(bot) == 0
    assert await outbox_rows(bot) == {"done": len(customers)}
    assert tracebacks(caplog.records) == []
    warnings = [record.getMessage() for record in caplog.records if record.getMessage().startswith("fault.store")]
    assert warnings and any(".cleared" in line for line in warnings)
    assert len(warnings) <= 20  # one line a place, not one per attempt
    status, report = await health_report(bot.runtime)
    assert status == 200 and report["faults"] == []


async def test_redis_down_while_sends_are_due_nothing_lost_nothing_outcome_unknown(
    pg_server: ThrowawayPostgres, redis_server: ThrowawayRedis, start_running_bot, caplog  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.WARNING)
    bot = await start_running_bot(pg_server.url, redis_server.url)
    await redis_server.stop()  # before any token was fetched: this process holds none
    assert await oa_says(bot, "oNoToken", "你好") == 200
    assert await kf_says(bot, "wmNoToken", "你好") == 200
    assert await until(lambda: bool(FAULTS.outages.get("redis")), 10)
    await asyncio.sleep(1.5)  # sends due meanwhile: none can leave without a token
    assert bot.replies_to("oNoToken") == [] and bot.replies_to("wmNoToken") == []
    async with bot.runtime.sessions() as session:
        waiting = list(await session.scalars(select(OutboxItem)))
    assert {item.status for item in waiting} <= {"pending", "claimed"}
    assert not any("outcome unknown" in (item.last_error or "") for item in waiting)
    status, report = await health_report(bot.runtime)
    assert status == 200 and [fault["component"] for fault in report["faults"]] == ["redis"]
    assert any(line.startswith("redis: unavailable") for line in report["degraded"])

    await redis_server.start()  # back, empty: the token is fetched again and shared through it
    assert await until(lambda: bool(bot.replies_to("oNoToken")) and bool(bot.replies_to("wmNoToken")), 30)
    await asyncio.sleep(1.0)
    assert len(bot.replies_to("oNoToken")) == 1 and len(bot.replies_to("wmNoToken")) == 1
    assert await outbox_rows(bot) == {"done": 2}
    async with bot.runtime.sessions() as session:
        attempts = list(await session.scalars(select(OutboxItem.attempts)))
    assert max(attempts) <= 2  # waiting for Redis used up no attempts
    assert await bot.runtime.state.get("token:oa") is not None  # shared state used again
    assert "redis" not in FAULTS.outages
    assert tracebacks(caplog.records) == []


async def test_a_held_token_carries_sends_through_a_redis_restart(
    pg_server: ThrowawayPostgres, redis_server: ThrowawayRedis, start_running_bot,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wechat_api, "TOKEN_HELD_S", 0.0)  # read the shared state before every call…
    monkeypatch.setattr(wechat_api, "REDIS_RETRY_S", 0.5)  # …and, while it is down, twice a second
    bot = await start_running_bot(pg_server.url, redis_server.url)
    assert await oa_says(bot, "oHeld", "你好") == 200
    assert await until(lambda: len(bot.replies_to("oHeld")) == 1, 15)
    fetched = bot.runtime.apis["oa"].token_fetches
    await redis_server.stop()
    assert await oa_says(bot, "oHeld", "在吗") == 200
    assert await until(lambda: len(bot.replies_to("oHeld")) == 2, 15)  # the token this process holds is valid
    assert bot.runtime.apis["oa"].token_fetches == fetched
    assert "redis" in FAULTS.outages
    await redis_server.start()  # back, and empty
    await asyncio.sleep(0.6)
    assert await oa_says(bot, "oHeld", "你好") == 200
    assert await until(lambda: len(bot.replies_to("oHeld")) == 3, 15)
    assert "redis" not in FAULTS.outages
    assert bot.runtime.apis["oa"].token_fetches == fetched + 1  # shared state used again: found empty, filled
    assert await bot.runtime.state.get("token:oa") is not None
    assert await outbox_rows(bot) == {"done": 3}


async def test_an_oa_send_that_cannot_connect_is_retried_not_written_off(bot: Bot) -> None:
    api = bot.runtime.apis["oa"]
    reachable = api.credential
    api.credential = dataclasses.replace(reachable, base_url="http://127.0.0.1:9/cgi-bin")  # nothing listens
    await bot.simulator.oa_says(bot.url, "oUnreachable", "你好")
    await bot.drain()
    async with bot.runtime.sessions() as session:
        [item] = list(await session.scalars(select(OutboxItem)))
    assert item.status == "pending" and "errcode -4" in (item.last_error or "")  # not sent, so not "outcome unknown"
    api.credential = reachable
    await bot.drain_until_answered("oUnreachable")
    assert len(bot.replies_to("oUnreachable")) == 1
    assert await outbox_rows(bot) == {"done": 1}


async def test_the_api_answers_while_redis_is_down_and_503_while_the_store_is(
    pg_server: ThrowawayPostgres, redis_server: ThrowawayRedis, start_running_bot  # type: ignore[no-untyped-def]
) -> None:
    bot = await start_running_bot(pg_server.url, redis_server.url)
    headers = await key_for(bot, "read")
    await redis_server.stop()  # the per-key rate limit cannot count: requests are let through
    response = await bot.client.get("/api/v1/customers", headers=headers)
    assert response.status == 200
    await redis_server.start()
    await pg_server.stop()
    response = await bot.client.get("/api/v1/customers", headers=headers)
    assert response.status == 503 and response.headers["Retry-After"]
    assert (await response.json())["error"]["code"] == "unavailable"
    await pg_server.start()
    assert await until_status(bot, "/api/v1/customers", headers, 200)


async def until_status(bot: Bot, path: str, headers: dict[str, str], status: int) -> bool:
    for _ in range(50):
        if (await bot.client.get(path, headers=headers)).status == status:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_an_oa_send_answered_503_is_retried_and_one_answered_502_is_not(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(worker={"retry_base_s": 0.01})
    bot.fake.fail_next("message/custom/send", http_status=503)  # not taken: certainly not delivered
    await bot.simulator.oa_says(bot.url, "oBusy", "你好")
    await bot.drain_until_answered("oBusy")
    assert len(bot.replies_to("oBusy")) == 1 and await outbox_rows(bot) == {"done": 1}
    bot.fake.fail_next("message/custom/send", http_status=502)  # something failed behind the gateway: unknown
    await bot.simulator.oa_says(bot.url, "oBusy", "在吗")
    await bot.drain()
    assert await outbox_rows(bot) == {"done": 1, "failed": 1}
