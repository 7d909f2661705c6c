"""Nothing lost, nothing twice: crashes, token expiry, rate limits, 5xx, permanent errors, two workers."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from admin_cli.main import cli
from bot.runtime import Runtime
from crm_store import work_queue
from crm_store.models import InboxItem, OutboxItem, utcnow
from tests.bot.conftest import Bot


class StallingConversation:
    """Stands in for a worker that dies mid-turn: it never returns."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def run(self, turn):  # type: ignore[no-untyped-def]
        self.entered.set()
        await asyncio.Event().wait()


async def expire_claims(bot: Bot, model: type) -> None:
    """What the passing of `claim_ttl_s` does to a dead worker's claim."""
    async with bot.runtime.sessions() as session, session.begin():
        await session.execute(update(model).where(model.status == "claimed").values(claimed_until=utcnow()))


async def test_crash_between_inbox_and_outbox_loses_nothing(bot: Bot) -> None:
    stalled = StallingConversation()
    bot.runtime.worker.pipeline = stalled
    await bot.simulator.kf_says(bot.url, "wmCrash", "你好")
    dying = asyncio.create_task(bot.runtime.inbox.drain())
    await asyncio.wait_for(stalled.entered.wait(), 10)
    dying.cancel()  # the worker dies in the middle of the turn: its transaction never commits
    await asyncio.gather(dying, return_exceptions=True)
    for task in list(bot.runtime.inbox.in_flight):
        task.cancel()
    await asyncio.gather(*bot.runtime.inbox.in_flight, return_exceptions=True)
    assert bot.replies_to("wmCrash") == []
    # A restarted process (a fresh runtime on the same store) finds the item once its claim expires.
    from flows.pipeline import Pipeline
    from flows.responder import BuiltinResponder

    restarted = await Runtime.open(bot.runtime.settings, Pipeline([BuiltinResponder()]))
    try:
        await restarted.drain()
        assert bot.replies_to("wmCrash") == []  # the dead worker's claim is still valid
        await expire_claims(bot, InboxItem)
        await restarted.drain()
    finally:
        await restarted.close()
    assert len(bot.replies_to("wmCrash")) == 1


async def test_sender_crash_mid_call_resends_kf_once_by_msgid(bot: Bot) -> None:
    await bot.simulator.kf_says(bot.url, "wmResend", "你好")
    await bot.runtime.inbox.drain()
    async with bot.runtime.sessions() as session:
        [item] = await work_queue.claim(session, OutboxItem, 10, 60)
    await bot.runtime.sender.send(item)  # delivered, but the process dies before recording it:
    async with bot.runtime.sessions() as session, session.begin():
        await session.execute(update(OutboxItem).values(status="claimed", claimed_until=utcnow(), finished_at=None))
    await bot.drain()
    assert len(bot.replies_to("wmResend")) == 1  # the fake saw the same msgid twice, delivered once
    assert bot.fake.calls.count("kf/send_msg") == 2


async def test_sender_crash_mid_oa_call_is_not_resent_but_reported(bot: Bot) -> None:
    await bot.simulator.oa_says(bot.url, "oUnknown", "你好")
    await bot.runtime.inbox.drain()
    async with bot.runtime.sessions() as session:
        [item] = await work_queue.claim(session, OutboxItem, 10, 60)
    async with bot.runtime.sessions() as session, session.begin():
        await work_queue.note(session, item, "call started")  # the sender got this far, then died
    await expire_claims(bot, OutboxItem)
    await bot.drain()
    assert bot.replies_to("oUnknown") == []
    async with bot.runtime.sessions() as session:
        row = await session.get_one(OutboxItem, item.id)
    assert row.status == "failed" and "outcome unknown" in (row.last_error or "")


async def test_token_expiry_mid_run_refreshes_once(bot: Bot) -> None:
    await bot.simulator.kf_says(bot.url, "wmTok0", "你好")
    await bot.drain()
    before = dict(bot.fake.token_requests_by)
    bot.fake.expire_tokens()
    for index in range(1, 9):
        bot.fake.add_kf_text("wkSandboxKf", f"wmTok{index}", "你好")
    await bot.simulator.kf_says(bot.url, "wmTok9", "你好")
    await bot.drain()
    for index in range(10):
        assert len(bot.replies_to(f"wmTok{index}")) == 1
    refreshes = {secret: count - before.get(secret, 0) for secret, count in bot.fake.token_requests_by.items()}
    kf_secret = bot.settings.wecom.kf.secret.get_secret_value()
    assert refreshes[kf_secret] == 1  # ten sends after expiry: one refresh, not a storm
    assert set(refreshes.values()) == {1}  # likewise for the profile look-ups' credential


