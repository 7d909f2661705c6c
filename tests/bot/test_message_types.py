"""Every message type the platforms send, in: typed content, stored once, answered 200, never a crash.

Field names are the platforms' own: kf items from 微信客服 › 读取消息
(https://developer.work.weixin.qq.com/document/path/94670), OA messages from 接收普通消息
(https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Receiving_standard_messages.html).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.channels.base import parse_xml
from bot.channels.oa import OaCallback
from bot.channels.wecom import events_from_kf_messages
from bot.sandbox import wechat_side
from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from core.content import (
    TIMELINE_BYTES,
    Card,
    Channels,
    Content,
    Link,
    Location,
    Media,
    Merged,
    MergedItem,
    MiniProgram,
    Other,
    content_for_timeline,
    content_from_payload,
    content_to_payload,
    location_or_other,
)
from core.events import InboundEvent
from crm_store.models import Identity, InboxItem, KfCursor, TimelineEvent
from tests.bot.conftest import Bot

ASK_PRODUCT = "请问您想了解哪款商品呢？告诉我商品名称就好～"  # the shipped price_question flow
MERGED_CONTENT = json.dumps({"msgtype": "text", "text": {"content": "你好"}}, ensure_ascii=False)

# msgtype -> (the item's body under that key, as kf/sync_msg returns it; what the bot reads)
KF_TYPES: dict[str, tuple[dict[str, Any], Content]] = {
    "image": ({"media_id": "MEDIA_IMAGE"}, Media("image", "MEDIA_IMAGE")),
    "voice": ({"media_id": "MEDIA_VOICE"}, Media("voice", "MEDIA_VOICE", format="amr")),
    "video": ({"media_id": "MEDIA_VIDEO"}, Media("video", "MEDIA_VIDEO")),
    "file": ({"media_id": "MEDIA_FILE"}, Media("file", "MEDIA_FILE")),
    "location": ({"latitude": 23.10647, "longitude": 113.32446, "name": "广州国际媒体港", "address": "广州市海珠区滨江东路"},
                 Location(23.10647, 113.32446, "广州国际媒体港", "广州市海珠区滨江东路")),
    "link": ({"title": "新品上架", "desc": "春季新款", "url": "https://shop.example.com/new?a=1&b=2", "pic_url": "https://p/1.jpg"},
             Link("新品上架", "春季新款", "https://shop.example.com/new?a=1&b=2", "https://p/1.jpg")),
    "business_card": ({"userid": "wmFriend"}, Card("wmFriend")),
    "miniprogram": ({"title": "会员中心", "appid": "wxAPPID", "pagepath": "pages/member/index", "thumb_media_id": "THUMB"},
                    MiniProgram("会员中心", "wxAPPID", "pages/member/index", "THUMB")),
    "channels_shop_product": (
        {"product_id": "P100", "head_image": "https://p/h.jpg", "title": "连衣裙", "sales_price": "19900",
         "shop_nickname": "旗舰店", "shop_head_image": "https://p/s.jpg"},
        Channels("channels_shop_product", "连衣裙", product_id="P100", sales_price="19900", head_image="https://p/h.jpg",
                 shop_nickname="旗舰店", shop_head_image="https://p/s.jpg")),
    "channels_shop_order": (
        {"order_id": "O200", "product_titles": "连衣裙,凉鞋", "price_wording": "¥299.00", "state": "待发货",
         "image_url": "https://p/o.jpg", "shop_nickname": "旗舰店"},
        Channels("channels_shop_order", "连衣裙,凉鞋", order_id="O200", price_wording="¥299.00", state="待发货",
                 image_url="https://p/o.jpg", shop_nickname="旗舰店")),
    "merged_msg": (
        {"title": "小王的聊天记录", "item": [{"send_time": 1700000000, "msgtype": "text", "sender_name": "小王",
                                       "msg_content": MERGED_CONTENT}]},
        Merged("小王的聊天记录", (MergedItem("小王", "text", 1700000000, MERGED_CONTENT),))),
    "channels": ({"sub_type": 1, "nickname": "品牌视频号", "title": "新品发布会"},
                 Channels("channels", "新品发布会", nickname="品牌视频号", sub_type=1)),
}

# MsgType -> (the XML's fields in the doc's order; what the bot reads)
OA_TYPES: dict[str, tuple[dict[str, str | int | float], Content]] = {
    "image": ({"PicUrl": "http://mmbiz.qpic.cn/pic", "MediaId": "OA_IMAGE"},
              Media("image", "OA_IMAGE", pic_url="http://mmbiz.qpic.cn/pic")),
    "voice": ({"MediaId": "OA_VOICE", "Format": "amr"}, Media("voice", "OA_VOICE", format="amr")),
    "video": ({"MediaId": "OA_VIDEO", "ThumbMediaId": "OA_THUMB"}, Media("video", "OA_VIDEO", thumb_media_id="OA_THUMB")),
    "shortvideo": ({"MediaId": "OA_SHORT", "ThumbMediaId": "OA_THUMB2"},
                   Media("video", "OA_SHORT", thumb_media_id="OA_THUMB2", short=True)),
    "location": ({"Location_X": 23.134521, "Location_Y": 113.358803, "Scale": 20, "Label": "位置信息"},
                 Location(23.134521, 113.358803, "位置信息", scale=20)),
    "link": ({"Title": "公众平台官网链接", "Description": "公众平台官网", "Url": "https://mp.weixin.qq.com/?a=1&b=2"},
             Link("公众平台官网链接", "公众平台官网", "https://mp.weixin.qq.com/?a=1&b=2")),
}


def kf_item(msgtype: str, body: dict[str, Any], origin: int = 3, msgid: str = "m1") -> dict[str, Any]:
    item = {"msgid": msgid, "open_kfid": "wk", "external_userid": "wm1", "send_time": 1700000000, "origin": origin,
            "msgtype": msgtype, msgtype: body}
    return item | ({"servicer_userid": "rep_li"} if origin == 5 else {})


def oa_parse(msg_type: str, fields: dict[str, str | int | float], msg_id: int = 42) -> InboundEvent:
    [event] = OaCallback("t", "", "wxapp", "plain", 0).parse(
        parse_xml(wechat_side.oa_message_xml("gh_oa", "oFan", msg_type, fields, msg_id=msg_id)))
    return event


# --- the content part on its own --------------------------------------------------------------

EVERY_CONTENT: list[Content] = [
    *(content for _, content in KF_TYPES.values()),
    *(content for _, content in OA_TYPES.values()),
    Media("file", "F1", filename="报价单.pdf", size=1024, duration_s=0),
    Media("voice", "V1", format="speex", duration_s=12),
    Other("note", {"msgtype": "note", "note": {"deep": [1, 2, {"x": None}]}}, "not read"),
    Merged("空的聊天记录"),
]


@pytest.mark.parametrize("content", EVERY_CONTENT, ids=lambda content: type(content).__name__)
def test_payload_round_trip_of_every_content_type(content: Content) -> None:
    event = InboundEvent(channel="kf", kind="message", dedup_key="kf:m1", sender="wm1", account="wk", content=content)
    stored = json.loads(json.dumps(event.to_payload()))  # the inbox keeps it as JSON
    assert stored["content"]["type"] == content.kind == event.content_kind
    assert InboundEvent.from_payload(stored) == event
    assert content_from_payload(content_to_payload(content)) == content


def test_a_text_event_payload_is_unchanged() -> None:
    event = InboundEvent(channel="oa", kind="message", dedup_key="oa:1", sender="o1", text="你好")
    assert "content" not in event.to_payload() and event.content_kind == "text"
    assert InboundEvent.from_payload(event.to_payload()) == event


def test_stored_content_this_version_cannot_read_becomes_other() -> None:
    newer = content_from_payload({"type": "hologram", "beam": 1})
    assert isinstance(newer, Other) and newer.type == "hologram" and "unknown type" in newer.problem
    extra_field = content_from_payload({"type": "link", "title": "t", "description": "d", "url": "u", "added_later": 1})
    assert extra_field == Link("t", "d", "u")
    broken = content_from_payload({"type": "location", "latitude": 400, "longitude": 0})
    assert isinstance(broken, Other) and "latitude" in broken.problem


@pytest.mark.parametrize(("latitude", "longitude", "problem"), [
    ("abc", 113.3, "latitude 'abc' is not a number"),
    ("", "", "latitude '' is not a number"),
    (91, 0, "latitude 91 is outside -90..90"),
    (0, -180.5, "longitude -180.5 is outside -180..180"),
    ("nan", 0, "latitude nan is outside -90..90"),
    (True, 0, "latitude True is not a number"),
    (None, 0, "latitude None is not a number"),
    ({"x": 1}, 0, "latitude {'x': 1} is not a number"),
])
def test_malformed_locations_become_other_with_the_problem(latitude: object, longitude: object, problem: str) -> None:
    raw = {"latitude": latitude, "longitude": longitude}
    content = location_or_other("location", raw, latitude, longitude, "某地")
    assert content == Other("location", raw, f"malformed location: {problem}")
    with pytest.raises(ValueError):
        Location(91.0, 0.0)


def test_edges_of_the_map_are_locations() -> None:
    assert location_or_other("location", {}, "-90", "180", "南极") == Location(-90.0, 180.0, "南极")
    assert location_or_other("location", {}, 0, 0) == Location(0.0, 0.0)


@pytest.mark.parametrize(("filename", "safe"), [
    ("../../etc/passwd", "passwd"), ("..\\..\\boot.ini", "boot.ini"), ("报价单.pdf", "报价单.pdf"),
    ("..", ""), ("/", ""), ("a\x00b.txt", "ab.txt"),
])
def test_a_file_name_is_data_never_a_path(filename: str, safe: str) -> None:
    media = Media("file", "F1", filename=filename)
    assert media.filename == filename and media.safe_filename == safe
    assert bool(media.problem) == (filename != safe)


def test_the_timeline_gets_a_few_kb_of_a_large_unknown_payload() -> None:
    raw = {"msgtype": "huge", "huge": {"blob": "x" * 50_000, "list": list(range(1000)),
                                       "keys": {str(i): i for i in range(500)}}}
    shown = content_for_timeline(Other("huge", raw, "not read"))
    assert len(json.dumps(shown, ensure_ascii=False).encode()) <= TIMELINE_BYTES
    assert shown["type"] == "other" and shown["msgtype"] == "huge" and shown["truncated"] is True
    small = Other("tiny", {"a": 1})
    assert content_for_timeline(small) == content_to_payload(small)  # small parts are shown whole


# --- the channels' parsers --------------------------------------------------------------------

@pytest.mark.parametrize("msgtype", list(KF_TYPES))
def test_every_kf_msgtype_becomes_a_message_with_its_content(msgtype: str) -> None:
    body, expected = KF_TYPES[msgtype]
    [event] = events_from_kf_messages([kf_item(msgtype, body)])
    assert (event.channel, event.kind, event.dedup_key, event.sender, event.account) == (
        "kf", "message", "kf:m1", "wm1", "wk")
    assert event.text == "" and event.content == expected and event.content_kind == expected.kind


def test_a_reps_non_text_message_in_the_workspace_is_a_rep_message() -> None:
    [event] = events_from_kf_messages([kf_item("image", {"media_id": "REP_IMG"}, origin=5)])
    assert (event.kind, event.extra, event.content) == ("rep_message", {"servicer": "rep_li"}, Media("image", "REP_IMG"))


@pytest.mark.parametrize(("item", "problem"), [
    (kf_item("note", {}), "kf msgtype 'note' is not one this version reads"),
    (kf_item("image", {}), "image without media_id"),
    ({**kf_item("video", {}), "video": "not an object"}, "the item has no 'video' object"),
    (kf_item("location", {"latitude": "abc", "longitude": 113.3, "name": "某地"}), "latitude 'abc' is not a number"),
    (kf_item("merged_msg", {"title": "t", "item": "not a list"}), "merged_msg.item is not a list"),
])
def test_kf_items_this_code_cannot_read_are_other_with_the_whole_item(item: dict[str, Any], problem: str) -> None:
    [event] = events_from_kf_messages([item])
    assert event.kind == "message" and event.content_kind == "other"
    assert isinstance(event.content, Other) and event.content.raw == item and problem in event.content.problem
    assert event.content.type == item["msgtype"]


def test_kf_events_and_system_items_are_read_as_before() -> None:
    events = events_from_kf_messages([
        {"msgid": "e1", "open_kfid": "wk", "origin": 4, "msgtype": "event", "event": {"event_type": "user_recall_msg"}},
        {"msgid": "s1", "open_kfid": "wk", "origin": 4, "msgtype": "image", "image": {"media_id": "M"}},
        {"msgid": "n1", "open_kfid": "wk", "origin": 3, "msgtype": "image", "image": {"media_id": "M"}},  # no customer
    ])
    assert events == []


@pytest.mark.parametrize("msg_type", list(OA_TYPES))
def test_every_oa_msgtype_becomes_a_message_with_its_content(msg_type: str) -> None:
    fields, expected = OA_TYPES[msg_type]
    event = oa_parse(msg_type, fields)
    assert (event.channel, event.kind, event.dedup_key, event.sender, event.account, event.text) == (
        "oa", "message", "oa:42", "oFan", "gh_oa", "")
    assert event.content == expected


def test_oa_voice_with_recognition_is_read_as_its_words_and_kept_as_voice() -> None:
    event = oa_parse("voice", {"MediaId": "OA_VOICE", "Format": "amr", "Recognition": "这个多少钱"})
    assert event.text == "这个多少钱" and event.content == Media("voice", "OA_VOICE", format="amr")


@pytest.mark.parametrize(("msg_type", "fields", "problem"), [
    ("hologram", {"Beam": "x"}, "OA MsgType 'hologram' is not one this version reads"),
    ("image", {"PicUrl": "http://p"}, "image without MediaId"),
    ("location", {"Location_X": "北纬23度", "Location_Y": 113.3, "Scale": 20, "Label": "某地"},
     "latitude '北纬23度' is not a number"),
    ("location", {"Location_X": 23.1, "Location_Y": 999, "Scale": 20, "Label": "某地"},
     "longitude 999.0 is outside -180..180"),
])
def test_oa_messages_this_code_cannot_read_are_other_with_every_field(msg_type: str, fields: dict[str, Any],
                                                                       problem: str) -> None:
    event = oa_parse(msg_type, fields)
    assert event.kind == "message" and isinstance(event.content, Other)
    assert event.content.type == msg_type and problem in event.content.problem
    assert event.content.raw["MsgType"] == msg_type and event.content.raw["MsgId"] == "42"


# --- end to end: signed callbacks and sync_msg pages, on SQLite and PostgreSQL -----------------

async def post_kf_notification(bot: Bot, token: str, times: int = 1) -> None:
    keys, corp = bot.settings.wecom.kf, bot.settings.wecom.corp_id
    signed = wechat_side.sign_wecom(keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(), corp,
                                    wechat_side.kf_notification_xml(corp, SANDBOX_KF_ACCOUNT, token))
    for _ in range(times):  # WeChat retries a callback it thinks was not answered
        response = await bot.client.post("/wecom/kf/callback", params=signed.query, data=signed.body)
        assert (response.status, await response.text()) == (200, "success")


async def post_oa(bot: Bot, openid: str, msg_type: str, fields: dict[str, Any], msg_id: int, times: int = 1) -> None:
    oa = bot.settings.oa
    xml = wechat_side.oa_message_xml(oa.app_id, openid, msg_type, fields, msg_id=msg_id)
    signed = wechat_side.sign_oa(oa.token.get_secret_value(), oa.encoding_aes_key.get_secret_value(), oa.app_id,
                                 xml, oa.mode)
    for _ in range(times):
        response = await bot.client.post("/oa/callback", params=signed.query, data=signed.body)
        assert (response.status, await response.text()) == (200, "success")


async def inbound_messages(bot: Bot, identity: str, user: str) -> list[dict[str, Any]]:
    """The `inbound.message` rows of the customer with this identity, oldest first."""
    async with bot.runtime.sessions() as session:
        rows = await session.scalars(
            select(TimelineEvent.data).join(Identity, Identity.customer_id == TimelineEvent.customer_id)
            .where(Identity.kind == identity, Identity.external_id == user, TimelineEvent.kind == "inbound.message")
            .order_by(TimelineEvent.id))
        return list(rows.all())


async def stored_contents(bot: Bot, prefix: str) -> dict[str, Content | None]:
    """The inbox's events (by sender) as the worker reads them back from their JSON payloads."""
    async with bot.runtime.sessions() as session:
        payloads = (await session.scalars(select(InboxItem.payload).where(InboxItem.dedup_key.like(f"{prefix}%")))).all()
    events = [InboundEvent.from_payload(payload) for payload in payloads]
    return {event.sender: event.content for event in events if event.kind == "message"}


