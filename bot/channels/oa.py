"""Official Account callbacks in plaintext, compatible and safe (encrypted) modes.

In plaintext mode only `signature` protects the body. In compatible and safe modes the
body carries <Encrypt>, signed by `msg_signature`; we always read the encrypted part when
it is there, so a compatible-mode body cannot be tampered with in its plaintext copy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from wechatpy.crypto import PrpCrypto, WeChatCrypto

from bot.channels.base import (
    CallbackRejected,
    Clock,
    MalformedCallback,
    check_signature,
    check_timestamp,
    parse_xml,
    required,
    text_of,
)
from core.content import Content, Link, Media, MediaKind, Other, location_or_other
from core.events import EventKind, InboundEvent

EVENT_KINDS: dict[str, EventKind] = {
    "subscribe": "subscribe",
    "unsubscribe": "unsubscribe",
    "scan": "scan",
    "click": "menu_click",
}


class OaCallback:
    def __init__(
        self,
        token: str,
        aes_key: str,
        app_id: str,
        mode: str,
        tolerance_s: int,
        clock: Clock = time.time,
    ) -> None:
        self.token = token
        self.mode = mode
        self.app_id = app_id
        self.crypto = WeChatCrypto(token, aes_key, app_id) if aes_key else None
        self.tolerance_s = tolerance_s
        self.clock = clock

    def verify_url(self, query: Mapping[str, str]) -> str:
        """The GET sent when the URL is saved: answer echostr as it came, if signed."""
        signature, timestamp, nonce, echostr = required(query, "signature", "timestamp", "nonce", "echostr")
        check_timestamp(timestamp, self.tolerance_s, self.clock)
        check_signature(signature, self.token, timestamp, nonce)
        return echostr

    def open(self, query: Mapping[str, str], body: bytes) -> dict[str, Any]:
        signature, timestamp, nonce = required(query, "signature", "timestamp", "nonce")
        check_timestamp(timestamp, self.tolerance_s, self.clock)
        check_signature(signature, self.token, timestamp, nonce)
        envelope = parse_xml(body)
        encrypted = text_of(envelope, "Encrypt")
        if self.mode == "plain":
            if encrypted:
                raise MalformedCallback("encrypted body, but oa.mode is plain")
            return envelope
        if not encrypted:
            if self.mode == "safe":
                raise CallbackRejected("safe mode needs an encrypted body")
            return envelope
        (msg_signature,) = required(query, "msg_signature")
        check_signature(msg_signature, self.token, timestamp, nonce, encrypted)
        return parse_xml(self._decrypt_text(encrypted))

    def _decrypt_text(self, encrypted: str) -> str:
        if self.crypto is None:
            raise CallbackRejected("encrypted body, but no oa.encoding_aes_key is configured")
        try:
            return PrpCrypto(self.crypto.key).decrypt(encrypted, self.app_id)
        except Exception:  # noqa: BLE001 - any failure to decrypt is the sender's fault
            raise CallbackRejected("cannot decrypt the message") from None

    def parse(self, message: Mapping[str, Any]) -> list[InboundEvent]:
        msg_type = text_of(message, "MsgType")
        openid = text_of(message, "FromUserName")
        if not msg_type or not openid:
            raise MalformedCallback("missing <MsgType> or <FromUserName>")
        created = text_of(message, "CreateTime")
        common = {"channel": "oa", "sender": openid, "account": text_of(message, "ToUserName")}
        if msg_type == "text":
            msg_id = text_of(message, "MsgId")
            return [
                InboundEvent(
                    kind="message",
                    dedup_key=f"oa:{msg_id}" if msg_id else f"oa:{openid}:{created}:text",
                    text=text_of(message, "Content"),
                    created_at=_int(created),
                    **common,  # type: ignore[arg-type]
                )
            ]
        if msg_type != "event":
            return [oa_content_event(msg_type, message, created, common)]
        event = text_of(message, "Event").lower()
        key = text_of(message, "EventKey")
        kind = EVENT_KINDS.get(event, "other")
        scene = key.removeprefix("qrscene_") if kind in ("subscribe", "scan") else ""
        return [
            InboundEvent(
                kind=kind,
                dedup_key=f"oa:{openid}:{created}:{event}",
                menu_id=key if kind == "menu_click" else "",
                scene=scene,
                created_at=_int(created),
                **common,  # type: ignore[arg-type]
            )
        ]


def oa_content_event(msg_type: str, message: Mapping[str, Any], created: str, common: dict[str, str]
                     ) -> InboundEvent:
    """A follower's message that is not text, deduplicated by MsgId as text is.

    A voice note with WeChat's speech recognition (<Recognition>) is read as its words, so NLU,
    flows, tag rules and search see them; the voice itself is kept as the content part."""
    msg_id = _field(message, "MsgId")
    content = oa_content(msg_type, message)
    words = _field(message, "Recognition").strip() if isinstance(content, Media) and content.kind == "voice" else ""
    return InboundEvent(
        kind="message",
        dedup_key=f"oa:{msg_id}" if msg_id else f"oa:{common['sender']}:{created}:{msg_type}",
        text=words,
        created_at=_int(created),
        content=content,
        **common,  # type: ignore[arg-type]
    )


def oa_content(msg_type: str, message: Mapping[str, Any]) -> Content:
    """The typed part of an OA message, by the fields of 接收普通消息
    (https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Receiving_standard_messages.html):
    image PicUrl, MediaId; voice MediaId, Format, Recognition; video and shortvideo MediaId,
    ThumbMediaId; location Location_X (latitude), Location_Y (longitude), Scale, Label; link
    Title, Description, Url. Any other MsgType, or a media message without MediaId, is Other
    with every field as received."""
    raw = dict(message)
    if msg_type == "location":
        return location_or_other(msg_type, raw, _field(message, "Location_X"), _field(message, "Location_Y"),
                                 _field(message, "Label"), scale=_int(_field(message, "Scale")))
    if msg_type == "link":
        return Link(_field(message, "Title"), _field(message, "Description"), _field(message, "Url"))
    if msg_type not in OA_MEDIA:
        return Other(msg_type, raw, f"OA MsgType {msg_type!r} is not one this version reads: stored as received")
    media_id = _field(message, "MediaId")
    if not media_id:
        return Other(msg_type, raw, f"{msg_type} without MediaId")
    return Media(
        kind=OA_MEDIA[msg_type],
        media_id=media_id,
        format=_field(message, "Format"),
        thumb_media_id=_field(message, "ThumbMediaId"),
        pic_url=_field(message, "PicUrl"),
        short=msg_type == "shortvideo",
    )


OA_MEDIA: dict[str, MediaKind] = {"image": "image", "voice": "voice", "video": "video", "shortvideo": "video"}


def _field(message: Mapping[str, Any], key: str) -> str:
    """A text field, "" when missing or not text: an odd shape is recorded, never a 400 to WeChat."""
    value = message.get(key)
    return value if isinstance(value, str) else ""


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0
