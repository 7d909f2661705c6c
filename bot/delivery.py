"""Delivery decisions, in one place: which API call carries an effect, under which queue key, in which
outbox row (written in the turn's transaction; the sender makes the calls).

Which call depends on where the customer is: a kf chat (`kf/send_msg`, or
`kf/send_msg_on_event` with the single-use welcome code), a new WeCom contact
(`externalcontact/send_welcome_msg` inside the WelcomeCode's 20 s), the Official
Account (`message/custom/send`), or a rep in the self-built app (`message/send`). Media go by
their source, and the sender uploads them just before the call (the `MEDIA` payload key).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.quota import as_oa_text
from core.events import InboundEvent, KfState, MediaAttachment, Reply, ToRep
from core.reply_address import ReplyAddress
from crm_store.models import Customer, Lane, OutboxItem

# kind -> (credential name, API path, safe to resend after a crash mid-send)
OUTBOX_KINDS: dict[str, tuple[str, str, bool]] = {
    "kf.send_msg": ("wecom.kf", "kf/send_msg", True),  # idempotent by msgid
    "kf.send_msg_on_event": ("wecom.kf", "kf/send_msg_on_event", True),  # the code is single-use
    "contacts.send_welcome_msg": ("wecom.contacts", "externalcontact/send_welcome_msg", True),
    "contacts.mark_tag": ("wecom.contacts", "externalcontact/mark_tag", True),  # sets tags: repeatable
    "oa.custom_send": ("oa", "message/custom/send", False),  # no idempotency key: never resent blindly
    "app.message_send": ("wecom.app", "message/send", True),  # enable_duplicate_check
    "kf.service_state_trans": ("wecom.kf", "kf/service_state/trans", True),  # the same move twice is harmless
    "contacts.transfer_resigned": ("wecom.contacts", "externalcontact/resigned/transfer_customer", True),  # 离职继承
    "contacts.add_msg_template": ("wecom.contacts", "externalcontact/add_msg_template", False),  # a rep's 群发 task
}


@dataclass(frozen=True)
class OutboundCall:
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Welcome:
    """A single-use welcome code (kf enter_session, a new contact) and when it expires (0: not known)."""

    code: str
    send_by: int = 0


def reply_call(to: ReplyAddress, reply: Reply, agent_id: int = 0, welcome: Welcome | None = None
               ) -> OutboundCall | None:
    """The API call that says `reply` to `to`; None when no channel can carry it now."""
    if reply.media is not None:
        return _media_call(to, reply.media)
    if to.channel == "kf":
        content = _kf_content(reply)
        if welcome is not None:
            return OutboundCall("kf.send_msg_on_event", {"code": welcome.code, **content, **_send_by(welcome)})
        return OutboundCall("kf.send_msg", {"touser": to.user, "open_kfid": to.account, **content})
    if to.channel == "contacts":
        if welcome is not None:
            return OutboundCall(
                "contacts.send_welcome_msg",
                {"welcome_code": welcome.code, "text": {"content": reply.text}, **_send_by(welcome)},
            )
        return None
    if to.channel == "oa":
        return OutboundCall("oa.custom_send", {"touser": to.user, **_oa_content(reply)})
    return OutboundCall(
        "app.message_send",
        {
            "touser": to.user,
            "agentid": agent_id,
            "msgtype": "text",
            "text": {"content": reply.text},
            "enable_duplicate_check": 1,
            "duplicate_check_interval": 1800,
        },
    )


MEDIA = "_media"  # a payload key the sender's prepare removes: what to upload for the message's media_id
OA_MEDIA = frozenset({"image", "voice", "video"})  # message/custom/send has no file message


def _media_call(to: ReplyAddress, media: MediaAttachment) -> OutboundCall | None:
    """An image, file, voice note or video: kf/send_msg, or the OA's custom send (not a file: it has none).

    The row keeps the source (a flow directory path or an https URL); the sender uploads it and fills in
    `media_id` just before the call (bot/media_uploads.py), since an uploaded id lasts only 3 days."""
    part: dict[str, Any] = {"msgtype": media.kind, media.kind: {"media_id": ""}, MEDIA: {"source": media.source}}
    if to.channel == "kf":
        return OutboundCall("kf.send_msg", {"touser": to.user, "open_kfid": to.account, **part})
    if to.channel == "oa" and media.kind in OA_MEDIA:
        return OutboundCall("oa.custom_send", {"touser": to.user, **part})
    return None  # a WeCom contact (only a rep's messages reach them) or a file on the OA: recorded as undeliverable


def rep_media_call(userid: str, agent_id: int, msgtype: str, key: str, filename: str) -> OutboundCall:
    """A stored item (crm_store/media_store.py `key`) to a rep in the self-built app, as an image or a file;
    uploaded with the app's credential by the sender, just before the call."""
    return OutboundCall("app.message_send", {
        "touser": userid, "agentid": agent_id, "msgtype": msgtype, msgtype: {"media_id": ""},
        MEDIA: {"key": key, "filename": filename}, "enable_duplicate_check": 1, "duplicate_check_interval": 1800})