async def unfinished(bot: Bot) -> int:
    async with bot.runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(InboxItem).where(InboxItem.status != "done"))
                   or 0)


async def test_every_kf_msgtype_is_stored_once_with_its_typed_content(bot: Bot) -> None:
    users = {msgtype: f"wmType_{msgtype}" for msgtype in [*KF_TYPES, "note"]}
    for msgtype, user in users.items():
        bot.fake.add_kf_media(SANDBOX_KF_ACCOUNT, user, msgtype, KF_TYPES[msgtype][0] if msgtype in KF_TYPES else {})
    await post_kf_notification(bot, "types1", times=2)
    await bot.drain()
    async with bot.runtime.sessions() as session, session.begin():  # the cursor is lost: the same page is read again
        await session.execute(update(KfCursor).where(KfCursor.open_kfid == SANDBOX_KF_ACCOUNT).values(cursor=""))
    await post_kf_notification(bot, "types2")
    await bot.drain()
    assert await unfinished(bot) == 0
    stored = await stored_contents(bot, "kf:")
    for msgtype, (_, expected) in KF_TYPES.items():
        [row] = await inbound_messages(bot, "wecom", users[msgtype])
        assert row["channel"] == "kf" and "text" not in row
        assert row["content"] == content_for_timeline(expected)
        assert stored[users[msgtype]] == expected
    [unknown] = await inbound_messages(bot, "wecom", users["note"])
    assert unknown["content"]["type"] == "other" and unknown["content"]["msgtype"] == "note"
    assert unknown["content"]["raw"]["note"] == {} and "not one this version reads" in unknown["content"]["problem"]
    assert bot.replies_to(users["note"]), "an unknown type is answered as the flows say"


