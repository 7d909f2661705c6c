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
            return []
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


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0