def welcome_of(event: InboundEvent) -> Welcome | None:
    """The event's welcome code, valid 20 s after the event: the first reply may use it."""
    if not event.welcome_code:
        return None
    return Welcome(event.welcome_code, event.created_at + WELCOME_CODE_TTL_S if event.created_at else 0)


WELCOME_CODE_TTL_S = 20  # kf and contact welcome codes are valid 20 s after the event
WELCOME_KINDS = frozenset({"kf.send_msg_on_event", "contacts.send_welcome_msg"})  # calls that use up the code
SEND_BY = "_send_by"  # a payload key the sender honours and removes: past it, the call is pointless


def _send_by(welcome: Welcome) -> dict[str, int]:
    return {SEND_BY: welcome.send_by} if welcome.send_by else {}


def too_late(payload: dict[str, Any], now: float | None = None) -> tuple[bool, dict[str, Any]]:
    """Is the call past its deadline? And the payload without the deadline, as the API wants it."""
    if SEND_BY not in payload:
        return False, payload
    body = {key: value for key, value in payload.items() if key != SEND_BY}
    return (now if now is not None else time.time()) > float(payload[SEND_BY]), body


# Customer actions after which kf and the OA let us write to the customer for 48 hours.
REACHABLE_AFTER = frozenset({"message", "menu_click", "enter_session", "subscribe", "scan"})
SERVICE_WINDOW_S = 48 * 3600


def notify_call(reach: Mapping[str, Any] | None, text: str, agent_id: int = 0, now: float | None = None
                ) -> tuple[OutboundCall | None, str]:
    """The call that tells a customer something unprompted, at `reach` (the customer's last chat, with
    its time `at`), or None and why the platform won't allow it."""
    address = ReplyAddress.from_data(reach)
    if address is None or address.channel not in ("kf", "oa") or reach is None:
        return None, "no chat the bot may write to (a WeCom contact needs a rep's group message)"
    age = (now if now is not None else time.time()) - float(reach.get("at", 0))
    if age > SERVICE_WINDOW_S:
        return None, f"the {address.channel} 48-hour service window closed {int((age - SERVICE_WINDOW_S) / 3600)} h ago"
    return reply_call(address, Reply(text), agent_id), ""


def rep_call(message: ToRep, agent_id: int) -> OutboundCall:
    """A textcard (description at most 512 bytes, WeCom's limit) or a text to a rep in the self-built app."""
    body: dict[str, Any] = {"touser": message.userid, "agentid": agent_id, "enable_duplicate_check": 1,
                            "duplicate_check_interval": 1800}
    if message.title:
        card = {"title": message.title[:128], "description": _clip_bytes(message.text, 512),
                "url": message.url or "https://work.weixin.qq.com", "btntxt": "详情"}
        return OutboundCall("app.message_send", {**body, "msgtype": "textcard", "textcard": card})
    return OutboundCall("app.message_send", {**body, "msgtype": "text", "text": {"content": message.text}})


def kf_state_call(move: KfState) -> OutboundCall:
    body: dict[str, Any] = {"open_kfid": move.open_kfid, "external_userid": move.external_userid,
                            "service_state": move.state}
    if move.servicer:
        body["servicer_userid"] = move.servicer
    if move.farewell:
        body[FAREWELL] = move.farewell
    return OutboundCall("kf.service_state_trans", body)


FAREWELL = "_farewell"  # a payload key the sender removes: text to send with the move's msg_code
SAME_STATE = 95016  # kf/service_state/trans: a move WeCom does not allow, e.g. ending an ended session again


