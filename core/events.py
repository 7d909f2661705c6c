"""One normalised event for everything WeChat sends us, and the effects the bot answers with.

Channels turn their XML/JSON into `InboundEvent`; the conversation layer returns
`Effect`s; the worker turns effects into outbox rows for the channel that can deliver them.
A message that is not text (a photo, a location, a link…) carries its typed content part
(core/content.py) in `content`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from core.content import Content, ContentKind, MediaKind, content_from_payload, content_to_payload
from core.reply_address import Channel, ReplyAddress

# What happened, whatever the channel:
#   message        the customer wrote (text), clicked a kf menu item (menu_id set), or sent something
#                  else (content set, text empty, or an OA voice note's recognised words)
#   enter_session  a customer opened the kf chat (scene_param, welcome_code)
#   contact_added  a customer added a rep (state = channel code, welcome_code)
#   contact_edited / contact_removed (the customer deleted the rep) / contact_lost (the rep deleted the customer)
#   subscribe      OA follow (scene = qrscene code), scan (SCAN), unsubscribe, menu_click
#   kf_sync        a kf_msg_or_event notification: pull new messages for one kf account
#   timer          not from WeChat: a waiting conversation's timer fired (the waker)
#   rep_message    a rep wrote to the customer in the kf workspace (sync_msg origin 5; extra.servicer;
#                  content set when it was not text)
#   session_ended  the kf session was ended by the rep or by WeCom (session_status_change)
#   external       another system reported an event about the customer (channel api; sender is the
#                  customer id; extra: name, data): flows with an `external:` trigger start on it
#   stage_changed  another system moved the customer's stage (channel api; sender is the customer id):
#                  the turn follows the stage as it follows one a flow set
#   group_changed  a customer group (客户群) was created, changed or dismissed (change_external_chat;
#                  sender is the chat id; extra: change_type, update_detail, scenes, member versions):
#                  not a customer's turn, the group is read again in full
EventKind = Literal[
    "message",
    "enter_session",
    "contact_added",
    "contact_edited",
    "contact_removed",
    "contact_lost",
    "subscribe",
    "scan",
    "unsubscribe",
    "menu_click",
    "kf_sync",
    "timer",
    "rep_message",
    "session_ended",
    "external",
    "stage_changed",
    "group_changed",
    "other",
]

# Kinds by what they mean for a turn (one place, used by every stage and the handoff desk).
LEAVING: frozenset[str] = frozenset({"unsubscribe", "contact_removed", "contact_lost"})
ARRIVING: frozenset[str] = frozenset({"message", "enter_session", "contact_added", "subscribe", "scan", "menu_click"})
OUTSIDE_THE_CHAT: frozenset[str] = frozenset({"timer", "stage_changed"})  # the bot's timers, another system's moves


@dataclass(frozen=True)
class InboundEvent:
    """A customer's message or event, the same shape for kf, contacts, the app and the OA."""

    channel: Channel
    kind: EventKind
    dedup_key: str  # MsgId, or sender + CreateTime for events: a retry maps to the same key
    sender: str  # external_userid / openid / rep userid; the kf account for kf_sync
    account: str = ""  # open_kfid, the rep's userid (contacts), the OA's original id
    text: str = ""
    menu_id: str = ""
    scene: str = ""  # scene_param, State, or the qrscene_ code
    welcome_code: str = ""
    sync_token: str = ""  # kf_msg_or_event Token, valid 10 minutes for sync_msg
    created_at: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    content: Content | None = None  # what a non-text message carries; None for text and events

    @property
    def content_kind(self) -> ContentKind | Literal["text"]:
        """The content part's kind (image, location, other…), or "text" for a message without one."""
        return "text" if self.content is None else self.content.kind

    @property
    def identity_kind(self) -> str:
        return "oa" if self.channel == "oa" else "wecom"

    @property
    def reply_address(self) -> ReplyAddress:
        return ReplyAddress(self.channel, self.sender, self.account)

    @property
    def queue_key(self) -> str:
        """Items with the same key are processed one at a time, in arrival order."""
        if self.kind == "kf_sync":
            return f"kf-account:{self.account}"
        if self.kind == "group_changed":  # one group's changes in order, whoever's they are
            return f"groupchat:{self.sender}"
        if self.channel == "api":
            return f"customer:{self.sender}"
        return f"{self.identity_kind}:{self.sender}"

    def to_payload(self) -> dict[str, Any]:
        """JSON for the inbox; the content part as its tagged dict, left out when there is none
        (a text event's payload is what it always was)."""
        payload = {**self.__dict__, "extra": dict(self.extra)}
        if self.content is None:
            del payload["content"]
        else:
            payload["content"] = content_to_payload(self.content)
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> InboundEvent:
        content = payload.get("content")
        return cls(**{**payload, "content": content_from_payload(content) if content else None})


@dataclass(frozen=True)
class MenuItem:
    id: str
    text: str


@dataclass(frozen=True)
class LinkCard:
    title: str
    url: str
    desc: str = ""


@dataclass(frozen=True)
class MiniProgramCard:
    appid: str
    pagepath: str
    title: str
    thumb_media_id: str = ""


@dataclass(frozen=True)
class MediaAttachment:
    """An image, file, voice note or video to send, named by where its bytes are: a path relative to the
    flow directory, or an https URL. Not a media id: those last 3 days, so the sender uploads the bytes
    (media/upload) just before the call and the outbox row keeps only this source."""

    kind: MediaKind
    source: str


@dataclass(frozen=True)
class Reply:
    """Say something to the customer on the channel they used: text, with buttons, one card, or one media item.

    A reply with `media` is a message of its own (an image, a file…): never merged with texts."""

    text: str
    menu: tuple[MenuItem, ...] = ()
    menu_head: str = ""
    link: LinkCard | None = None
    miniprogram: MiniProgramCard | None = None
    media: MediaAttachment | None = None


@dataclass(frozen=True)
class Note:
    """Record something on the customer's timeline."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Notify:
    """Tell another customer (a group's members, an inviter) on the channel they last chatted on."""

    customer_id: int
    text: str
    reason: str = ""  # what the notification is about, for the timeline: group.filled, reward.granted…


@dataclass(frozen=True)
class ToRep:
    """A WeCom app message to a rep: a textcard when it has a title, plain text otherwise."""

    userid: str
    text: str
    title: str = ""
    url: str = ""


@dataclass(frozen=True)
class KfState:
    """Change a kf session's state (kf/service_state/trans): 3 hands it to `servicer`, 4 ends it.

    WeCom allows 3 → 3 (another rep) and 3 → 4 only, so the bot gets a customer back by
    ending the rep's session; their next message opens a new one, which the bot answers.
    """

    customer_id: int
    open_kfid: str
    external_userid: str
    state: int
    servicer: str = ""
    farewell: str = ""  # said with the msg_code the move returns (kf/send_msg_on_event): the API may not write otherwise


Effect = Reply | Note | Notify | ToRep | KfState
SideEffect = Notify | ToRep | KfState  # effects outside the customer's own turn: no reply to an event
