"""WeCom callbacks (微信客服, 客户联系, the self-built app): verify, decrypt, parse.

Crypto is wechatpy's; this module adds the timestamp check and maps WeCom's XML onto
`InboundEvent`; `kf/sync_msg` items are read in bot/channels/kf_items.py.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from wechatpy.work.crypto import PrpCrypto, WeChatCrypto

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
from bot.channels.kf_items import events_from_kf_messages
from core.events import Channel, InboundEvent

__all__ = ["WecomCallback", "events_from_kf_messages"]

CONTACT_CHANGES = {
    "add_external_contact": "contact_added",
    "add_half_external_contact": "contact_added",
    "edit_external_contact": "contact_edited",
    "del_external_contact": "contact_lost",  # the rep deleted the customer
    "del_follow_user": "contact_removed",  # the customer deleted the rep
}


class WecomCallback:
    """One WeCom callback URL: its token and EncodingAESKey under the corp id."""

    def __init__(
        self, channel: Channel, token: str, aes_key: str, corp_id: str, tolerance_s: int, clock: Clock = time.time
    ) -> None:
        self.channel = channel
        self.crypto = WeChatCrypto(token, aes_key, corp_id)
        self.token = token
        self.tolerance_s = tolerance_s
        self.clock = clock

    def verify_url(self, query: Mapping[str, str]) -> str:
        """The GET that WeCom sends when the URL is saved: answer the decrypted echostr."""
        signature, timestamp, nonce, echostr = required(query, "msg_signature", "timestamp", "nonce", "echostr")
        check_timestamp(timestamp, self.tolerance_s, self.clock)
        check_signature(signature, self.token, timestamp, nonce, echostr)
        return self._decrypt_text(echostr)

    def open(self, query: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """Check the signature and timestamp, decrypt, and return the inner message."""
        signature, timestamp, nonce = required(query, "msg_signature", "timestamp", "nonce")
        check_timestamp(timestamp, self.tolerance_s, self.clock)
        envelope = parse_xml(body)
        encrypted = text_of(envelope, "Encrypt")
        if not encrypted:
            raise MalformedCallback("missing <Encrypt>")
        check_signature(signature, self.token, timestamp, nonce, encrypted)
        return parse_xml(self._decrypt_text(encrypted))

    def _decrypt_text(self, encrypted: str) -> str:
        try:
            return PrpCrypto(self.crypto.key).decrypt(encrypted, self.crypto.corp_id)
        except Exception:  # noqa: BLE001 - any failure to decrypt is the sender's fault
            raise CallbackRejected("cannot decrypt the message") from None

    def parse(self, message: Mapping[str, Any]) -> list[InboundEvent]:
        msg_type = text_of(message, "MsgType")
        event = text_of(message, "Event")
        if not msg_type:
            raise MalformedCallback("missing <MsgType>")
        if self.channel == "kf":
            return [kf_sync_event(message)] if event == "kf_msg_or_event" else []
        if self.channel == "contacts":
            if event == "change_external_chat":
                return [group_chat_event(message)]
            return [contact_event(message)] if event == "change_external_contact" else []
        return [app_event(message)]


def kf_sync_event(message: Mapping[str, Any]) -> InboundEvent:
    open_kfid = text_of(message, "OpenKfId")
    if not open_kfid:
        raise MalformedCallback("kf_msg_or_event without <OpenKfId>")
    created = text_of(message, "CreateTime")
    token = text_of(message, "Token")
    return InboundEvent(
        channel="kf",
        kind="kf_sync",
        dedup_key=f"kf-notify:{open_kfid}:{created}:{token}",
        sender=open_kfid,
        account=open_kfid,
        sync_token=token,
        created_at=_int(created),
    )


def contact_event(message: Mapping[str, Any]) -> InboundEvent:
    change = text_of(message, "ChangeType")
    external = text_of(message, "ExternalUserID")
    user = text_of(message, "UserID")
    created = text_of(message, "CreateTime")
    if not external:
        raise MalformedCallback("change_external_contact without <ExternalUserID>")
    return InboundEvent(
        channel="contacts",
        kind=CONTACT_CHANGES.get(change, "other"),  # type: ignore[arg-type]
        dedup_key=f"contacts:{external}:{user}:{change}:{created}",
        sender=external,
        account=user,
        scene=text_of(message, "State"),
        welcome_code=text_of(message, "WelcomeCode"),
        created_at=_int(created),
        extra={"change_type": change, "source": text_of(message, "Source")},
    )


def group_chat_event(message: Mapping[str, Any]) -> InboundEvent:
    """A customer group was created, changed or dismissed (https://developer.work.weixin.qq.com/document/path/92130).

    The event says what kind of change it was, not the group as it is now: the worker reads the
    group in full. The dedup key is what makes one change one item (a retry repeats every field);
    CurMemVer tells two joins of the same second apart.
    """
    chat_id = text_of(message, "ChatId")
    if not chat_id:
        raise MalformedCallback("change_external_chat without <ChatId>")
    change = text_of(message, "ChangeType")
    detail = text_of(message, "UpdateDetail")
    created = text_of(message, "CreateTime")
    current = text_of(message, "CurMemVer")
    extra: dict[str, Any] = {"change_type": change, "update_detail": detail,
                             "join_scene": _int(text_of(message, "JoinScene")),
                             "quit_scene": _int(text_of(message, "QuitScene")),
                             "mem_change_cnt": _int(text_of(message, "MemChangeCnt")),
                             "last_mem_ver": text_of(message, "LastMemVer"), "cur_mem_ver": current}
    return InboundEvent(
        channel="contacts",
        kind="group_changed",
        dedup_key=_bounded(f"groupchat:{chat_id}:{change}:{detail}:{created}:{current}"),
        sender=chat_id,
        created_at=_int(created),
        extra=extra,
    )


def _bounded(key: str, limit: int = 200) -> str:
    """The inbox's dedup key column holds 200 characters: a longer key keeps its head and a digest of the whole."""
    if len(key) <= limit:
        return key
    return f"{key[:limit - 41]}#{hashlib.sha1(key.encode()).hexdigest()}"


def app_event(message: Mapping[str, Any]) -> InboundEvent:
    """A message from a rep in the self-built app (commands: take, release, note)."""
    sender = text_of(message, "FromUserName")
    msg_id = text_of(message, "MsgId")
    created = text_of(message, "CreateTime")
    msg_type = text_of(message, "MsgType")
    return InboundEvent(
        channel="app",
        kind="message" if msg_type == "text" else "other",
        dedup_key=f"app:{msg_id}" if msg_id else f"app:{sender}:{created}:{text_of(message, 'Event')}",
        sender=sender,
        account=text_of(message, "AgentID"),
        text=text_of(message, "Content"),
        created_at=_int(created),
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
