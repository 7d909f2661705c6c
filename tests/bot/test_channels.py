"""Callback crypto and parsing, including WeCom's published sample vectors."""

from __future__ import annotations

import time

import pytest

from bot.channels.base import CallbackRejected, MalformedCallback
from bot.channels.oa import OaCallback
from bot.channels.wecom import WecomCallback, events_from_kf_messages
from bot.sandbox import wechat_side

# WeCom's published sample (WXBizMsgCrypt): token, EncodingAESKey, corp id and two requests.
SAMPLE_TOKEN = "QDG6eK"
SAMPLE_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
SAMPLE_CORP = "wx5823bf96d3bd56c7"
SAMPLE_VERIFY = {
    "msg_signature": "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
    "timestamp": "1409659589",
    "nonce": "263014780",
    "echostr": "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
}
SAMPLE_POST_QUERY = {"msg_signature": "477715d11cdb4164915debcba66cb864d751f3e6", "timestamp": "1409659813",
                     "nonce": "1372623149"}
SAMPLE_POST_BODY = (
    b"<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo"
    b"+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpG"
    b"LYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1"
    b"s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH"
    b"27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]>"
    b"</Encrypt><AgentID><![CDATA[218]]></AgentID></xml>"
)

TOKEN, KEY, CORP = "tok", "sandboxkfaeskey0000000000000000000000000000", "wwcorp"


def sample_channel(tolerance_s: int = 0) -> WecomCallback:
    return WecomCallback("app", SAMPLE_TOKEN, SAMPLE_KEY, SAMPLE_CORP, tolerance_s)


def test_published_vector_url_verification() -> None:
    assert sample_channel().verify_url(SAMPLE_VERIFY) == "1616140317555161061"


def test_published_vector_message_decrypts() -> None:
    channel = sample_channel()
    message = channel.open(SAMPLE_POST_QUERY, SAMPLE_POST_BODY)
    assert message["ToUserName"] == SAMPLE_CORP
    assert message["MsgType"] == "text"
    [event] = channel.parse(message)
    assert event.channel == "app" and event.kind == "message" and event.text == message["Content"]


def test_published_vector_is_stale_with_the_default_tolerance() -> None:
    with pytest.raises(CallbackRejected, match="timestamp"):
        sample_channel(tolerance_s=300).verify_url(SAMPLE_VERIFY)


def test_tampered_signature_is_rejected() -> None:
    with pytest.raises(CallbackRejected, match="signature"):
        sample_channel().open({**SAMPLE_POST_QUERY, "nonce": "1"}, SAMPLE_POST_BODY)


def test_wrong_corp_id_cannot_decrypt() -> None:
    channel = WecomCallback("app", SAMPLE_TOKEN, SAMPLE_KEY, "wwOtherCorp", 0)
    with pytest.raises(CallbackRejected, match="decrypt"):
        channel.open(SAMPLE_POST_QUERY, SAMPLE_POST_BODY)


@pytest.mark.parametrize("body", [b"", b"not xml", b"<xml><Encrypt>", b"<other/>", b"<xml></xml>"])
def test_malformed_bodies(body: bytes) -> None:
    query = {"msg_signature": "x", "timestamp": str(int(time.time())), "nonce": "n"}
    with pytest.raises(MalformedCallback):
        WecomCallback("kf", TOKEN, KEY, CORP, 300).open(query, body)


def test_entities_are_refused() -> None:
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><xml><Encrypt>&a;</Encrypt></xml>'
    query = {"msg_signature": "x", "timestamp": str(int(time.time())), "nonce": "n"}
    with pytest.raises((MalformedCallback, CallbackRejected)):
        WecomCallback("kf", TOKEN, KEY, CORP, 300).open(query, bomb)


def test_kf_notification_round_trip() -> None:
    xml = wechat_side.kf_notification_xml(CORP, "wkAAA", "synctoken", created=1700000000)
    signed = wechat_side.sign_wecom(TOKEN, KEY, CORP, xml)
    channel = WecomCallback("kf", TOKEN, KEY, CORP, 300)
    [event] = channel.parse(channel.open(signed.query, signed.body))
    assert (event.kind, event.account, event.sync_token) == ("kf_sync", "wkAAA", "synctoken")
    assert event.queue_key == "kf-account:wkAAA"
    assert xml.startswith("<xml>")


def test_contact_added_carries_state_and_welcome_code() -> None:
    xml = wechat_side.contact_event_xml(CORP, "add_external_contact", "rep1", "wmCust", "inv_ABC", "WCODE")
    signed = wechat_side.sign_wecom(TOKEN, KEY, CORP, xml)
    channel = WecomCallback("contacts", TOKEN, KEY, CORP, 300)
    [event] = channel.parse(channel.open(signed.query, signed.body))
    assert (event.kind, event.sender, event.account, event.scene, event.welcome_code) == (
        "contact_added", "wmCust", "rep1", "inv_ABC", "WCODE")


@pytest.mark.parametrize(("change", "kind"), [("edit_external_contact", "contact_edited"),
                                              ("del_external_contact", "contact_lost"),
                                              ("del_follow_user", "contact_removed")])