async def test_every_oa_msgtype_is_answered_200_and_stored_once_with_its_typed_content(bot: Bot) -> None:
    types: dict[str, dict[str, Any]] = {**{name: fields for name, (fields, _) in OA_TYPES.items()},
                                        "hologram": {"Beam": "x"}}  # a MsgType this code does not know
    for index, (msg_type, fields) in enumerate(types.items()):
        await post_oa(bot, f"oType_{msg_type}", msg_type, fields, msg_id=7_000 + index, times=2)
    async with bot.runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(InboxItem)) == len(types)
    await bot.drain()
    assert await unfinished(bot) == 0
    stored = await stored_contents(bot, "oa:")
    for msg_type, (_, expected) in OA_TYPES.items():
        [row] = await inbound_messages(bot, "oa", f"oType_{msg_type}")
        assert row["content"] == content_for_timeline(expected) and stored[f"oType_{msg_type}"] == expected
    [unknown] = await inbound_messages(bot, "oa", "oType_hologram")
    assert (unknown["content"]["type"], unknown["content"]["msgtype"]) == ("other", "hologram")
    assert unknown["content"]["raw"]["Beam"] == "x"


async def test_oa_voice_with_recognition_reaches_the_price_flow(bot: Bot) -> None:
    bot.fake.oa_customer_acted("oVoice", "message")  # what WeChat grants after a follower's message
    await post_oa(bot, "oVoice", "voice", {"MediaId": "OA_VOICE", "Format": "amr", "Recognition": "这个多少钱"},
                  msg_id=8_001)
    await bot.drain()
    assert [reply.text for reply in bot.replies_to("oVoice")] == [ASK_PRODUCT]
    [row] = await inbound_messages(bot, "oa", "oVoice")
    assert row["text"] == "这个多少钱"
    assert row["content"] == content_to_payload(Media("voice", "OA_VOICE", format="amr"))


