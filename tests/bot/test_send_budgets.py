"""The API budgets shared by sender processes: together they stay under WeChat's limits, and what does not
fit waits without using attempts.

Two OutboxSender / QueueRunner pairs (two sender processes, each with its own connection to the shared
state: Redis with PostgreSQL, the one in-process state with SQLite) send against the fake with its limits
lowered. Time is one clock, the fake's and the budgets', moved by the test; rows put back are made due
again as that time passes. No sleeping.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.api_budget import ApiBudgets, NotBefore
from bot.queue_runner import QueueRunner
from bot.sandbox.fake_quotas import Refusal
from bot.sandbox.fake_wechat import FakeWeChat
from bot.sender import OutboxSender
from bot.wechat_api import wecom_credential
from core.api_budget import DAY_S, HOUR_S, MINUTE_S, Budget, Platform, budget_for
from core.shared_state import MemoryState, RateWindow, RedisState, SharedState
from crm_store.customers import Profile, resolve_customer
from crm_store.models import Lane, OutboxItem, as_utc, utcnow
from tests.admin_cli.harness import ScrmRunner
from tests.bot.conftest import Bot
from tests.clock import Clock
from tests.conftest import Backend

KF = "wkBudget"
PER_MINUTE, OA_PER_DAY = 50, 30
MARKETING_SHARE = 0.8  # of the 50 a minute: 40 for pushes, the rest kept for replies


def lowered(platform: Platform, account: str, path: str, share: float) -> Budget | None:
    """The fake's lowered limits: 50 calls a minute per WeCom API, 30 OA custom sends a day."""
    if platform == "wecom":
        return Budget(account, path, (RateWindow(MINUTE_S, PER_MINUTE), RateWindow(HOUR_S, 150_000)))
    if path == "message/custom/send":
        return Budget(account, path, (RateWindow(DAY_S, OA_PER_DAY),))
    return budget_for(platform, account, path, share)


@dataclass
class Senders:
    bot: Bot
    clock: Clock
    pairs: list[tuple[OutboxSender, QueueRunner[OutboxItem]]]
    states: list[SharedState]

    async def send_due(self) -> int:
        """Both senders at once, until neither finds anything due; how many rows they sent."""
        before = sum(sender.sent for sender, _ in self.pairs)
        await asyncio.gather(*(runner.drain() for _, runner in self.pairs))
        return sum(sender.sent for sender, _ in self.pairs) - before

    async def time_passes(self, seconds: float) -> None:
        """The clock moves on: rows put back until then are due, and a pause of the runners is over."""
        self.clock.advance(seconds)
        async with self.bot.runtime.sessions() as session, session.begin():
            await session.execute(update(OutboxItem).where(OutboxItem.status == "pending")
                                  .values(available_at=utcnow()))
        for _, runner in self.pairs:
            runner.paused_until = 0.0
            runner.lanes_paused.clear()

    async def rows(self) -> list[OutboxItem]:
        async with self.bot.runtime.sessions() as session:
            return list(await session.scalars(select(OutboxItem).order_by(OutboxItem.id)))


@pytest.fixture
async def senders(start_bot, backend: Backend) -> AsyncIterator[Senders]:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot()
    clock = Clock(time.time())
    bot.fake.now = clock
    prefix = f"test:{uuid.uuid4().hex}:"
    shared = MemoryState(clock)  # SQLite: one process's state, shared by both pairs
    states: list[SharedState] = [RedisState(backend.redis_url, prefix, clock) if backend.redis_url else shared
                                 for _ in range(2)]
    runtime, worker = bot.runtime, bot.settings.worker
    pairs = []
    for state in states:
        budgets = ApiBudgets(state, max_wait_s=0.0, clock=clock, rules=lowered)
        sender = OutboxSender(runtime.sessions, runtime.apis, worker.max_attempts, worker.retry_base_s,
                              budgets=budgets, marketing_share=MARKETING_SHARE)
        runner = QueueRunner("outbox", runtime.sessions, OutboxItem, sender.send, worker.outbox_concurrency,
                             worker.poll_interval_s, worker.claim_ttl_s)
        sender.on_rate_limited = runner.pause
        pairs.append((sender, runner))
    yield Senders(bot, clock, pairs, states)
    for state in {id(state): state for state in states}.values():
        await state.close()


