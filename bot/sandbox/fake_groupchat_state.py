"""What the fake WeCom knows about customer groups: the groups, their members, join ways and welcome templates.

Shaped as `externalcontact/groupchat/get` answers (https://developer.work.weixin.qq.com/document/path/92122):
a member's `type` is 1 for a member of the enterprise (a rep) and 2 for an external contact (a
customer); `join_scene` 1 invited directly, 2 through an invite link, 3 by scanning the group's
QR code; `invitor` is returned only when a rep invited them; `state` is the join way's state
when they came through one (https://developer.work.weixin.qq.com/document/path/92229).
The dataclasses use slots: a benchmark holds 10,000 groups of 200 members each.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

MEMBER = 1  # a member's type: one of the enterprise (a rep)
EXTERNAL = 2  # a member's type: an external contact (a customer)
# An external group holds at most 500 people. WeCom's developer pages give no number; WeCom's own help and
# every SCRM vendor's ("企业微信用户创建的外部群聊…都可以添加500人") do. Not confirmed on an official page.
GROUP_MAX_MEMBERS = 500
# Scanning a group's QR code (a join way's too) stops working at 200 members ("群人数超过200人后无法扫码入群", WeChat's
# rule for groups with WeChat users); a join way then moves on to its next group or creates one. Not confirmed on
# a WeCom developer page (document 92229 says only "当群满了后"); the fake takes 200, `qr_join_max` changes it.
QR_JOIN_MAX = 200
# https://developer.work.weixin.qq.com/document/path/92229: chat_id_list "使用该配置的客户群ID列表，支持5个".
JOIN_WAY_MAX_CHATS = 5
# groupchat/list status (document 92120): 0 跟进人正常, 1 跟进人离职, 2 离职继承中, 3 离职继承完成.
NORMAL, OWNER_RESIGNED, TRANSFERRING, TRANSFERRED = 0, 1, 2, 3


def is_external(userid: str) -> bool:
    """WeCom's external_userid begins with "wm" or "wo" (a customer); anything else is a rep's userid."""
    return userid.startswith(("wm", "wo"))


def callback_join_scene(api_scene: int) -> int:
    """The callback's JoinScene (document 92130): 0 invited by a member (directly or by link), 3 by QR code;
    groupchat/get tells 1 (directly) and 2 (by link) apart."""
    return 3 if api_scene == 3 else 0


@dataclass(slots=True)
class FakeMember:
    userid: str
    type: int = EXTERNAL
    join_time: int = 0
    join_scene: int = 3
    invitor: str = ""  # a rep's userid, only when a rep invited them
    state: str = ""
    name: str = ""
    group_nickname: str = ""
    unionid: str = ""

    def as_api(self, need_name: bool = True) -> dict[str, Any]:
        member: dict[str, Any] = {"userid": self.userid, "type": self.type, "join_time": self.join_time,
                                  "join_scene": self.join_scene, "group_nickname": self.group_nickname}
        if need_name:
            member["name"] = self.name
        if self.invitor:
            member["invitor"] = {"userid": self.invitor}
        if self.state:
            member["state"] = self.state
        if self.unionid and self.type == EXTERNAL:
            member["unionid"] = self.unionid
        return member


@dataclass(slots=True)
class FakeGroupChat:
    chat_id: str
    owner: str
    name: str = ""
    notice: str = ""
    create_time: int = 0
    status: int = NORMAL  # groupchat/list status: see NORMAL … TRANSFERRED
    members: dict[str, FakeMember] = field(default_factory=dict)  # in the group now, in join order
    admins: list[str] = field(default_factory=list)
    member_version: int = 0  # bumped on every join or leave: CurMemVer is its digest
    dismissed: bool = False
    onjob_transfers: list[float] = field(default_factory=list)  # when onjob_transfer moved it (90 days' count)

    def mem_ver(self) -> str:
        """The member version as WeCom writes it (a 32-hex digest), the same in callbacks and groupchat/get."""
        return hashlib.md5(f"{self.chat_id}/{self.member_version}".encode()).hexdigest()

    def as_api(self, need_name: bool = True) -> dict[str, Any]:
        return {"chat_id": self.chat_id, "name": self.name, "owner": self.owner, "create_time": self.create_time,
                "notice": self.notice, "member_list": [m.as_api(need_name) for m in self.members.values()],
                "admin_list": [{"userid": userid} for userid in self.admins],
                "member_version": self.mem_ver()}


@dataclass(slots=True)
class FakeJoinWay:
    config_id: str
    scene: int
    chat_id_list: list[str]
    state: str = ""
    remark: str = ""
    auto_create_room: int = 1
    room_base_name: str = ""
    room_base_id: int = 1
    qr_code: str = ""
    mark_source: bool = True
    rooms_created: int = 0  # groups it created when full: the next is named room_base_name + (room_base_id + this)

    def as_api(self) -> dict[str, Any]:
        """As get_join_way answers it; qr_code "仅在配置为群二维码时返回" (scene 2)."""
        way: dict[str, Any] = {"config_id": self.config_id, "scene": self.scene, "remark": self.remark,
                               "auto_create_room": self.auto_create_room, "room_base_name": self.room_base_name,
                               "room_base_id": self.room_base_id, "chat_id_list": list(self.chat_id_list),
                               "state": self.state, "mark_source": self.mark_source}
        if self.scene == 2:
            way["qr_code"] = self.qr_code
        return way