def follow_up(kind: str, payload: dict[str, Any], response: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A second call an outbox row makes after its first succeeded (same credential), as (path, body).

    A kf session move that ends a rep's session says its closing words with the msg_code it
    returns; a group-message task reminds its rep to confirm it (remind_groupmsg_send).
    """
    if kind == "kf.service_state_trans":
        text, code = str(payload.get(FAREWELL, "")), str(response.get("msg_code", ""))
        if text and code:
            return "kf/send_msg_on_event", {"code": code, "msgtype": "text", "text": {"content": text}}
    if kind == "contacts.add_msg_template" and response.get("msgid"):
        return "externalcontact/remind_groupmsg_send", {"msgid": response["msgid"]}
    return None


def _clip_bytes(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


def _kf_content(reply: Reply) -> dict[str, Any]:
    card = _card_content(reply)
    if card:
        return card
    if not reply.menu:
        return {"msgtype": "text", "text": {"content": reply.text}}
    return {
        "msgtype": "msgmenu",
        "msgmenu": {
            "head_content": reply.menu_head or reply.text,
            "list": [{"type": "click", "click": {"id": item.id, "content": item.text}} for item in reply.menu],
        },
    }


def _card_content(reply: Reply) -> dict[str, Any] | None:
    """kf cards need an uploaded thumbnail; without one, a link goes out as text with its URL."""
    if reply.link is not None:
        link = reply.link
        return {"msgtype": "text", "text": {"content": "\n".join(p for p in (link.title, link.desc, link.url) if p)}}
    card = reply.miniprogram
    if card is not None and card.thumb_media_id:
        return {"msgtype": "miniprogram", "miniprogram": {"appid": card.appid, "title": card.title,
                                                          "thumb_media_id": card.thumb_media_id,
                                                          "pagepath": card.pagepath}}
    if card is not None:
        return {"msgtype": "text", "text": {"content": card.title}}
    return None


def _oa_content(reply: Reply) -> dict[str, Any]:
    if reply.link is not None:
        article = {"title": reply.link.title, "description": reply.link.desc, "url": reply.link.url}
        return {"msgtype": "news", "news": {"articles": [article]}}
    card = reply.miniprogram
    if card is not None and card.thumb_media_id:
        return {"msgtype": "miniprogrampage", "miniprogrampage": {"title": card.title, "appid": card.appid,
                                                                  "pagepath": card.pagepath,
                                                                  "thumb_media_id": card.thumb_media_id}}
    return {"msgtype": "text", "text": {"content": as_oa_text(reply).text}}


# ---------------------------------------------------------------- outbox rows


def queue_call(session: AsyncSession, dedup_key: str, call: OutboundCall, customer_id: int | None = None,
               queue_key: str = "", *, lane: Lane) -> None:
    """The outbox row for `call`: sent once per `dedup_key`, one at a time per queue key (the customer's,
    unless another is named: a rep's), before the rows of later lanes (every caller names its lane: who
    goes in which is listed at crm_store/models.py `Lane`)."""
    session.add(OutboxItem(dedup_key=dedup_key, queue_key=queue_key or f"customer:{customer_id}", kind=call.kind,
                           payload=call.payload, customer_id=customer_id, lane=int(lane)))


def effect_key(origin_key: str, index: int) -> str:
    """The outbox row key of the `index`-th row a turn (or a wake-up, a rep's command) wrote."""
    return f"{origin_key}#{index}"


def remember_reach(customer: Customer, event: InboundEvent) -> None:
    """Where the customer last chatted, so others' actions (a filled group, a friend) can reach them."""
    if event.kind not in REACHABLE_AFTER or event.channel not in ("kf", "oa"):
        return
    now = int(time.time())
    reach = event.reply_address.to_data()
    previous = customer.reach or {}
    moved = any(previous.get(key) != value for key, value in reach.items())
    if moved or int(previous.get("at", 0)) < now - 60:  # the row is written at most once a minute
        customer.reach = {**reach, "at": now}


def with_idempotency_key(kind: str, payload: dict[str, Any], outbox_id: int) -> dict[str, Any]:
    """kf calls carry our outbox id as `msgid`, so a resend after a crash is not delivered twice."""
    if kind.startswith("kf."):
        return {**payload, "msgid": f"scrm{outbox_id}"}
    return payload