async def store_rows(bot: Bot, kind: str, payloads: list[dict[str, object]]) -> None:
    async with bot.runtime.sessions() as session, session.begin():
        session.add_all(OutboxItem(dedup_key=f"budget:{index}", queue_key=f"budget:{index}", kind=kind,
                                   payload=payload) for index, payload in enumerate(payloads))


async def test_two_senders_stay_under_the_per_minute_limit_together_and_the_rest_waits(senders: Senders) -> None:
    bot = senders.bot
    bot.fake.api_per_minute = PER_MINUTE
    users = [f"wmBudget{index}" for index in range(200)]
    for user in users:
        bot.fake.grant_kf(KF, user)
    await store_rows(bot, "kf.send_msg", [{"touser": user, "open_kfid": KF, "msgtype": "text",
                                           "text": {"content": "双十二预热"}} for user in users])

    assert await senders.send_due() == PER_MINUTE
    waiting = [row for row in await senders.rows() if row.status == "pending"]
    assert len(waiting) == 200 - PER_MINUTE
    put_back = [row for row in waiting if row.last_error]
    assert put_back and all("budget" in (row.last_error or "") and row.attempts == 0 for row in put_back)
    assert all(as_utc(row.available_at) > utcnow() + timedelta(seconds=50) for row in put_back)  # when the minute has room

    sent = [PER_MINUTE]
    while len(sent) < 10 and sum(sent) < 200:
        await senders.time_passes(61.0)
        sent.append(await senders.send_due())
    assert sent == [50, 50, 50, 50]
    assert bot.fake.refused == []  # no 45009: the budget said wait before WeChat had to
    rows = await senders.rows()
    assert {row.status for row in rows} == {"done"} and {row.attempts for row in rows} == {1}
    delivered = [message for message in bot.fake.sent if message.path == "kf/send_msg"]
    assert sorted(message.to for message in delivered) == sorted(users)  # each once
    assert len({message.body["msgid"] for message in delivered}) == 200


async def test_a_push_and_live_conversations_at_once_replies_first_budgets_never_exceeded(senders: Senders) -> None:
    """A push of 100 to kf customers is due when ten customers write: both senders send the replies in the
    first minute, the push fills marketing's share of each minute (40 of the 50 calls) and no more, and the
    fake, at 50 calls a minute, refuses nothing."""
    bot = senders.bot
    bot.fake.api_per_minute = PER_MINUTE
    pushed = [f"wmPush{index}" for index in range(100)]
    for user in pushed:
        bot.fake.grant_kf(KF, user)
    async with bot.runtime.sessions() as session, session.begin():
        session.add_all(OutboxItem(dedup_key=f"push:{user}", queue_key=f"push:{user}", kind="kf.send_msg",
                                   lane=int(Lane.MARKETING), payload={"touser": user, "open_kfid": KF,
                                                                      "msgtype": "text", "text": {"content": "上新了"}})
                        for user in pushed)
    chatting = [f"wmLive{index}" for index in range(10)]
    for user in chatting:  # through the signed callback and the worker: their replies are queued behind the push
        await bot.simulator.kf_says(bot.url, user, "你好")
    await bot.runtime.inbox.drain()

    minutes = []
    while len(minutes) < 6 and len(bot.fake.sent) < 110:
        before = len(bot.fake.sent)
        await senders.send_due()
        minutes.append([message.to for message in bot.fake.sent[before:]])
        await senders.time_passes(61.0)
    assert sorted(to for to in minutes[0] if to.startswith("wmLive")) == chatting  # every reply in the first minute
    # marketing stops when the minute holds 40 calls (30 beside the 10 replies when those were counted first:
    # the two senders' calls interleave)
    pushes = [sum(to.startswith("wmPush") for to in minute) for minute in minutes]
    assert 30 <= pushes[0] <= 40 and pushes[1] == 40 and sum(pushes) == 100
    assert all(len(minute) <= PER_MINUTE for minute in minutes)
    assert bot.fake.refused == []  # the two senders together never past WeChat's limit
    assert sorted(to for minute in minutes for to in minute) == sorted(pushed + chatting)  # each once