def test_contact_changes(change: str, kind: str) -> None:
    signed = wechat_side.sign_wecom(TOKEN, KEY, CORP, wechat_side.contact_event_xml(CORP, change, "rep1", "wm1"))
    channel = WecomCallback("contacts", TOKEN, KEY, CORP, 300)
    assert channel.parse(channel.open(signed.query, signed.body))[0].kind == kind


def test_kf_sync_messages_become_events() -> None:
    events = events_from_kf_messages([
        {"msgid": "m1", "open_kfid": "wk", "external_userid": "wm1", "send_time": 1, "origin": 3, "msgtype": "text",
         "text": {"content": "你好"}},
        {"msgid": "m2", "open_kfid": "wk", "external_userid": "wm1", "send_time": 2, "origin": 3, "msgtype": "text",
         "text": {"content": "问价格", "menu_id": "price"}},
        {"msgid": "m3", "open_kfid": "wk", "send_time": 3, "origin": 4, "msgtype": "event",
         "event": {"event_type": "enter_session", "open_kfid": "wk", "external_userid": "wm2",
                   "scene_param": "inv_X", "welcome_code": "W1"}},
        {"msgid": "m4", "open_kfid": "wk", "external_userid": "wm1", "send_time": 4, "origin": 5, "msgtype": "text",
         "servicer_userid": "rep", "text": {"content": "a rep's answer in the kf workspace"}},
        {"msgid": "m5", "open_kfid": "wk", "send_time": 5, "origin": 4, "msgtype": "event",
         "event": {"event_type": "session_status_change", "open_kfid": "wk", "external_userid": "wm1",
                   "change_type": 3, "old_servicer_userid": "rep"}},
        {"msgid": "m6", "open_kfid": "wk", "send_time": 6, "origin": 4, "msgtype": "event",
         "event": {"event_type": "session_status_change", "open_kfid": "wk", "external_userid": "wm1",
                   "change_type": 2, "new_servicer_userid": "rep2"}},  # a transfer between reps: nothing to do
    ])
    assert [(e.kind, e.dedup_key, e.text, e.menu_id, e.scene) for e in events] == [
        ("message", "kf:m1", "你好", "", ""),
        ("message", "kf:m2", "问价格", "price", ""),
        ("enter_session", "kf:m3", "", "", "inv_X"),
        ("rep_message", "kf:m4", "a rep's answer in the kf workspace", "", ""),
        ("session_ended", "kf:m5", "", "", ""),
    ]
    assert events[3].extra == {"servicer": "rep"} and events[4].sender == "wm1"


OA_KEY = "sandboxoaaeskey0000000000000000000000000000"


@pytest.mark.parametrize("mode", ["plain", "compat", "safe"])
def test_oa_modes_round_trip(mode: str) -> None:
    xml = wechat_side.oa_text_xml("gh_oa", "openid1", "多少钱", msg_id=42)
    signed = wechat_side.sign_oa(TOKEN, OA_KEY, "wxapp", xml, mode)
    channel = OaCallback(TOKEN, OA_KEY, "wxapp", mode, 300)
    [event] = channel.parse(channel.open(signed.query, signed.body))
    assert (event.kind, event.sender, event.text, event.dedup_key) == ("message", "openid1", "多少钱", "oa:42")


def test_oa_safe_mode_refuses_plaintext() -> None:
    signed = wechat_side.sign_oa(TOKEN, OA_KEY, "wxapp", wechat_side.oa_text_xml("gh", "o1", "hi"), "plain")
    with pytest.raises(CallbackRejected):
        OaCallback(TOKEN, OA_KEY, "wxapp", "safe", 300).open(signed.query, signed.body)


def test_oa_compat_reads_the_signed_part_not_the_plaintext_copy() -> None:
    signed = wechat_side.sign_oa(TOKEN, OA_KEY, "wxapp", wechat_side.oa_text_xml("gh", "o1", "真的"), "compat")
    tampered = signed.body.replace("真的".encode(), "假的".encode())
    channel = OaCallback(TOKEN, OA_KEY, "wxapp", "compat", 300)
    assert channel.parse(channel.open(signed.query, tampered))[0].text == "真的"


@pytest.mark.parametrize(("event", "key", "kind", "scene"), [
    ("subscribe", "qrscene_inv_ABC", "subscribe", "inv_ABC"),
    ("subscribe", "", "subscribe", ""),
    ("SCAN", "inv_ABC", "scan", "inv_ABC"),
    ("unsubscribe", "", "unsubscribe", ""),
    ("CLICK", "menu_price", "menu_click", ""),
])
def test_oa_events(event: str, key: str, kind: str, scene: str) -> None:
    signed = wechat_side.sign_oa(TOKEN, OA_KEY, "wxapp", wechat_side.oa_event_xml("gh", "o1", event, key), "safe")
    channel = OaCallback(TOKEN, OA_KEY, "wxapp", "safe", 300)
    [parsed] = channel.parse(channel.open(signed.query, signed.body))
    assert (parsed.kind, parsed.scene) == (kind, scene)
    if kind == "menu_click":
        assert parsed.menu_id == key


def test_oa_url_verification_returns_echostr() -> None:
    stamp = str(int(time.time()))
    query = {"signature": wechat_side.sha1_signature(TOKEN, stamp, "n"), "timestamp": stamp, "nonce": "n",
             "echostr": "echo123"}
    assert OaCallback(TOKEN, OA_KEY, "wxapp", "safe", 300).verify_url(query) == "echo123"
