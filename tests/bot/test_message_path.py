"""End to end: signed, encrypted callbacks in, replies out through the fake WeCom/OA API, exactly once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from bot.sandbox import wechat_side
from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from crm_store.models import Customer, Identity, InboxItem, KfCursor, OutboxItem, TimelineEvent, utcnow
from tests.bot.conftest import Bot

# What the shipped flows (flows/library) answer.
GREETING = "您好！请问有什么可以帮您？可以问价格、查订单、领优惠券。"
ASK_PRODUCT = "请问您想了解哪款商品呢？告诉我商品名称就好～"


async def count(bot: Bot, model: type, *where: object) -> int:
    async with bot.runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_kf_greeting_is_answered_once(bot: Bot) -> None:
    assert await bot.simulator.kf_says(bot.url, "wmAlice", "你好") == 200
    await bot.drain()
    [reply] = bot.replies_to("wmAlice")
    assert reply.path == "kf/send_msg"
    assert reply.body["open_kfid"] == SANDBOX_KF_ACCOUNT
    assert reply.body["msgtype"] == "text" and "您好" in reply.text  # the shipped smalltalk flow
    assert reply.body["msgid"].startswith("scrm")
    assert await count(bot, InboxItem, InboxItem.status != "done") == 0
    async with bot.runtime.sessions() as session:
        cursor = await session.get(KfCursor, SANDBOX_KF_ACCOUNT)
    assert cursor is not None and cursor.cursor  # WeCom's cursors are opaque: this one is past the message
    rest = await bot.fake.kf_sync_msg(None, {"open_kfid": SANDBOX_KF_ACCOUNT, "cursor": cursor.cursor})  # type: ignore[arg-type]
    assert rest["msg_list"] == []


async def test_retried_callback_and_repeated_pull_are_no_ops(bot: Bot) -> None:
    bot.fake.add_kf_text(SANDBOX_KF_ACCOUNT, "wmBob", "这个怎么卖")
    keys = bot.settings.wecom.kf
    xml = wechat_side.kf_notification_xml(bot.settings.wecom.corp_id, SANDBOX_KF_ACCOUNT, "tok1")
    signed = wechat_side.sign_wecom(keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(),
                                    bot.settings.wecom.corp_id, xml)
    for _ in range(3):  # WeChat retries a callback it thinks was not answered
        response = await bot.client.post("/wecom/kf/callback", params=signed.query, data=signed.body)
        assert response.status == 200 and await response.text() == "success"
    assert await count(bot, InboxItem) == 1
    await bot.drain()
    # The cursor is lost (say, restored from an old backup): the same messages are pulled again.
    async with bot.runtime.sessions() as session, session.begin():
        (await session.get(KfCursor, SANDBOX_KF_ACCOUNT)).cursor = ""  # type: ignore[union-attr]
    await bot.simulator.kf_says(bot.url, "wmBob", "你好")
    await bot.drain()
    assert [reply.text for reply in bot.replies_to("wmBob")] == [ASK_PRODUCT, GREETING]


async def test_has_more_is_followed_page_by_page(bot: Bot) -> None:
    bot.fake.page_limit = 2
    for index in range(5):
        bot.fake.add_kf_text(SANDBOX_KF_ACCOUNT, f"wmPage{index}", "谢谢")
    await bot.simulator.kf_says(bot.url, "wmPage5", "谢谢")
    await bot.drain()
    assert bot.fake.calls.count("kf/sync_msg") == 3
    for index in range(6):
        assert [r.text for r in bot.replies_to(f"wmPage{index}")] == ["不客气，随时为您服务～"]


async def test_messages_of_one_customer_are_answered_in_order(bot: Bot) -> None:
    for text in ("你好", "谢谢", "这个怎么卖"):
        bot.fake.add_kf_text(SANDBOX_KF_ACCOUNT, "wmOrder", text)
    await bot.simulator.kf_says(bot.url, "wmOrder", "你好")
    await bot.drain()
    texts = [reply.text for reply in bot.replies_to("wmOrder")]
    assert texts == [GREETING, "不客气，随时为您服务～", ASK_PRODUCT, GREETING]


async def test_enter_session_uses_the_welcome_code(bot: Bot) -> None:
    await bot.simulator.kf_enters(bot.url, "wmNew", scene_param="inv_K7Q2")
    await bot.drain()
    [welcome] = bot.replies_to("wmNew")
    assert welcome.path == "kf/send_msg_on_event"
    async with bot.runtime.sessions() as session:
        events = (await session.scalars(select(TimelineEvent.data).where(TimelineEvent.kind == "inbound.enter_session"))).all()
    assert events[0]["scene"] == "inv_K7Q2"


async def test_menu_click_skips_nlu_and_answers(bot: Bot) -> None:
    await bot.simulator.kf_says(bot.url, "wmMenu", "问价格", menu_id="price")
    await bot.drain()
    assert [r.text for r in bot.replies_to("wmMenu")] == [ASK_PRODUCT]


async def test_contact_added_gets_welcome_and_profile(bot: Bot) -> None:
    bot.fake.contacts["wmContact"] = {"name": "王小姐", "unionid": "uCONTACT"}
    assert await bot.simulator.contact_adds(bot.url, "wmContact", "rep_li", state="ch_spring") == 200
    await bot.drain()
    [welcome] = bot.replies_to("wmContact")
    assert welcome.path == "externalcontact/send_welcome_msg" and "王小姐" in welcome.text
    async with bot.runtime.sessions() as session:
        customer = await session.scalar(select(Customer).where(Customer.unionid == "uCONTACT"))
    assert customer is not None and customer.display_name == "王小姐"


async def test_oa_subscribe_and_text(bot: Bot) -> None:
    assert await bot.simulator.oa_subscribes(bot.url, "oFollower", scene="ch_poster") == 200
    assert await bot.simulator.oa_says(bot.url, "oFollower", "你好") == 200
    await bot.drain()
    replies = bot.replies_to("oFollower")
    assert [r.path for r in replies] == ["message/custom/send", "message/custom/send"]
    assert "1. 问价格" in replies[0].text  # OA has no kf menus: choices as text


async def test_unionid_merges_wecom_and_oa_identities(bot: Bot) -> None:
    bot.fake.contacts["wmSame"] = {"name": "小张", "unionid": "uSAME"}
    bot.fake.oa_users["oSame"] = {"nickname": "小张", "unionid": "uSAME"}
    await bot.simulator.kf_says(bot.url, "wmSame", "你好")
    await bot.simulator.oa_says(bot.url, "oSame", "你好")
    await bot.drain()
    async with bot.runtime.sessions() as session:
        identities = (await session.execute(select(Identity.kind, Identity.customer_id))).all()
    assert {kind for kind, _ in identities} == {"wecom", "oa"}
    assert len({customer for _, customer in identities}) == 1


async def test_url_verification(bot: Bot) -> None:
    keys = bot.settings.wecom.kf
    from wechatpy.work.crypto import PrpCrypto, WeChatCrypto

    crypto = WeChatCrypto(keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(),
                          bot.settings.wecom.corp_id)
    echostr = PrpCrypto(crypto.key).encrypt("echo-4711", bot.settings.wecom.corp_id).decode()
    import time

    stamp = str(int(time.time()))
    signature = wechat_side.sha1_signature(keys.token.get_secret_value(), stamp, "n1", echostr)
    response = await bot.client.get("/wecom/kf/callback", params={
        "msg_signature": signature, "timestamp": stamp, "nonce": "n1", "echostr": echostr})
    assert response.status == 200 and await response.text() == "echo-4711"
    bad = await bot.client.get("/wecom/kf/callback", params={
        "msg_signature": "0" * 40, "timestamp": stamp, "nonce": "n1", "echostr": echostr})
    assert bad.status == 403


@pytest.mark.parametrize(("case", "status"), [
    ("bad_signature", 403), ("stale_timestamp", 403), ("wrong_key", 403), ("not_xml", 400), ("huge", 400),
    ("no_query", 403),
])
async def test_bad_callbacks_store_nothing(bot: Bot, case: str, status: int) -> None:
    oa = bot.settings.oa
    xml = wechat_side.oa_text_xml(oa.app_id, "oBad", "hi")
    token, key = oa.token.get_secret_value(), oa.encoding_aes_key.get_secret_value()
    signed = wechat_side.sign_oa(token, key, oa.app_id, xml, "safe")
    query, body = dict(signed.query), signed.body
    if case == "bad_signature":
        query["msg_signature"] = "0" * 40
    elif case == "stale_timestamp":
        signed = wechat_side.sign_oa(token, key, oa.app_id, xml, "safe", timestamp=1_000_000_000)
        query, body = dict(signed.query), signed.body
    elif case == "wrong_key":
        signed = wechat_side.sign_oa(token, "A" * 43, oa.app_id, xml, "safe")
        query, body = dict(signed.query), signed.body
    elif case == "not_xml":
        body = b"{\"json\": true}"
    elif case == "huge":
        body = b"<xml>" + b"x" * (bot.settings.server.max_body_bytes + 1) + b"</xml>"
    elif case == "no_query":
        query = {}
    response = await bot.client.post("/oa/callback", params=query, data=body)
    assert response.status == status
    assert await count(bot, InboxItem) == 0


async def test_healthz_and_metrics(bot: Bot) -> None:
    await bot.simulator.kf_says(bot.url, "wmHealth", "你好")
    await bot.drain()
    health = await (await bot.client.get("/healthz")).json()
    assert health["store"]["ok"] and health["inbox"]["backlog"] == 0
    assert health["sender"]["finished_last_minute"] == 1
    assert health["nlu"]["status"] in ("ok", "degraded")
    if bot.runtime.state.backend == "memory":
        assert any("shared_state" in line for line in health["degraded"])
    metrics = await (await bot.client.get("/metrics")).text()
    assert 'scrm_callbacks_total{channel="kf",outcome="stored"}' in metrics
    assert "scrm_outbox_backlog 0.0" in metrics


async def test_outbox_row_is_written_with_the_inbox_item_done(bot: Bot) -> None:
    await bot.simulator.kf_says(bot.url, "wmTx", "你好")
    await bot.runtime.inbox.drain()
    assert await count(bot, OutboxItem, OutboxItem.status == "pending") == 1
    assert await count(bot, InboxItem, InboxItem.status == "done") == 2  # notification + message


async def test_a_burst_of_kf_notifications_needs_one_pull(bot: Bot) -> None:
    keys = bot.settings.wecom.kf
    for index in range(5):
        bot.fake.add_kf_text(SANDBOX_KF_ACCOUNT, f"wmBurst{index}", "你好")
        xml = wechat_side.kf_notification_xml(bot.settings.wecom.corp_id, SANDBOX_KF_ACCOUNT, f"burst{index}")
        signed = wechat_side.sign_wecom(keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(),
                                        bot.settings.wecom.corp_id, xml)
        assert (await bot.client.post("/wecom/kf/callback", params=signed.query, data=signed.body)).status == 200
    async with bot.runtime.sessions() as session, session.begin():  # the burst arrived a minute ago
        await session.execute(update(InboxItem).values(created_at=utcnow() - timedelta(minutes=1)))
    await bot.drain()
    assert bot.fake.calls.count("kf/sync_msg") == 1
    assert all(len(bot.replies_to(f"wmBurst{index}")) == 1 for index in range(5))
    assert await count(bot, InboxItem, InboxItem.status != "done") == 0


def handed_over(queue: str) -> float:
    return REGISTRY.get_sample_value("scrm_queue_handed_over_total", {"queue": queue}) or 0.0


async def test_pulled_messages_are_handled_by_the_puller_without_a_second_claim(bot: Bot) -> None:
    """A pulled message that heads its customer's queue is claimed in the page's transaction and handled at
    once; a second message of the same customer waits its turn in the inbox."""
    for text in ("你好", "谢谢"):
        bot.fake.add_kf_text(SANDBOX_KF_ACCOUNT, "wmOnce", text)
    bot.fake.add_kf_text(SANDBOX_KF_ACCOUNT, "wmOnceToo", "你好")
    await bot.simulator.kf_says(bot.url, "wmOnceToo", "谢谢")
    before = handed_over("inbox")
    await bot.drain()
    assert handed_over("inbox") == before + 2  # the heads of wmOnce's and wmOnceToo's queues
    assert [reply.text for reply in bot.replies_to("wmOnce")] == [GREETING, "不客气，随时为您服务～"]
    assert [reply.text for reply in bot.replies_to("wmOnceToo")] == [GREETING, "不客气，随时为您服务～"]
    async with bot.runtime.sessions() as session:
        attempts = set((await session.scalars(select(InboxItem.attempts))).all())
    assert attempts == {1}  # each item claimed once, by the puller or by the usual claim


async def test_messages_claimed_by_a_puller_that_died_are_taken_over(bot: Bot) -> None:
    inbox = bot.runtime.inbox
    start = inbox.start  # the pulled message is claimed with the page, then the process dies before handling it
    inbox.start = lambda items: start([item for item in items if item.kind == "kf_sync"])  # type: ignore[method-assign]
    try:
        await bot.simulator.kf_says(bot.url, "wmOrphan", "你好")
        await bot.drain()
    finally:
        del inbox.start
    assert bot.replies_to("wmOrphan") == []
    assert await count(bot, InboxItem, InboxItem.status == "claimed") == 1
    await bot.drain()
    assert bot.replies_to("wmOrphan") == []  # its claim still holds
    async with bot.runtime.sessions() as session, session.begin():  # what the passing of claim_ttl_s does
        await session.execute(update(InboxItem).where(InboxItem.status == "claimed").values(claimed_until=utcnow()))
    await bot.drain()
    assert [reply.text for reply in bot.replies_to("wmOrphan")] == [GREETING]
    assert await count(bot, InboxItem, InboxItem.status != "done") == 0


async def test_with_the_workers_running_a_message_passes_each_queue_once(start_bot) -> None:  # type: ignore[no-untyped-def]
    """The callback's transaction claims the message for this process's worker, and the turn's transaction
    claims its reply for this process's sender: no queue item is claimed twice, yet each is done."""
    bot: Bot = await start_bot(run_workers=True)
    inbox, outbox = handed_over("inbox"), handed_over("outbox")
    await bot.simulator.oa_says(bot.url, "oRunning", "你好")
    await bot.simulator.kf_says(bot.url, "wmRunning", "你好")
    for _ in range(500):  # the background workers answer within a few milliseconds
        if bot.replies_to("oRunning") and bot.replies_to("wmRunning"):
            break
        await asyncio.sleep(0.01)
    assert [reply.text for reply in bot.replies_to("oRunning")] == [GREETING]
    assert [reply.text for reply in bot.replies_to("wmRunning")] == [GREETING]
    assert handed_over("inbox") == inbox + 3  # the OA message, the kf notification and the pulled kf message
    assert handed_over("outbox") == outbox + 2  # the two replies
    for model in (InboxItem, OutboxItem):
        for _ in range(100):  # the sender records "done" just after the call
            if await count(bot, model, model.status != "done") == 0:
                break
            await asyncio.sleep(0.01)
        assert await count(bot, model, model.status != "done") == 0
        assert await count(bot, model, model.attempts != 1) == 0