async def test_the_oa_daily_custom_send_limit_is_waited_out_not_failed(senders: Senders) -> None:
    bot = senders.bot
    bot.fake.oa_custom_sends_per_day = OA_PER_DAY
    openids = [f"oBudget{index}" for index in range(70)]
    await store_rows(bot, "oa.custom_send", [{"touser": openid, "msgtype": "text", "text": {"content": "上新了"}}
                                             for openid in openids])
    sent = []
    for _ in range(5):
        for openid in openids:  # each customer wrote today: the 48-hour window is open
            bot.fake.oa_customer_acted(openid, "message")
        sent.append(await senders.send_due())
        if sum(sent) == len(openids):
            break
        waiting = [row for row in await senders.rows() if row.status == "pending"]
        assert all(row.attempts == 0 for row in waiting)
        put_back = [row for row in waiting if as_utc(row.available_at) > utcnow() + timedelta(minutes=1)]
        assert put_back and all(as_utc(row.available_at) > utcnow() + timedelta(hours=23) for row in put_back)
        await senders.time_passes(DAY_S + 100)
    assert sent == [30, 30, 10]
    assert bot.fake.refused == []
    rows = await senders.rows()
    assert {row.status for row in rows} == {"done"}  # never "outcome unknown": a row put back never left
    delivered = [message.to for message in bot.fake.sent if message.path == "message/custom/send"]
    assert sorted(delivered) == sorted(openids)


def test_the_fake_refuses_custom_sends_past_the_oas_daily_limit_with_45009() -> None:
    fake = FakeWeChat("wwCorp", ["secret"], "wxOa", "oa-secret")
    clock = Clock(time.time())
    fake.now, fake.oa_custom_sends_per_day = clock, 2
    assert [fake.over_api_rate("message/custom/send") for _ in range(3)] == [False, False, True]
    assert fake.refused == [Refusal("message/custom/send", 45009, "", clock.at)]
    assert not fake.over_api_rate("kf/send_msg")  # the OA's custom sends only
    clock.advance(DAY_S - 1)
    assert fake.over_api_rate("message/custom/send")  # a rolling 24 h: both still count…
    clock.advance(1)
    assert not fake.over_api_rate("message/custom/send")  # …for exactly a day
    fake.oa_custom_sends_per_day = None
    assert not any(fake.over_api_rate("message/custom/send") for _ in range(10))


async def test_a_45009_from_another_system_is_still_handled_as_before(senders: Senders) -> None:
    """The corp's budget was spent elsewhere: WeChat's 45009 is retried later and pauses claiming."""
    bot = senders.bot
    bot.fake.grant_kf(KF, "wmElse")
    bot.fake.fail_next("kf/send_msg", 45009)
    await store_rows(bot, "kf.send_msg", [{"touser": "wmElse", "open_kfid": KF, "msgtype": "text",
                                           "text": {"content": "您好"}}])
    sender, runner = senders.pairs[0]
    await runner.drain()
    [row] = await senders.rows()
    assert (row.status, row.attempts) == ("pending", 1) and "45009" in (row.last_error or "")
    assert runner.paused_until > 0


