"""A customer group as `externalcontact/groupchat/get` describes it (https://developer.work.weixin.qq.com/document/path/92122).

Typed, checked once where the API's answer comes in, so the store's code reads fields, not keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MEMBER_TYPE_REP = 1  # groupchat/get member type: a member of the enterprise
MEMBER_TYPE_CUSTOMER = 2  # an external contact
DISMISSED = 2  # our quit scene for everyone still in a group when it is dismissed (WeCom's are 0 and 1)

# Scenes in words, for people (timeline, reports). Joins: groupchat/get's join_scene; leaves: the
# change event's QuitScene (https://developer.work.weixin.qq.com/document/path/92130), and ours.
JOIN_SCENES: dict[int, str] = {1: "邀请", 2: "邀请链接", 3: "扫码"}
QUIT_SCENES: dict[int, str] = {0: "退群", 1: "被移出", DISMISSED: "群解散"}


def scene_name(change: str, scene: int | None) -> str:
    """How a member joined or left, in words ("" when WeCom did not say)."""
    names = JOIN_SCENES if change == "join" else QUIT_SCENES
    return names.get(scene, "") if scene is not None else ""


def moment(epoch: int, fallback: datetime) -> datetime:
    """WeCom's epoch seconds as a time; `fallback` when it gave none."""
    return datetime.fromtimestamp(epoch, UTC) if epoch > 0 else fallback


class GroupChatDataError(ValueError):
    """A group as the API described it cannot be applied (no chat id, a member without a userid)."""


@dataclass(frozen=True)
class MemberInfo:
    """One member as groupchat/get lists them."""

    userid: str
    type: int  # 1 a rep, 2 a customer
    join_time: int = 0
    join_scene: int = 0
    invitor: str = ""  # the rep who invited them, when one did
    state: str = ""  # the join way's state (our live code) they came through
    name: str = ""
    unionid: str = ""

    @property
    def kind(self) -> str:
        return "rep" if self.type == MEMBER_TYPE_REP else "customer"

    @classmethod
    def from_api(cls, member: Mapping[str, Any]) -> MemberInfo:
        userid = str(member.get("userid") or "")
        if not userid:
            raise GroupChatDataError(f"a group member without a userid: {dict(member)}")
        invitor = member.get("invitor")
        return cls(
            userid=userid,
            type=int(member.get("type") or MEMBER_TYPE_CUSTOMER),
            join_time=int(member.get("join_time") or 0),
            join_scene=int(member.get("join_scene") or 0),
            invitor=str(invitor.get("userid") or "") if isinstance(invitor, Mapping) else "",
            state=str(member.get("state") or ""),
            name=str(member.get("name") or member.get("group_nickname") or ""),
            unionid=str(member.get("unionid") or ""),
        )


@dataclass(frozen=True)
class GroupInfo:
    """A group read in full (groupchat/get's `group_chat`)."""

    chat_id: str
    name: str = ""
    owner: str = ""
    notice: str = ""
    create_time: int = 0
    member_version: str = ""
    members: tuple[MemberInfo, ...] = field(default_factory=tuple)

    @classmethod
    def from_api(cls, group_chat: Mapping[str, Any]) -> GroupInfo:
        chat_id = str(group_chat.get("chat_id") or "")
        if not chat_id:
            raise GroupChatDataError("a group without a chat_id (expected groupchat/get's group_chat)")
        return cls(
            chat_id=chat_id,
            name=str(group_chat.get("name") or ""),
            owner=str(group_chat.get("owner") or ""),
            notice=str(group_chat.get("notice") or ""),
            create_time=int(group_chat.get("create_time") or 0),
            member_version=str(group_chat.get("member_version") or ""),
            members=tuple(MemberInfo.from_api(member) for member in group_chat.get("member_list") or []),
        )
