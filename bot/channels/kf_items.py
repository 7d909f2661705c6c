"""`kf/sync_msg` items → `InboundEvent`: every message type a kf customer (or a rep in the workspace) sends.

Field names are WeCom's, from 微信客服 › 接收消息和事件 › 读取消息
(https://developer.work.weixin.qq.com/document/path/94670): each item has msgid, open_kfid,
external_userid, send_time, origin (3 the customer, 4 the system, 5 a rep in the kf workspace,
with servicer_userid) and msgtype, and the message itself under a key named after its msgtype:

    image / voice / video / file   {media_id}
    location                       {latitude, longitude, name, address}
    link                           {title, desc, url, pic_url}
    business_card                  {userid}
    miniprogram                    {title, appid, pagepath, thumb_media_id}
    channels_shop_product          {product_id, head_image, title, sales_price, shop_nickname, shop_head_image}
    channels_shop_order            {order_id, product_titles, price_wording, state, image_url, shop_nickname}
    merged_msg                     {title, item: [{send_time, msgtype, sender_name, msg_content}]}
    channels                       {sub_type, nickname, title}

A customer's item is a "message" whatever its type (the quota ledger and the handoff gate treat
it as one); a rep's is a "rep_message". A type this code does not know, or a body it cannot read,
becomes `Other` with the whole item: never dropped, never an exception that would stop a pull.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.content import (
    Card,
    Channels,
    Content,
    Link,
    Media,
    Merged,
    MergedItem,
    MiniProgram,
    Other,
    location_or_other,
)
from core.events import InboundEvent

SESSION_ENDED = 3  # session_status_change.change_type: the rep (or WeCom) ended the session
CUSTOMER, REP = 3, 5  # origin
KF_VOICE_FORMAT = "amr"  # sync_msg's voice_format 0, the default, which the puller does not change


def events_from_kf_messages(msg_list: list[dict[str, Any]]) -> list[InboundEvent]:
    """Customer messages and events from a `kf/sync_msg` page (origin 3 customer, 4 system, 5 a rep)."""
    events: list[InboundEvent] = []
    for item in msg_list:
        event = _kf_item(item)
        if event is not None:
            events.append(event)
    return events


def _kf_item(item: dict[str, Any]) -> InboundEvent | None:
    msgid = str(item.get("msgid", ""))
    open_kfid = str(item.get("open_kfid", ""))
    msgtype = item.get("msgtype")
    sent = _int(item.get("send_time"))
    if item.get("origin") == 3 and msgtype == "text" and item.get("external_userid"):
        text = item.get("text") or {}
        return InboundEvent(
            channel="kf",
            kind="message",
            dedup_key=f"kf:{msgid}",
            sender=str(item["external_userid"]),
            account=open_kfid,
            text=str(text.get("content", "")),
            menu_id=str(text.get("menu_id", "")),
            created_at=sent,
        )
    if item.get("origin") == 5 and msgtype == "text" and item.get("external_userid"):
        return InboundEvent(  # a rep answered in the kf workspace: it counts as the rep's response
            channel="kf",
            kind="rep_message",
            dedup_key=f"kf:{msgid}",
            sender=str(item["external_userid"]),
            account=open_kfid,
            text=str((item.get("text") or {}).get("content", "")),
            created_at=sent,
            extra={"servicer": str(item.get("servicer_userid", ""))},
        )
    if msgtype == "event":
        body = item.get("event") or {}
        if body.get("event_type") == "session_status_change" and body.get("change_type") == SESSION_ENDED:
            return InboundEvent(
                channel="kf",
                kind="session_ended",
                dedup_key=f"kf:{msgid}",
                sender=str(body.get("external_userid", "")),
                account=str(body.get("open_kfid", open_kfid)),
                created_at=sent,
                extra={"servicer": str(body.get("old_servicer_userid", ""))},
            )
        if body.get("event_type") == "enter_session" and body.get("external_userid"):
            return InboundEvent(
                channel="kf",
                kind="enter_session",
                dedup_key=f"kf:{msgid}",
                sender=str(body["external_userid"]),
                account=str(body.get("open_kfid", open_kfid)),
                scene=str(body.get("scene_param", "")),
                welcome_code=str(body.get("welcome_code", "")),
                created_at=sent,
                extra={"scene": str(body.get("scene", ""))},
            )
        return None
    if item.get("origin") in (CUSTOMER, REP) and item.get("external_userid"):
        return _content_item(item, str(msgtype or ""), msgid, open_kfid, sent)
    return None


def _content_item(item: dict[str, Any], msgtype: str, msgid: str, open_kfid: str, sent: int) -> InboundEvent:
    """A customer's or a rep's message that is not text: its typed content, text empty."""
    external = str(item["external_userid"])
    from_rep = item.get("origin") == REP
    return InboundEvent(
        channel="kf",
        kind="rep_message" if from_rep else "message",
        dedup_key=f"kf:{msgid}" if msgid else f"kf:{open_kfid}:{external}:{sent}:{msgtype}",
        sender=external,
        account=open_kfid,
        created_at=sent,
        extra={"servicer": str(item.get("servicer_userid", ""))} if from_rep else {},
        content=kf_content(msgtype, item),
    )


def kf_content(msgtype: str, item: dict[str, Any]) -> Content:
    """The typed part of one item; Other (with the whole item and why) when it cannot be read."""
    read = KF_READERS.get(msgtype)
    if read is None:
        return Other(msgtype, item, f"kf msgtype {msgtype!r} is not one this version reads: stored as received")
    body = item.get(msgtype)
    if not isinstance(body, dict):
        return Other(msgtype, item, f"the item has no {msgtype!r} object")
    try:
        return read(body, item)
    except (TypeError, ValueError, AttributeError) as exc:  # a shape WeCom's page does not describe
        return Other(msgtype, item, f"unreadable {msgtype}: {exc}")


def _media(kind: str) -> Callable[[dict[str, Any], dict[str, Any]], Content]:
    def read(body: dict[str, Any], item: dict[str, Any]) -> Content:
        media_id = _text(body, "media_id")
        if not media_id:
            return Other(kind, item, f"{kind} without media_id")
        return Media(
            kind=kind,  # type: ignore[arg-type]
            media_id=media_id,
            # sync_msg's file has media_id only; a name, should one come, is data (Media.safe_filename)
            filename=_text(body, "filename"),
            format=KF_VOICE_FORMAT if kind == "voice" else "",
        )
    return read


def _location(body: dict[str, Any], item: dict[str, Any]) -> Content:
    return location_or_other("location", item, body.get("latitude"), body.get("longitude"),
                             _text(body, "name"), _text(body, "address"))


def _link(body: dict[str, Any], _item: dict[str, Any]) -> Content:
    return Link(_text(body, "title"), _text(body, "desc"), _text(body, "url"), _text(body, "pic_url"))


def _card(body: dict[str, Any], _item: dict[str, Any]) -> Content:
    return Card(_text(body, "userid"))


def _miniprogram(body: dict[str, Any], _item: dict[str, Any]) -> Content:
    return MiniProgram(_text(body, "title"), _text(body, "appid"), _text(body, "pagepath"),
                       _text(body, "thumb_media_id"))


def _channels(body: dict[str, Any], _item: dict[str, Any]) -> Content:
    return Channels("channels", _text(body, "title"), nickname=_text(body, "nickname"),
                    sub_type=_int(body.get("sub_type")))


def _shop_product(body: dict[str, Any], _item: dict[str, Any]) -> Content:
    return Channels("channels_shop_product", _text(body, "title"), product_id=_text(body, "product_id"),
                    sales_price=_text(body, "sales_price"), head_image=_text(body, "head_image"),
                    shop_nickname=_text(body, "shop_nickname"), shop_head_image=_text(body, "shop_head_image"))


def _shop_order(body: dict[str, Any], _item: dict[str, Any]) -> Content:
    return Channels("channels_shop_order", _text(body, "product_titles"), order_id=_text(body, "order_id"),
                    price_wording=_text(body, "price_wording"), state=_text(body, "state"),
                    image_url=_text(body, "image_url"), shop_nickname=_text(body, "shop_nickname"))


def _merged(body: dict[str, Any], _item: dict[str, Any]) -> Content:
    items = body.get("item") or []
    if not isinstance(items, list):
        raise TypeError("merged_msg.item is not a list")
    return Merged(_text(body, "title"), tuple(
        MergedItem(_text(entry, "sender_name"), _text(entry, "msgtype"), _int(entry.get("send_time")),
                   _text(entry, "msg_content"))
        for entry in items if isinstance(entry, dict)
    ))


KF_READERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Content]] = {
    **{kind: _media(kind) for kind in ("image", "voice", "video", "file")},
    "location": _location,
    "link": _link,
    "business_card": _card,
    "miniprogram": _miniprogram,
    "channels": _channels,
    "channels_shop_product": _shop_product,
    "channels_shop_order": _shop_order,
    "merged_msg": _merged,
}


def _text(body: dict[str, Any], key: str) -> str:
    """A string field as text; a missing one is ""; a number is written out (WeCom is not always consistent)."""
    value = body.get(key)
    if value is None or isinstance(value, dict | list):
        return ""
    return str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