async def test_messages_queued_behind_one_in_flight_follow_it_without_waiting_for_a_poll(start_bot) -> None:  # type: ignore[no-untyped-def]
    """Only the head of a customer's queue is handed over; the next ones are claimed as soon as it is done,
    not at the next poll (set to a minute here, so a missed wake-up would show)."""
    bot: Bot = await start_bot(run_workers=True, worker={"poll_interval_s": 60})
    for text in ("你好", "谢谢", "这个怎么卖"):
        await bot.simulator.oa_says(bot.url, "oQueued", text)
    for _ in range(500):
        if len(bot.replies_to("oQueued")) == 3:
            break
        await asyncio.sleep(0.01)
    assert [reply.text for reply in bot.replies_to("oQueued")] == [GREETING, "不客气，随时为您服务～", ASK_PRODUCT]


async def test_the_sandbox_keeps_chatting_after_a_restart_on_the_same_store(start_bot) -> None:  # type: ignore[no-untyped-def]
    first = await start_bot()
    for text in ("你好", "在吗", "你好"):
        await first.simulator.kf_says(first.url, "wmAgain", text)
        await first.drain()
    assert len(first.replies_to("wmAgain")) == 3
    await first.client.close()  # `scrm serve` stopped; the new one has a new sandbox with an empty kf list
    second = await start_bot()
    await second.simulator.kf_says(second.url, "wmAgain", "你好")
    await second.drain()
    assert len(second.replies_to("wmAgain")) == 1