async def test_left_reports_each_api_and_window(senders: Senders) -> None:
    sender, _ = senders.pairs[0]
    assert sender.budgets is not None
    kf = sender.budgets.budget(senders.bot.runtime.apis["wecom.kf"].credential, "kf/send_msg")
    assert kf is not None
    for _ in range(3):
        assert await sender.budgets.take(senders.bot.runtime.apis["wecom.kf"].credential, "kf/send_msg") is None
    left = {(row.path, row.window): (row.limit, row.used, row.left) for row in await sender.budgets.left()}
    assert left[("kf/send_msg", "minute")] == (PER_MINUTE, 3, PER_MINUTE - 3)
    assert left[("kf/send_msg", "hour")] == (150_000, 3, 150_000 - 3)
    assert left[("message/custom/send", "day")] == (OA_PER_DAY, 0, OA_PER_DAY)
    assert ("message/send", "minute") in left  # every API the outbox calls, used or not
    elsewhere = await ApiBudgets(sender.budgets.state, rules=lowered).watch_outbox(
        senders.bot.settings.wecom.corp_id, senders.bot.settings.oa.app_id).left()  # a CLI: accounts, no clients
    assert set(elsewhere) == set(await sender.budgets.left())


async def test_take_waits_briefly_or_says_not_before() -> None:
    clock = Clock(time.time())
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    state = MemoryState(clock)
    budgets = ApiBudgets(state, max_wait_s=1.0, clock=clock, sleep=sleep, rules=lowered)
    budget = budgets.budget_of("wecom", "wwCorp", "kf/send_msg")
    assert budget is not None
    await state.take(budget.key, PER_MINUTE, budget.windows)
    clock.advance(59.5)
    credential = wecom_credential("wecom.kf", "http://fake", "wwCorp", "secret")
    assert await budgets.take(credential, "kf/send_msg") is None  # fits within the second: waited
    assert len(slept) == 1 and 0.5 <= slept[0] <= 0.6
    assert (await state.take(budget.key, PER_MINUTE - 1, budget.windows)).granted  # the minute full again
    later = await budgets.take(credential, "kf/send_msg")
    assert isinstance(later, NotBefore) and later.wait_s > 1.0 and later.at == clock() + later.wait_s


# --- a push the daily budget cannot cover says when it will finish ------------------------------------------
class Push(ScrmRunner):
    command = ("push",)

    def customers(self, count: int, channel: str) -> None:
        async def work(session: AsyncSession) -> None:
            for index in range(count):
                customer = await resolve_customer(session, "oa", f"o{channel}{index}", Profile(display_name="客户"))
                customer.reach = {"channel": channel, "sender": f"o{channel}{index}", "at": int(time.time())}

        self.run(work)


def test_push_show_says_when_a_push_the_budget_cannot_cover_finishes(backend: Backend, clean_env: None) -> None:
    scrm = Push(backend.store_url)
    scrm.customers(20, "oa")
    scrm("create", "--name", "双十二", "--text", "上新了", "--reachable")
    push_id = str(scrm.json("list")[0]["id"])
    assert "finishes about" not in scrm("show", push_id).stdout  # 475,000 a day cover 20 at once

    tiny = {"SCRM__SENDER__BUDGET_SHARE": "0.00001",  # the OA's 500,000 a day × 0.00001: 5 a day
            "SCRM__SENDER__MARKETING_SHARE": "1"}  # all of it for pushes
    shown = scrm("show", push_id, env=tiny).stdout
    assert "20 pending through message/custom/send, which allows pushes 5 a day" in shown
    capped = scrm("show", push_id, env={**tiny, "SCRM__SENDER__MARKETING_SHARE": "0.4"}).stdout
    assert "which allows pushes 2 a day" in capped  # pushes stop at 40 % of it: the rest is for replies
    answer = json.loads(scrm("show", push_id, "--json", env=tiny).stdout)
    finish = datetime.fromisoformat(answer["budget_finish_at"])  # 5 at once, the other 15 at 5 a day
    expected = datetime.now(UTC) + timedelta(days=3)
    assert abs((finish - expected).total_seconds()) < 600
