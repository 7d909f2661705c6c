"""Reps see media: an OA customer's photo reaches the rep serving them through the app, with a signed link.

End to end on SQLite and PostgreSQL: signed callbacks in (the sandbox's WeChat side), the media fetcher
run as the scheduler would, the outbox drained to the fake API (media/upload on the app's credential,
then message/send), and the link served by the bot's own GET /media/{id} route. A tampered or expired
link is 403; kf customers are left to WeCom's workspace; a rep's photo in the kf workspace is recorded
on the timeline and kept like the customer's.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from yarl import URL

from bot.media_links import sign, signed_media_url
from bot.sandbox.fake_wechat import Sent
from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from crm_store.media_items import MediaItem
from crm_store.models import TimelineEvent
from tests.bot.conftest import Bot
from tests.bot.test_handoff import rep_says, reps, to_rep
from tests.bot.test_media_download import PNG, fetcher, kf_sends, media_rows, oa_sends
from tests.flows.test_engine import customer_of, say, timeline_kinds

REP = "zhangsan"


@pytest.fixture
async def media_bot(start_bot, tmp_path: Path) -> Bot:  # type: ignore[no-untyped-def]
    bot = await start_bot(media={"directory": str(tmp_path / "media")})
    await reps(bot, REP)
    return bot


async def oa_says(bot: Bot, openid: str, text: str) -> None:
    assert await bot.simulator.oa_says(bot.url, openid, text) == 200
    await bot.drain()


async def taken_by_rep(bot: Bot, openid: str) -> int:
    """The OA customer asks for a person, and the rep takes them in the app."""
    await oa_says(bot, openid, "转人工")
    customer = await customer_of(bot, openid)
    await rep_says(bot, REP, f"接 {customer.id}")
    return customer.id


def link_in(sent: Sent) -> URL:
    [href] = re.findall(r'href="([^"]+)"', sent.text)
    return URL(href)


async def fetch(bot: Bot, link: URL) -> tuple[int, bytes, dict[str, str]]:
    async with bot.client.get(link.path_qs) as response:
        return response.status, await response.read(), dict(response.headers)


async def test_an_oa_customers_photo_reaches_the_rep_as_an_app_image_and_a_signed_link(media_bot: Bot) -> None:
    bot = media_bot
    customer_id = await taken_by_rep(bot, "oPhoto")
    app_messages, replies = len(to_rep(bot, REP)), len(bot.replies_to("oPhoto"))
    media_id = bot.fake.add_media("image", PNG, "发票 照片.png", "image/png")
    await oa_sends(bot, "oPhoto", "image", {"PicUrl": "http://mmbiz.qpic.cn/p", "MediaId": media_id}, 7_001)
    await bot.drain()
    assert to_rep(bot, REP)[app_messages:] == [], "nothing reaches the rep before the photo is kept"
    assert len(bot.replies_to("oPhoto")) == replies, "a person has the customer: the bot stays quiet"

    assert await fetcher(bot).run_due() == 1
    await bot.drain()
    image, text = to_rep(bot, REP)[app_messages:]
    assert (image.body["msgtype"], image.body["agentid"]) == ("image", bot.settings.wecom.app.agent_id)
    uploaded = bot.fake.media[image.body["image"]["media_id"]]
    assert uploaded.data == PNG and uploaded.filename == "发票 照片.png"
    assert bot.fake.calls.count("media/upload") == 1
    app_secret = bot.settings.wecom.app.secret.get_secret_value()
    assert bot.fake.token_requests_by.get(app_secret, 0) >= 1, "uploaded with the app's credential"
    assert text.body["msgtype"] == "text" and f"（{customer_id}）发来图片「发票 照片.png」" in text.text

    [item] = await media_rows(bot)
    status, body, headers = await fetch(bot, link_in(text))
    assert (status, body, headers["Content-Type"]) == (200, PNG, "image/png")
    assert headers["Content-Disposition"] == (
        "inline; filename=\"__ __.png\"; filename*=UTF-8''%E5%8F%91%E7%A5%A8%20%E7%85%A7%E7%89%87.png")
    assert headers["X-Content-Type-Options"] == "nosniff"
    async with bot.runtime.sessions() as session:
        forwarded = await session.scalar(select(TimelineEvent.data).where(TimelineEvent.kind == "media.forwarded"))
    assert forwarded is not None and {key: forwarded[key] for key in ("item_id", "rep", "as")} == {
        "item_id": item.id, "rep": REP, "as": "image"}


async def test_a_tampered_or_expired_link_is_403_and_an_item_not_kept_is_404(media_bot: Bot) -> None:
    bot = media_bot
    image_id = bot.fake.add_media("image", PNG, "p.png", "image/png")
    await oa_sends(bot, "oLink", "image", {"PicUrl": "http://p", "MediaId": image_id}, 7_003)
    await bot.drain()
    assert await fetcher(bot).run_due() == 1
    [item] = await media_rows(bot)
    link = URL(signed_media_url(bot.settings, item.id, time.time()))
    assert link.host == "127.0.0.1" and link.path == f"/media/{item.id}"
    assert (await fetch(bot, link))[:2] == (200, PNG)

    sig, exp = link.query["sig"], int(link.query["exp"])
    tampered = [
        link.update_query(sig=("0" if sig[0] != "0" else "1") + sig[1:]),  # one character changed
        link.update_query(exp=exp + 60),  # a longer life than was signed
        link.with_path(f"/media/{item.id + 1}").with_query(link.query),  # another item
        link.update_query(sig="签名"),
        link.with_query({"exp": str(exp)}),
    ]
    for bad in tampered:
        assert (await fetch(bot, bad))[0] == 403, bad
    secret = bot.settings.media.link_secret.get_secret_value()
    expired = int(time.time()) - 1
    assert (await fetch(bot, link.with_query({"exp": str(expired), "sig": sign(secret, item.id, expired)})))[0] == 403
    missing = 10**9
    valid_for_missing = link.with_path(f"/media/{missing}").with_query({"exp": str(exp),
                                                                         "sig": sign(secret, missing, exp)})
    assert (await fetch(bot, valid_for_missing))[0] == 404


async def test_the_handoff_card_links_to_the_customers_latest_photo(media_bot: Bot) -> None:
    bot = media_bot
    media_id = bot.fake.add_media("image", PNG, "衣服.png", "image/png")
    await oa_sends(bot, "oCard", "image", {"PicUrl": "http://p", "MediaId": media_id}, 7_004)
    await bot.drain()
    assert await fetcher(bot).run_due() == 1
    await oa_says(bot, "oCard", "转人工")
    [card] = to_rep(bot, REP)
    assert card.body["msgtype"] == "textcard"
    assert "最近发来：图片「衣服.png」（点「详情」查看）" in card.body["textcard"]["description"]
    status, body, _ = await fetch(bot, URL(card.body["textcard"]["url"]))
    assert (status, body) == (200, PNG)


async def test_with_a_card_url_the_photo_link_follows_the_card(start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(media={"directory": str(tmp_path / "media")},
                          handoff={"card_url": "https://scrm.example.com/customers/{customer_id}"})
    await reps(bot, REP)
    media_id = bot.fake.add_media("image", PNG, "a.png", "image/png")
    await oa_sends(bot, "oUrl", "image", {"PicUrl": "http://p", "MediaId": media_id}, 7_005)
    await bot.drain()
    await fetcher(bot).run_due()
    await oa_says(bot, "oUrl", "转人工")
    card, follow = to_rep(bot, REP)
    assert card.body["textcard"]["url"].startswith("https://scrm.example.com/customers/")
    assert "见下条消息" in card.body["textcard"]["description"]
    assert (await fetch(bot, link_in(follow)))[:2] == (200, PNG)


async def test_a_kf_customers_photo_is_left_to_the_kf_workspace(media_bot: Bot) -> None:
    bot = media_bot
    await say(bot, "wmKfPhoto", "转人工")
    customer = await customer_of(bot, "wmKfPhoto")
    await rep_says(bot, REP, f"接 {customer.id}")
    before = len(to_rep(bot, REP))
    media_id = bot.fake.add_media("image", PNG, "kf.png", "image/png")
    await kf_sends(bot, "wmKfPhoto", "image", media_id, "kfphoto")
    await bot.drain()
    assert await fetcher(bot).run_due() == 1
    await bot.drain()
    assert to_rep(bot, REP)[before:] == [] and "media/upload" not in bot.fake.calls


async def test_a_reps_photo_in_the_kf_workspace_is_on_the_timeline_and_kept(media_bot: Bot) -> None:
    bot = media_bot
    await say(bot, "wmRepPic", "转人工")  # the kf session moves to the rep's workspace
    customer = await customer_of(bot, "wmRepPic")
    said = len([sent for sent in bot.fake.sent if sent.to == "wmRepPic"])
    media_id = bot.fake.add_media("image", PNG, "catalog.png", "image/png")
    bot.fake.add_kf_servicer_media(SANDBOX_KF_ACCOUNT, "wmRepPic", REP, "image", {"media_id": media_id})
    assert await bot.simulator._kf_notify(bot.url) == 200
    await bot.drain()
    async with bot.runtime.sessions() as session:
        inbound = await session.scalar(select(TimelineEvent.data).where(
            TimelineEvent.customer_id == customer.id, TimelineEvent.kind == "inbound.rep_message"))
    assert inbound is not None and (inbound["content"]["type"], inbound["content"]["media_id"]) == ("image", media_id)
    kinds = await timeline_kinds(bot, customer.id)
    assert "rep.message" in kinds and "handoff.taken" in kinds  # answering in kf takes the handoff
    assert await fetcher(bot).run_due() == 1
    [item] = await media_rows(bot)
    assert (item.customer_id, item.status, item.media_id) == (customer.id, "stored", media_id)
    assert item.key is not None and await fetcher(bot).store.get(item.key) == PNG
    assert len([sent for sent in bot.fake.sent if sent.to == "wmRepPic"]) == said, "the bot stays quiet"


async def test_only_what_arrives_after_the_rep_took_the_customer_is_forwarded(media_bot: Bot) -> None:
    bot = media_bot
    await oa_says(bot, "oEarly", "转人工")  # offered, not yet taken
    media_id = bot.fake.add_media("image", PNG, "early.png", "image/png")
    await oa_sends(bot, "oEarly", "image", {"PicUrl": "http://p", "MediaId": media_id}, 7_006)
    await bot.drain()
    customer = await customer_of(bot, "oEarly")
    await rep_says(bot, REP, f"接 {customer.id}")
    before = len(to_rep(bot, REP))
    assert await fetcher(bot).run_due() == 1
    await bot.drain()
    assert to_rep(bot, REP)[before:] == []
    rows = await media_rows(bot)
    assert [row.status for row in rows] == ["stored"] and isinstance(rows[0], MediaItem)
