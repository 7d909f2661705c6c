"""WeChat's side of a callback: the XML WeCom and the OA send, signed and encrypted as they do it.

Used by the sandbox page, the tests and the ingest benchmark, so all three drive the
bot through exactly the path real WeChat traffic takes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from wechatpy.crypto import WeChatCrypto as OaCrypto
from wechatpy.work.crypto import WeChatCrypto as WecomCrypto

from bot.channels.base import sha1_signature

__all__ = ["SignedCallback", "sha1_signature"]


@dataclass(frozen=True)
class SignedCallback:
    query: dict[str, str]
    body: bytes


def _xml(fields: dict[str, str | int]) -> str:
    parts = []
    for key, value in fields.items():
        text = str(value) if isinstance(value, int) else _cdata(value)
        parts.append(f"<{key}>{text}</{key}>")
    return "<xml>" + "".join(parts) + "</xml>"


def kf_notification_xml(corp_id: str, open_kfid: str, token: str, created: int | None = None) -> str:
    return _xml(
        {
            "ToUserName": corp_id,
            "CreateTime": created or int(time.time()),
            "MsgType": "event",
            "Event": "kf_msg_or_event",
            "Token": token,
            "OpenKfId": open_kfid,
        }
    )


def contact_event_xml(
    corp_id: str, change: str, rep: str, external_userid: str, state: str = "", welcome_code: str = ""
) -> str:
    fields: dict[str, str | int] = {
        "ToUserName": corp_id,
        "FromUserName": "sys",
        "CreateTime": int(time.time()),
        "MsgType": "event",
        "Event": "change_external_contact",
        "ChangeType": change,
        "UserID": rep,
        "ExternalUserID": external_userid,
    }
    if state:
        fields["State"] = state
    if welcome_code:
        fields["WelcomeCode"] = welcome_code
    return _xml(fields)


def external_chat_xml(
    corp_id: str, chat_id: str, change_type: str, update_detail: str = "", join_scene: int | None = None,
    quit_scene: int | None = None, members: Sequence[str] = (), last_mem_ver: str = "", cur_mem_ver: str = "",
    created: int | None = None,
) -> str:
    """客户群变更事件 as WeCom posts it (https://developer.work.weixin.qq.com/document/path/92130): ChangeType create,
    update (UpdateDetail add_member, del_member, change_owner, change_name, change_notice) or dismiss. JoinScene
    (0 invited by a member, 3 by QR code) only for add_member, QuitScene (0 left, 1 removed by the owner or an
    admin) only for del_member; MemChangeCnt, MemChangeList (one <Item> per userid), LastMemVer and CurMemVer
    when members changed."""
    fields: dict[str, str | int] = {
        "ToUserName": corp_id,
        "FromUserName": "sys",
        "CreateTime": created or int(time.time()),
        "MsgType": "event",
        "Event": "change_external_chat",
        "ChatId": chat_id,
        "ChangeType": change_type,
    }
    if update_detail:
        fields["UpdateDetail"] = update_detail
    if join_scene is not None:
        fields["JoinScene"] = join_scene
    if quit_scene is not None:
        fields["QuitScene"] = quit_scene
    if members:
        fields["MemChangeCnt"] = len(members)
    xml = _xml(fields)
    if members:
        items = "".join(f"<Item>{_cdata(userid)}</Item>" for userid in members)
        xml = xml.removesuffix("</xml>") + f"<MemChangeList>{items}</MemChangeList></xml>"
    versions: dict[str, str | int] = {key: value for key, value in (("LastMemVer", last_mem_ver), ("CurMemVer", cur_mem_ver)) if value}
    return xml.removesuffix("</xml>") + _xml(versions).removeprefix("<xml>") if versions else xml


def app_text_xml(corp_id: str, userid: str, text: str, agent_id: int, msg_id: int | None = None) -> str:
    """A rep's text message in the self-built app, as WeCom posts it to the app's callback URL."""
    return _xml(
        {
            "ToUserName": corp_id,
            "FromUserName": userid,
            "CreateTime": int(time.time()),
            "MsgType": "text",
            "Content": text,
            "MsgId": msg_id if msg_id is not None else secrets.randbits(62),
            "AgentID": agent_id,
        }
    )


def oa_text_xml(oa_id: str, openid: str, text: str, msg_id: int | None = None) -> str:
    return _xml(
        {
            "ToUserName": oa_id,
            "FromUserName": openid,
            "CreateTime": int(time.time()),
            "MsgType": "text",
            "Content": text,
            "MsgId": msg_id if msg_id is not None else secrets.randbits(62),
        }
    )


def oa_message_xml(oa_id: str, openid: str, msg_type: str, fields: dict[str, str | int | float],
                   msg_id: int | None = None, created: int | None = None) -> str:
    """Any OA message a follower sends, with the fields of 接收普通消息 in the order given
    (https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Receiving_standard_messages.html):
    image PicUrl, MediaId; voice MediaId, Format (and Recognition when speech recognition is on);
    video / shortvideo MediaId, ThumbMediaId; location Location_X, Location_Y, Scale, Label;
    link Title, Description, Url. Numbers are written bare, text as CDATA, as WeChat does."""
    head: dict[str, str | int | float] = {
        "ToUserName": oa_id,
        "FromUserName": openid,
        "CreateTime": created or int(time.time()),
        "MsgType": msg_type,
    }
    tail = {"MsgId": msg_id if msg_id is not None else secrets.randbits(62)}
    parts = []
    for key, value in {**head, **fields, **tail}.items():
        text = str(value) if isinstance(value, int | float) else _cdata(value)
        parts.append(f"<{key}>{text}</{key}>")
    return "<xml>" + "".join(parts) + "</xml>"


def _cdata(value: str) -> str:
    """Text in CDATA as it is (no entities: they would be read literally), a "]]>" split across two sections."""
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def oa_event_xml(oa_id: str, openid: str, event: str, key: str = "", created: int | None = None) -> str:
    fields: dict[str, str | int] = {
        "ToUserName": oa_id,
        "FromUserName": openid,
        "CreateTime": created or int(time.time()),
        "MsgType": "event",
        "Event": event,
    }
    if key:
        fields["EventKey"] = key
    return _xml(fields)


def sign_wecom(token: str, aes_key: str, corp_id: str, xml: str, timestamp: int | None = None) -> SignedCallback:
    """Encrypt and sign as WeCom does: msg_signature over token, timestamp, nonce and the ciphertext."""
    nonce = secrets.token_hex(8)
    stamp = str(timestamp or int(time.time()))
    envelope = WecomCrypto(token, aes_key, corp_id).encrypt_message(xml, nonce, stamp)
    signature = _envelope_signature(envelope)
    return SignedCallback({"msg_signature": signature, "timestamp": stamp, "nonce": nonce}, envelope.encode())


def sign_oa(
    token: str, aes_key: str, app_id: str, xml: str, mode: str = "safe", timestamp: int | None = None
) -> SignedCallback:
    """As the OA sends it in plaintext, compatible or safe mode."""
    nonce = secrets.token_hex(8)
    stamp = str(timestamp or int(time.time()))
    query = {"signature": sha1_signature(token, stamp, nonce), "timestamp": stamp, "nonce": nonce}
    if mode == "plain":
        return SignedCallback(query, xml.encode())
    envelope = OaCrypto(token, aes_key, app_id).encrypt_message(xml, nonce, stamp)
    query.update({"encrypt_type": "aes", "msg_signature": _envelope_signature(envelope)})
    if mode == "compat":
        envelope = envelope.replace("</xml>", xml.removeprefix("<xml>"))
    return SignedCallback(query, envelope.encode())


def _envelope_signature(envelope: str) -> str:
    start = envelope.index("<MsgSignature><![CDATA[") + len("<MsgSignature><![CDATA[")
    return envelope[start : envelope.index("]]>", start)]