async def test_malformed_locations_are_recorded_and_answered_200(bot: Bot) -> None:
    bot.fake.add_kf_media(SANDBOX_KF_ACCOUNT, "wmLost", "location",
                          {"latitude": "abc", "longitude": 113.3, "name": "某地", "address": ""})
    await post_kf_notification(bot, "lost")
    await post_oa(bot, "oLost", "location", {"Location_X": 123.0, "Location_Y": 113.3, "Scale": 20, "Label": "某地"},
                  msg_id=8_002)
    await bot.drain()
    assert await unfinished(bot) == 0
    [kf_row] = await inbound_messages(bot, "wecom", "wmLost")
    [oa_row] = await inbound_messages(bot, "oa", "oLost")
    assert (kf_row["content"]["type"], kf_row["content"]["msgtype"]) == ("other", "location")
    assert kf_row["content"]["problem"] == "malformed location: latitude 'abc' is not a number"
    assert kf_row["content"]["raw"]["location"]["latitude"] == "abc"
    assert oa_row["content"]["problem"] == "malformed location: latitude 123.0 is outside -90..90"


async def test_a_file_name_with_path_separators_is_stored_as_data_only(bot: Bot) -> None:
    bot.fake.add_kf_media(SANDBOX_KF_ACCOUNT, "wmFile", "file", {"media_id": "MEDIA_FILE", "filename": "../../etc/passwd"})
    await post_kf_notification(bot, "file")
    await bot.drain()
    [row] = await inbound_messages(bot, "wecom", "wmFile")
    assert row["content"]["filename"] == "../../etc/passwd"
    assert "never used as a path" in row["content"]["problem"]
    media = (await stored_contents(bot, "kf:"))["wmFile"]
    assert isinstance(media, Media) and media.safe_filename == "passwd"


async def test_a_retried_oa_media_message_is_stored_once(bot: Bot) -> None:
    for _ in range(3):
        await post_oa(bot, "oRetry", "image", {"PicUrl": "http://p", "MediaId": "OA_IMAGE"}, msg_id=8_003)
    await bot.drain()
    assert len(await inbound_messages(bot, "oa", "oRetry")) == 1
