"""What the fake WeCom knows about customer groups: the groups, their members, join ways and welcome templates.

Shaped as `externalcontact/groupchat/get` answers (https://developer.work.weixin.qq.com/document/path/92122):
a member's `type` is 1 for a member of the enterprise (a rep) and 2 for an external contact (a
customer); `join_scene` 1 invited directly, 2 through an invite link, 3 by scanning the group's
QR code; `invitor` is returned only when a rep invited them; `state` is the join way's state
when they came through one (https://developer.work.weixin.qq.com/document/path/92229).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MEMBER = 1  # type: a member of the enterprise
EXTERNAL = 2  # type: an external contact
GROUP_MAX_MEMBERS = 500  # an external group holds at most 500 people (WeCom's limit for customer groups)


@dataclass
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

    def as_api(self) -> dict[str, Any]:
        member: dict[str, Any] = {"userid": self.userid, "type": self.type, "join_time": self.join_time,
                                  "join_scene": self.join_scene, "group_nickname": self.group_nickname,
                                  "name": self.name}
        if self.invitor:
            member["invitor"] = {"userid": self.invitor}
        if self.state:
            member["state"] = self.state
        if self.unionid and self.type == EXTERNAL:
            member["unionid"] = self.unionid
        return member


@dataclass
class FakeGroupChat:
    chat_id: str
    owner: str
    name: str = ""
    notice: str = ""
    create_time: int = 0
    status: int = 0  # groupchat/list status: 0 normal, 1 owner resigned awaiting transfer, 2 transferring, 3 done
    members: dict[str, FakeMember] = field(default_factory=dict)  # in the group now, in join order
    admins: list[str] = field(default_factory=list)
    member_version: int = 0  # CurMemVer: bumped on every join or leave
    dismissed: bool = False

    def as_api(self, need_name: bool = True) -> dict[str, Any]:
        members = [m.as_api() for m in self.members.values()]
        if not need_name:
            for member in members:
                member.pop("name", None)
        return {"chat_id": self.chat_id, "name": self.name, "owner": self.owner, "create_time": self.create_time,
                "notice": self.notice, "member_list": members,
                "admin_list": [{"userid": userid} for userid in self.admins],
                "member_version": str(self.member_version)}


@dataclass
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
