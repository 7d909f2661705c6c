"""Sequence steps and pushes use only what the platform still allows: never sent to be refused.

Inside the 48-hour window a kf or OA message goes only while the customer's allowance (the quota
ledger) has one left, and spends it. With nothing left the send goes as the owning rep's group
message when it can, else waits for the customer's next message (`waiting: no quota`, looked at
again after `nurture.quota_recheck_s`). The fake API enforces the same quotas and records every
refusal; none may happen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from prometheus_client import REGISTRY
from sqlalchemy import select

from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from core.allowance import Allowance
from crm_store import allowances
from crm_store.models import Customer, Identity, as_utc, utcnow
from crm_store.nurture_models import NurtureSend
from crm_store.pushes import create_push
from crm_store.segments import Segment
from tests.bot.conftest import Bot
from tests.bot.test_nurture import enrolled, published, sends, texts
from tests.flows.test_engine import say

NEVER_QUIET = {"quiet_from": "00:00", "quiet_until": "00:00"}  # any hour works
PLAIN = "sequence: plain\nsteps:\n  - {id: hello, say: 你好呀}\n"
RECHECK = timedelta(seconds=3600)  # nurture.quota_recheck_s as shipped


def decisions(source: str, decision: str) -> float:
    return REGISTRY.get_sample_value("scrm_quota_decisions_total", {"source": source, "decision": decision}) or 0.0


async def use_up(bot: Bot, customer_id: int) -> None:
    """The bot already sent the customer every message their last one allowed (as the ledger records it)."""
    async with bot.runtime.sessions() as session, session.begin():
        now = time.time()
        allowance = await allowances.load(session, customer_id, "kf")
        await allowances.save_many(session, {customer_id: allowance.spent(allowance.left(now), now)})


async def test_a_step_with_no_messages_left_waits_for_the_customers_next_message(
    start_bot, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    bot = await start_bot(nurture=NEVER_QUIET)
    await published(bot, tmp_path, plain=PLAIN)
    await say(bot, "wmGil", "你好")  # inside the kf window…
    gil = await enrolled(bot, "wmGil", "plain")
    await use_up(bot, gil.id)  # …but its five messages are used
    before, deferred = len(texts(bot, "wmGil")), decisions("nurture", "deferred")
    at = utcnow() + timedelta(minutes=1)
    await bot.runtime.nurture.run_due(at)  # type: ignore[union-attr]
    await bot.drain()
    assert await sends(bot, gil.id) == [("hello", "pending", "waiting: no quota")]
    async with bot.runtime.sessions() as session:
        send = await session.scalar(select(NurtureSend).where(NurtureSend.customer_id == gil.id))
    assert send is not None and as_utc(send.due_at) == at + RECHECK and send.deferrals == 1
    assert len(texts(bot, "wmGil")) == before and decisions("nurture", "deferred") == deferred + 1

    await say(bot, "wmGil", "在吗")  # the customer writes: five more messages
    await bot.runtime.nurture.run_due(at + RECHECK)  # type: ignore[union-attr]
    await bot.drain()
    assert texts(bot, "wmGil")[-1] == "你好呀" and bot.replies_to("wmGil")[-1].path == "kf/send_msg"
    assert (await sends(bot, gil.id))[0][1] == "sent"
    assert bot.fake.refused == []


async def test_a_step_with_no_messages_left_goes_as_the_owners_group_message(
    start_bot, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    bot = await start_bot(nurture=NEVER_QUIET)
    await published(bot, tmp_path, plain=PLAIN)
    bot.fake.add_follow_user("wmHal", "rep_li")
    assert await bot.simulator.contact_adds(bot.url, "wmHal", "rep_li") == 200  # a WeCom contact of rep_li…
    await bot.drain()
    await say(bot, "wmHal", "你好")  # …who chats in kf too (one external_userid, one customer)
    hal = await enrolled(bot, "wmHal", "plain")
    assert hal.owner_userid == "rep_li"
    await use_up(bot, hal.id)
    routed = decisions("nurture", "routed")
    await bot.runtime.nurture.run_due(utcnow() + timedelta(minutes=1))  # type: ignore[union-attr]
    await bot.drain()
    assert await sends(bot, hal.id) == [("hello", "sent", "")]
    tasks = [task for task in bot.fake.group_tasks if task["external_userid"] == ["wmHal"]]
    assert [(task["sender"], task["text"]["content"]) for task in tasks] == [("rep_li", "你好呀")]
    assert "你好呀" not in [sent.text for sent in bot.replies_to("wmHal") if sent.path == "kf/send_msg"]
    assert decisions("nurture", "routed") == routed + 1 and bot.fake.refused == []


@dataclass(frozen=True)
class Audience:
    """A push's 1,000 customers: 700 with messages left, 300 with none (50 of those have an owning rep)."""

    with_quota: list[int]
    routed: list[int]
    waiting: list[int]


