"""What happens inside customer groups on WeCom's side, for tests and the sandbox page: no HTTP.

A customer scans a group live code and lands in its first group with room (or in a group the
join way creates when all are full), leaves, a group is created, renamed, given a notice or
dismissed. Each method changes the fake's groups at once and returns the 客户群变更事件 XML(s)
WeCom would post to the contacts callback (https://developer.work.weixin.qq.com/document/path/92130),
in the order WeCom sends them; the simulator signs and posts them. `add_group_chat` and
`populate_group_chats` make groups that existed before the bot (no callback), for full syncs
and their benchmark. A request that cannot happen (an unknown group, a customer not in it, a
full group) raises `GroupChatError` naming what is wrong, and changes nothing.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence

from bot.sandbox.fake_groupchat_state import (
    EXTERNAL,
    GROUP_MAX_MEMBERS,
    JOIN_WAY_MAX_CHATS,
    MEMBER,
    QR_JOIN_MAX,
    FakeGroupChat,
    FakeJoinWay,
    FakeMember,
    callback_join_scene,
    is_external,
)
from bot.sandbox.fake_quotas import FakeQuotas
from bot.sandbox.wechat_side import external_chat_xml


class GroupChatError(ValueError):
    """What a test or the page asked of a group cannot happen on WeCom; the message says what and which."""


class FakeGroupActivity(FakeQuotas):
    """Mixin of FakeWeChat (through FakeGroupChats): the groups, their join ways, and what people do in them."""

    corp_id: str

    def init_group_activity(self) -> None:
        self.group_chats: dict[str, FakeGroupChat] = {}
        self.join_ways: dict[str, FakeJoinWay] = {}
        self.chat_order: list[str] = []  # creation order, never shortened: groupchat/list's cursor is a position
        self.group_max_members = GROUP_MAX_MEMBERS
        self.qr_join_max = QR_JOIN_MAX
        self._chat_run = secrets.token_hex(3)  # chat ids unique across fakes, as WeCom's are
        self._chat_numbers = itertools.count(1)

    # --- groups ------------------------------------------------------------------------------
    def add_group_chat(self, owner: str, name: str = "", members: Sequence[str] = (), notice: str = "",
                       admins: Sequence[str] = ()) -> str:
        """A group that existed before the bot was connected: no callback, a full sync finds it."""
        return self._new_group(owner, name, members, notice, admins).chat_id

    def create_group_chat(self, owner: str, name: str = "", members: Sequence[str] = (), notice: str = "",
                          admins: Sequence[str] = ()) -> tuple[str, str]:
        """A rep creates a customer group now: its chat id and the create callback."""
        group = self._new_group(owner, name, members, notice, admins)
        return group.chat_id, self._chat_xml(group, "create")

    def populate_group_chats(self, count: int, members_per_group: int, owners: Sequence[str]) -> list[str]:
        """`count` groups of `members_per_group` people (the owner and customers `wm<chat>_<n>`), owners in turn.

        For the full-sync benchmark (10,000 × 200): plain objects, no XML, no checks per member."""
        if not owners or not 1 <= members_per_group <= self.group_max_members:
            raise GroupChatError(f"need owners and 1–{self.group_max_members} members a group")
        now, chat_ids, member = int(self.now()), [], FakeMember
        for number in range(count):
            owner, chat_id = owners[number % len(owners)], self._next_chat_id()
            people = [f"wm{chat_id}_{n}" for n in range(1, members_per_group)]
            members = {owner: member(owner, MEMBER, now, 1)}
            members.update({userid: member(userid, EXTERNAL, now, 3) for userid in people})
            self._register(FakeGroupChat(chat_id, owner, f"客户群{number + 1}", create_time=now, members=members))
            chat_ids.append(chat_id)
        return chat_ids

    def rename_group(self, chat_id: str, name: str) -> str:
        group = self._live_group(chat_id)
        group.name = name
        return self._chat_xml(group, "update", "change_name")

    def change_notice(self, chat_id: str, notice: str) -> str:
        group = self._live_group(chat_id)
        group.notice = notice
        return self._chat_xml(group, "update", "change_notice")

    def dismiss_group(self, chat_id: str) -> str:
        """The owner dismisses the group: groupchat/get answers 40050 from now on, groupchat/list leaves it out."""
        group = self._live_group(chat_id)
        group.dismissed = True
        return self._chat_xml(group, "dismiss")

    def resign_owner(self, userid: str) -> list[str]:
        """The rep left the company: their groups wait for `groupchat/transfer` (list status 1). No callback."""
        groups = [g for g in self.group_chats.values() if g.owner == userid and not g.dismissed]
        for group in groups:
            group.status = 1
        return [group.chat_id for group in groups]

    # --- members -----------------------------------------------------------------------------
    def join_group(self, userid: str, *, chat_id: str = "", config_id: str = "", scene: int = 3, invitor: str = "",
                   name: str = "") -> list[str]:
        """`userid` joins `chat_id`, or through the join way `config_id` (its first group with room, or a new one).

        `scene` is groupchat/get's join_scene: 3 by QR code, 1 invited directly, 2 by an invite link;
        `invitor` the rep who invited them. Returns the callbacks: a created group's first, then the
        add_member; none when they are in the group already."""
        if bool(chat_id) == bool(config_id) or scene not in (1, 2, 3):
            raise GroupChatError("join_group needs chat_id or config_id (not both) and scene 1, 2 or 3")
        if len(userid) > 64 or not userid:
            raise GroupChatError(f"bad userid {userid!r}: 1–64 characters")
        xmls: list[str] = []
        state = ""
        if config_id:
            way = self._join_way(config_id)
            group, created = self._room_in(way)
            xmls.extend(created)
            state = way.state
        else:
            group = self._live_group(chat_id)
            limit = self.qr_join_max if scene == 3 else self.group_max_members
            if len(group.members) >= limit and userid not in group.members:
                raise GroupChatError(f"group {chat_id} is full ({len(group.members)} of {limit})")
        if userid in group.members:
            return xmls
        xmls.append(self.add_member(group, userid, scene, invitor, state, name))
        return xmls

    def leave_group(self, chat_id: str, userid: str, quit_scene: int = 0) -> str:
        """`userid` leaves (quit_scene 0) or is removed by the owner or an admin (1)."""
        group = self._live_group(chat_id)
        if userid not in group.members:
            raise GroupChatError(f"{userid} is not in group {chat_id}")
        if userid == group.owner:
            raise GroupChatError(f"{userid} owns group {chat_id}: an owner transfers or dismisses it")
        if quit_scene not in (0, 1):
            raise GroupChatError("quit_scene is 0 (left) or 1 (removed by the owner or an admin)")
        last = group.mem_ver()
        del group.members[userid]
        group.member_version += 1
        return self._chat_xml(group, "update", "del_member", quit_scene=quit_scene, members=[userid],
                              last_mem_ver=last)

    def groups_of(self, userid: str) -> list[FakeGroupChat]:
        """The live groups `userid` is in, oldest first (the sandbox page shows them)."""
        return [g for g in self.group_chats.values() if not g.dismissed and userid in g.members]

    def add_member(self, group: FakeGroupChat, userid: str, scene: int, invitor: str = "", state: str = "",
                   name: str = "") -> str:
        """Put `userid` in the group as it is (no check) and return the add_member callback."""
        last = group.mem_ver()
        group.members[userid] = FakeMember(userid, EXTERNAL if is_external(userid) else MEMBER, int(self.now()),
                                           scene, invitor, state, name)
        group.member_version += 1
        return self._chat_xml(group, "update", "add_member", join_scene=callback_join_scene(scene), members=[userid],
                              last_mem_ver=last)

    # --- inside ------------------------------------------------------------------------------
    def _room_in(self, way: FakeJoinWay) -> tuple[FakeGroupChat, list[str]]:
        """The join way's first live group under the QR limit; when all are full and it may, a group it creates.

        The created group is named room_base_name + (room_base_id, then +1 …) and owned by the first
        group's owner (document 92229), and joins chat_id_list. The list holds 5 (document 92229); WeCom
        does not say what a sixth does, so the fake drops the first full group to make room (not confirmed)."""
        groups = [self.group_chats[c] for c in way.chat_id_list if c in self.group_chats]
        for group in groups:
            if not group.dismissed and len(group.members) < self.qr_join_max:
                return group, []
        if not way.auto_create_room or not groups:
            raise GroupChatError(f"every group of join way {way.config_id} is full and it creates none")
        group = self._new_group(groups[0].owner, f"{way.room_base_name}{way.room_base_id + way.rooms_created}",
                                (), "", ())
        way.rooms_created += 1
        way.chat_id_list.append(group.chat_id)
        if len(way.chat_id_list) > JOIN_WAY_MAX_CHATS:
            way.chat_id_list.remove(next(c for c in way.chat_id_list if c != group.chat_id))
        return group, [self._chat_xml(group, "create")]

    def _new_group(self, owner: str, name: str, members: Sequence[str], notice: str,
                   admins: Sequence[str]) -> FakeGroupChat:
        if not owner or is_external(owner):
            raise GroupChatError(f"bad owner {owner!r}: a customer group is owned by a rep")
        people = [owner, *[m for m in dict.fromkeys(members) if m != owner]]
        if len(people) > self.group_max_members:
            raise GroupChatError(f"{len(people)} people: a customer group holds at most {self.group_max_members}")
        now = int(self.now())
        group = FakeGroupChat(self._next_chat_id(), owner, name, notice, now, admins=list(admins))
        for userid in people:
            external = is_external(userid)
            group.members[userid] = FakeMember(userid, EXTERNAL if external else MEMBER, now, 1,
                                               owner if userid != owner else "")
        self._register(group)
        return group

    def _register(self, group: FakeGroupChat) -> None:
        self.group_chats[group.chat_id] = group
        self.chat_order.append(group.chat_id)

    def _next_chat_id(self) -> str:
        return f"wr{self._chat_run}AA{next(self._chat_numbers):08d}"

    def _live_group(self, chat_id: str) -> FakeGroupChat:
        group = self.group_chats.get(chat_id)
        if group is None or group.dismissed:
            raise GroupChatError(f"no group {chat_id!r}" if group is None else f"group {chat_id} was dismissed")
        return group

    def _join_way(self, config_id: str) -> FakeJoinWay:
        way = self.join_ways.get(config_id)
        if way is None:
            raise GroupChatError(f"no join way {config_id!r}")
        return way

    def _chat_xml(self, group: FakeGroupChat, change_type: str, detail: str = "", *, join_scene: int | None = None,
                  quit_scene: int | None = None, members: Sequence[str] = (), last_mem_ver: str = "") -> str:
        current = group.mem_ver() if members else ""
        return external_chat_xml(self.corp_id, group.chat_id, change_type, detail, join_scene, quit_scene, members,
                                 last_mem_ver, current, int(self.now()))
