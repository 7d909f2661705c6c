"""Turn the bot's replies into outbox rows for the API call that can deliver them.

Which call depends on where the customer is: a kf chat (`kf/send_msg`, or
`kf/send_msg_on_event` with the single-use welcome code), a new WeCom contact
(`externalcontact/send_welcome_msg` inside the WelcomeCode's 20 s), the Official
Account (`message/custom/send`), or a rep in the self-built app (`message/send`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bot.events import InboundEvent, KfState, Reply, ToRep

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


def reply_call(event: InboundEvent, reply: Reply, first: bool, agent_id: int = 0) -> OutboundCall | None:
    """The API call that answers `event` with `reply`; None when no channel can carry it now."""
    if event.channel == "kf":
        content = _kf_content(reply)
        if first and event.welcome_code:
            return OutboundCall("kf.send_msg_on_event", {"code": event.welcome_code, **content, **_send_by(event)})
        return OutboundCall("kf.send_msg", {"touser": event.sender, "open_kfid": event.account, **content})
    if event.channel == "contacts":
        if first and event.welcome_code:
            return OutboundCall(
                "contacts.send_welcome_msg",
                {"welcome_code": event.welcome_code, "text": {"content": reply.text}, **_send_by(event)},
            )
        return None
    if event.channel == "oa":
        return OutboundCall("oa.custom_send", {"touser": event.sender, **_oa_content(reply)})
    return OutboundCall(
        "app.message_send",
        {
            "touser": event.sender,
            "agentid": agent_id,
            "msgtype": "text",
            "text": {"content": reply.text},
            "enable_duplicate_check": 1,
            "duplicate_check_interval": 1800,
        },
    )


WELCOME_CODE_TTL_S = 20  # kf and contact welcome codes are valid 20 s after the event
SEND_BY = "_send_by"  # a payload key the sender honours and removes: past it, the call is pointless


def _send_by(event: InboundEvent) -> dict[str, int]:
    return {SEND_BY: event.created_at + WELCOME_CODE_TTL_S} if event.created_at else {}


def too_late(payload: dict[str, Any], now: float | None = None) -> tuple[bool, dict[str, Any]]:
    """Is the call past its deadline? And the payload without the deadline, as the API wants it."""
    if SEND_BY not in payload:
        return False, payload
    body = {key: value for key, value in payload.items() if key != SEND_BY}
    return (now if now is not None else time.time()) > float(payload[SEND_BY]), body


# Customer actions after which kf and the OA let us write to the customer for 48 hours.
REACHABLE_AFTER = frozenset({"message", "menu_click", "enter_session", "subscribe", "scan"})
SERVICE_WINDOW_S = 48 * 3600


def notify_call(reach: dict[str, Any], text: str, agent_id: int = 0, now: float | None = None
                ) -> tuple[OutboundCall | None, str]:
    """The call that tells a customer something unprompted, or None and why the platform won't allow it."""
    channel = reach.get("channel", "")
    if channel not in ("kf", "oa"):
        return None, "no chat the bot may write to (a WeCom contact needs a rep's group message)"
    age = (now if now is not None else time.time()) - float(reach.get("at", 0))
    if age > SERVICE_WINDOW_S:
        return None, f"the {channel} 48-hour service window closed {int((age - SERVICE_WINDOW_S) / 3600)} h ago"
    event = InboundEvent(channel=channel, kind="message", dedup_key="", sender=str(reach.get("sender", "")),
                         account=str(reach.get("account", "")))
    return reply_call(event, Reply(text), first=False, agent_id=agent_id), ""


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
    return {"msgtype": "text", "text": {"content": _oa_text(reply)}}


def _oa_text(reply: Reply) -> str:
    """The OA has no kf menus: list the choices as text the customer can type back."""
    if not reply.menu:
        return reply.text
    choices = "\n".join(f"{index}. {item.text}" for index, item in enumerate(reply.menu, start=1))
    return f"{reply.menu_head or reply.text}\n{choices}"


def with_idempotency_key(kind: str, payload: dict[str, Any], outbox_id: int) -> dict[str, Any]:
    """kf calls carry our outbox id as `msgid`, so a resend after a crash is not delivered twice."""
    if kind.startswith("kf."):
        return {**payload, "msgid": f"scrm{outbox_id}"}
    return payload