async def audience(bot: Bot) -> Audience:
    """kf customers who wrote (350) or were already sent their five (150, 50 of them a rep's WeCom contacts);
    OA customers who wrote (350) or only followed an hour ago (150: three messages within that minute)."""
    now, hour_ago = time.time(), time.time() - 3600
    groups: dict[str, list[int]] = {"with_quota": [], "routed": [], "waiting": []}
    ledger: dict[int, Allowance] = {}
    async with bot.runtime.sessions() as session, session.begin():
        for index in range(1000):
            channel, user = ("kf", f"wmQ{index}") if index < 500 else ("oa", f"oQ{index}")
            used_up, owned = index % 500 >= 350, index % 500 >= 450 and channel == "kf"
            at = hour_ago if used_up and channel == "oa" else now
            customer = Customer(display_name=f"客户{index}", owner_userid="rep_li" if owned else None,
                                reach={"channel": channel, "sender": user, "account": SANDBOX_KF_ACCOUNT
                                       if channel == "kf" else "", "at": int(at)})
            session.add(customer)
            await session.flush()
            session.add(Identity(customer_id=customer.id, kind="wecom" if channel == "kf" else "oa", external_id=user))
            ledger[customer.id] = earned(channel, user, used_up, at, bot)
            groups["routed" if owned else "waiting" if used_up else "with_quota"].append(customer.id)
        await allowances.save_many(session, {cid: a for cid, a in ledger.items() if a.channel == "kf"})
        await allowances.save_many(session, {cid: a for cid, a in ledger.items() if a.channel == "oa"})
    return Audience(groups["with_quota"], groups["routed"], groups["waiting"])


def earned(channel: str, user: str, used_up: bool, at: float, bot: Bot) -> Allowance:
    """What the customer's action earned, in the ledger and at the fake alike."""
    if channel == "oa":
        bot.fake.oa_customer_acted(user, "subscribe" if used_up else "message", at=at)
        return Allowance("oa").earned("subscribe" if used_up else "message", at)
    bot.fake.grant_kf(SANDBOX_KF_ACCOUNT, user)
    for _ in range(5 if used_up else 0):  # the bot's five earlier messages
        bot.fake.use_kf_grant(SANDBOX_KF_ACCOUNT, user)
    return Allowance("kf").earned("message", at).spent(5 if used_up else 0, at)


async def test_a_push_to_1000_sends_700_and_routes_or_defers_the_300_with_nothing_left(
    start_bot  # type: ignore[no-untyped-def]
) -> None:
    bot = await start_bot(nurture=NEVER_QUIET)
    people = await audience(bot)
    async with bot.runtime.sessions() as session, session.begin():
        push = await create_push(session, "双十二预热", Segment(reachable=True), "{{ customer.name }}，全场 8 折")
    assert push.audience == 1000
    deferred, routed = decisions("push", "deferred"), decisions("push", "routed")
    at = utcnow() + timedelta(seconds=5)
    outcome = await bot.runtime.nurture.run_due(at)  # type: ignore[union-attr]
    await bot.drain()

    assert (outcome.sent, outcome.deferred, outcome.skipped) == (750, 250, 0)
    chats = [sent for sent in bot.fake.sent if sent.path in ("kf/send_msg", "message/custom/send")]
    assert len(chats) == 700 and len({sent.to for sent in chats}) == 700
    assert len(bot.fake.group_tasks) == 50 and bot.fake.refused == []
    assert await statuses(bot, push.id) == {("sent", "", "kf"): 350, ("sent", "", "oa"): 350,
                                            ("sent", "", "groupmsg"): 50, ("pending", "waiting: no quota", ""): 250}
    assert (decisions("push", "deferred") - deferred, decisions("push", "routed") - routed) == (250, 50)
    async with bot.runtime.sessions() as session:
        left = await allowances.load_many(session, people.with_quota + people.waiting)
    assert {a.left(time.time()) for (cid, _), a in left.items() if cid in people.with_quota} == {4}  # one spent
    assert {a.left(time.time()) for (cid, _), a in left.items() if cid in people.waiting} == {0}


async def statuses(bot: Bot, push_id: int) -> dict[tuple[str, str, str], int]:
    async with bot.runtime.sessions() as session:
        rows = await session.execute(select(NurtureSend.status, NurtureSend.reason, NurtureSend.via)
                                     .where(NurtureSend.push_id == push_id))
    counted: dict[tuple[str, str, str], int] = {}
    for row in rows.tuples():
        counted[row] = counted.get(row, 0) + 1
    return counted
