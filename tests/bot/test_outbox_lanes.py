"""Outbox lanes: a customer who writes is answered before a push's backlog, and before any marketing the
transactional messages go; one customer's rows still go in the order they were written.

The push is 2,000 marketing rows for 2,000 customers, stored as the nurture dispatcher stores them
(one kf/send_msg each, lane 2), each customer granted their sends at the fake; the customer's message
comes through the real signed callback, and the real runtime (worker, outbox runner, sender) sends
everything to the fake API, whose record says in which order the calls arrived.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects_writer import write_notification
from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from core.events import Notify
from crm_store import work_queue
from crm_store.models import Customer, Lane, OutboxItem
from tests.bot.conftest import Bot
from tests.bot.test_message_path import GREETING
from tests.flows.test_engine import say

PUSH = 2000
PUSH_TEXT = "双十二预热，全场 8 折"


async def push_backlog(bot: Bot, count: int = PUSH, last: str = "") -> None:
    """`count` pending marketing rows, one per new customer (`wmPush<n>`), oldest first; with `last`, the
    newest row goes to that customer instead (a customer who chats, pushed to like everybody else)."""
    users = [f"wmPush{n}" for n in range(count - 1)] + [last or f"wmPush{count - 1}"]
    new = users[:-1] if last else users
    async with bot.runtime.sessions() as session, session.begin():
        ids = list(await session.scalars(insert(Customer).returning(Customer.id), [{"display_name": u} for u in new]))
        if last:
            ids.append(await customer_of(session, last))
        await session.execute(insert(OutboxItem), [push_row(customer, user) for customer, user in zip(ids, users, strict=True)])
    for user in new:
        bot.fake.grant_kf(SANDBOX_KF_ACCOUNT, user)  # each of them wrote lately: kf lets the bot write back


async def customer_of(session: AsyncSession, user: str) -> int:
    found = await session.scalar(select(Customer.id).where(Customer.identities.any(external_id=user)))
    assert found is not None
    return int(found)


def push_row(customer_id: int, user: str) -> dict[str, Any]:
    return {"dedup_key": f"nurture:bench-{customer_id}", "queue_key": f"customer:{customer_id}", "kind": "kf.send_msg",
            "customer_id": customer_id, "lane": Lane.MARKETING,
            "payload": {"touser": user, "open_kfid": SANDBOX_KF_ACCOUNT, "msgtype": "text",
                        "text": {"content": PUSH_TEXT}}}


def sends(bot: Bot) -> list[str]:
    """Who each kf/send_msg the fake received went to, in the order they arrived."""
    return [sent.to for sent in bot.fake.sent if sent.path == "kf/send_msg"]


async def lanes_left(bot: Bot) -> dict[int, int]:
    """Unfinished outbox rows per lane."""
    async with bot.runtime.sessions() as session:
        rows = await session.execute(select(OutboxItem.lane, func.count()).where(OutboxItem.status != "done")
                                     .group_by(OutboxItem.lane))
        return dict(rows.tuples().all())


async def test_a_reply_goes_in_the_first_claim_ahead_of_a_push_of_2000(bot: Bot) -> None:
    await push_backlog(bot)
    assert await bot.simulator.kf_says(bot.url, "wmChat", "你好") == 200
    await bot.drain()
    order, concurrency = sends(bot), bot.settings.worker.outbox_concurrency
    assert order.index("wmChat") < concurrency  # among the first claim's rows, not after the 2,000
    assert [reply.text for reply in bot.replies_to("wmChat")] == [GREETING]
    assert len(order) == PUSH + 1 and await lanes_left(bot) == {}  # and the push went out whole after it
    assert bot.fake.refused == []


async def test_with_the_sender_running_replies_pass_a_push_that_is_draining(start_bot) -> None:  # type: ignore[no-untyped-def]
    """The runner claims each time a slot frees; a reply stored by another process (no wake-up here)
    is seen by the next such claim, lanes first, long before the push is done."""
    bot: Bot = await start_bot(run_workers=True)
    bot.fake.slow_for(60, 0.01, path="kf/send_msg")  # 2,000 sends, 8 at a time: at least 2.5 s
    await push_backlog(bot)
    bot.runtime.outbox.wake()
    await until(lambda: len(sends(bot)) >= 50)  # the push is under way
    assert await bot.simulator.kf_says(bot.url, "wmChat", "你好") == 200  # a reply this process stores
    await until(lambda: "wmChat" in sends(bot))
    bot.fake.grant_kf(SANDBOX_KF_ACCOUNT, "wmElse")
    async with bot.runtime.sessions() as session, session.begin():  # a reply another process stored
        await session.execute(insert(OutboxItem).values(
            dedup_key="elsewhere#0", queue_key="customer:elsewhere", kind="kf.send_msg", lane=Lane.REPLY,
            payload={"touser": "wmElse", "open_kfid": SANDBOX_KF_ACCOUNT, "msgtype": "text", "text": {"content": "好"}}))
    await until(lambda: "wmElse" in sends(bot))
    order = sends(bot)
    answered, elsewhere = order.index("wmChat"), order.index("wmElse")
    assert answered < PUSH / 2 and elsewhere < PUSH / 2, (answered, elsewhere)  # both while the push drained
    assert (await lanes_left(bot)).get(Lane.MARKETING, 0) > PUSH / 4
    assert [reply.text for reply in bot.replies_to("wmChat")] == [GREETING]


async def until(condition: Any, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_a_customers_own_push_goes_before_their_reply_and_both_go_early(bot: Bot) -> None:
    await say(bot, "wmOwn", "你好")  # a customer who chats…
    await push_backlog(bot, last="wmOwn")  # …is pushed to, last of 2,000
    assert await bot.simulator.kf_says(bot.url, "wmOwn", "谢谢") == 200
    await bot.drain()
    assert [reply.text for reply in bot.replies_to("wmOwn")] == [GREETING, PUSH_TEXT, "不客气，随时为您服务～"]
    order, concurrency = sends(bot), bot.settings.worker.outbox_concurrency
    pushed, answered = [index for index, user in enumerate(order) if user == "wmOwn"][1:]  # after the greeting
    assert pushed <= concurrency and answered <= 2 * concurrency  # the push came forward for the reply behind it
    assert bot.fake.refused == []


async def test_transactional_messages_go_before_marketing(bot: Bot) -> None:
    await say(bot, "wmMember", "你好")
    await push_backlog(bot)
    async with bot.runtime.sessions() as session, session.begin():
        member = await session.scalar(select(Customer.id).where(Customer.identities.any(external_id="wmMember")))
        assert member is not None
        assert await write_notification(session, "group-filled:1#0", Notify(member, "您的团满了", "group.filled")) == 1
    await bot.drain()
    order = sends(bot)
    assert order.index("wmMember", 1) <= bot.settings.worker.outbox_concurrency  # in the first claim after the greeting
    assert bot.replies_to("wmMember")[-1].text == "您的团满了"


async def test_a_claim_takes_replies_then_transactional_then_marketing_oldest_first(bot: Bot) -> None:
    rows = [("m1", Lane.MARKETING), ("t1", Lane.TRANSACTIONAL), ("m2", Lane.MARKETING), ("r1", Lane.REPLY),
            ("t2", Lane.TRANSACTIONAL), ("r2", Lane.REPLY)]
    async with bot.runtime.sessions() as session, session.begin():
        await session.execute(insert(OutboxItem), [
            {"dedup_key": key, "queue_key": f"q:{key}", "kind": "kf.send_msg", "payload": {}, "lane": lane}
            for key, lane in rows])
    taken = []
    async with bot.runtime.sessions() as session:
        for _ in range(3):
            claimed = await work_queue.claim_heads(session, OutboxItem, 2, 60)
            taken.append(sorted(item.dedup_key for item in claimed.items))
    assert taken == [["r1", "r2"], ["t1", "t2"], ["m1", "m2"]]


async def test_a_paused_marketing_lane_holds_the_push_and_lets_replies_through(bot: Bot) -> None:
    """Marketing used its share of the API's budget: the runner stops claiming it for a while, not replies."""
    await push_backlog(bot, 50)
    bot.runtime.outbox.pause(60, lane=Lane.MARKETING)
    assert await bot.simulator.kf_says(bot.url, "wmChat", "你好") == 200
    await bot.runtime.inbox.drain()
    await bot.runtime.outbox.drain()
    assert sends(bot) == ["wmChat"] and await lanes_left(bot) == {Lane.MARKETING: 50}
    bot.runtime.outbox.lanes_paused.clear()  # the minute has passed
    await bot.drain()
    assert len(sends(bot)) == 51 and await lanes_left(bot) == {}