async def test_rate_limit_and_5xx_are_retried_then_delivered_once(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(worker={"retry_base_s": 0.01})
    bot.runtime.sender.rate_limit_pause_s = 0.01
    bot.fake.fail_next("kf/send_msg", errcode=45009)
    bot.fake.fail_next("kf/send_msg", http_status=502)
    await bot.simulator.kf_says(bot.url, "wmRetry", "你好")
    await bot.drain_until_answered("wmRetry")
    assert len(bot.replies_to("wmRetry")) == 1
    assert bot.fake.calls.count("kf/send_msg") == 3


async def test_sync_failure_is_retried_without_losing_the_pull(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(worker={"retry_base_s": 0.01})
    bot.fake.fail_next("kf/sync_msg", errcode=-1)
    await bot.simulator.kf_says(bot.url, "wmSync", "你好")
    await bot.drain_until_answered("wmSync")
    assert len(bot.replies_to("wmSync")) == 1


async def test_permanent_failure_is_recorded_and_listed(bot: Bot) -> None:
    bot.fake.fail_next("message/custom/send", errcode=45015)  # outside the OA's 48-hour window
    await bot.simulator.oa_says(bot.url, "oLate", "你好")
    await bot.drain()
    assert bot.replies_to("oLate") == []
    result = await asyncio.to_thread(  # the CLI runs its own event loop
        CliRunner().invoke, cli, ["outbox", "list", "--status", "failed", "--json"],
        env={"SCRM__STORE__URL": bot.settings.store.url},
    )
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["kind"] == "oa.custom_send" and "45015" in row["last_error"]
    health = await (await bot.client.get("/healthz")).json()
    assert any("failed permanently" in line for line in health["degraded"])
    retried = await asyncio.to_thread(
        CliRunner().invoke, cli, ["outbox", "retry", str(row["id"]), "999999"],
        env={"SCRM__STORE__URL": bot.settings.store.url},
    )
    assert retried.exit_code == 1 and f"#{row['id']} queued again" in retried.output
    assert "[999999]" in retried.output
    await bot.drain()  # the customer wrote again, the window is open: it goes out now, once
    assert len(bot.replies_to("oLate")) == 1


async def test_two_workers_share_the_inbox_without_double_work(bot: Bot) -> None:
    for index in range(40):
        bot.fake.add_kf_text("wkSandboxKf", f"wmMany{index % 10}", "你好")
    await bot.simulator.kf_says(bot.url, "wmMany0", "你好")
    await bot.runtime.inbox.drain()  # the pull: 41 messages stored
    from flows.pipeline import Pipeline
    from flows.responder import BuiltinResponder

    second = await Runtime.open(bot.runtime.settings, Pipeline([BuiltinResponder()]))
    try:
        await asyncio.gather(bot.runtime.drain(), second.drain())
    finally:
        await second.close()
    async with bot.runtime.sessions() as session:
        done = await session.scalar(select(func.count()).select_from(InboxItem).where(InboxItem.status == "done"))
    assert done == 42
    total = sum(len(bot.replies_to(f"wmMany{index}")) for index in range(10))
    assert total == 41
    assert bot.runtime.worker.processed + second.worker.processed == 42


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # Redis: shared by instances
async def test_instances_share_one_access_token_through_redis(bot: Bot) -> None:
    from flows.pipeline import Pipeline
    from flows.responder import BuiltinResponder

    others = [await Runtime.open(bot.runtime.settings, Pipeline([BuiltinResponder()])) for _ in range(3)]
    try:
        tokens = await asyncio.gather(
            *(runtime.apis["wecom.kf"].access_token() for runtime in [bot.runtime, *others])
        )
    finally:
        for runtime in others:
            await runtime.close()
    assert len(set(tokens)) == 1
    assert bot.fake.token_requests_by[bot.settings.wecom.kf.secret.get_secret_value()] == 1


async def test_oa_send_with_unknown_outcome_is_not_resent(bot: Bot) -> None:
    bot.fake.fail_next("message/custom/send", http_status=502)  # the answer is lost: delivered or not?
    await bot.simulator.oa_says(bot.url, "oMaybe", "你好")
    await bot.drain()
    async with bot.runtime.sessions() as session:
        [row] = (await session.scalars(select(OutboxItem))).all()
    assert row.status == "failed" and "outcome unknown" in (row.last_error or "")
    assert bot.fake.calls.count("message/custom/send") == 1


async def test_oa_send_refused_with_an_errcode_is_retried(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(worker={"retry_base_s": 0.01})
    bot.runtime.sender.rate_limit_pause_s = 0.01
    bot.fake.fail_next("message/custom/send", errcode=45009)  # refused: certainly not delivered
    await bot.simulator.oa_says(bot.url, "oLater", "你好")
    await bot.drain_until_answered("oLater")
    assert len(bot.replies_to("oLater")) == 1
