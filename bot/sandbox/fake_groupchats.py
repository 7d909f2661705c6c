"""Customer groups (客户群) for the fake API: list, get, join ways (group live codes), transfers.

* `externalcontact/groupchat/list` (https://developer.work.weixin.qq.com/document/path/92120): status_filter 0–3,
  owner_filter.userid_list "最多100个", cursor, limit "取值范围 1 ~ 1000" (40058 outside, and for a cursor
  the fake never gave); next_cursor "" after the last page. The cursor is a position in creation order, so
  it stays right while groups are added. "当群主为离职成员时，必须要指定群主过滤才可拉取对应数据": a group
  whose owner left (status 1 or 2) is listed only when owner_filter names its owner. Dismissed groups are gone.
* `externalcontact/groupchat/get` (https://developer.work.weixin.qq.com/document/path/92122): need_name "默认不
  返回"; an unknown or dismissed chat_id answers 40050 (global code "chatid不存在", document 90313; WeCom's
  errmsg "invalid group id").
* Join ways (https://developer.work.weixin.qq.com/document/path/92229): scene 1 or 2, chat_id_list "支持5个",
  state "不超过30个UTF-8字符", remark "超过30个字符将被截断", room_base_name "最长40个utf8字符", auto_create_room
  "默认为1"; update_join_way "使用覆盖的方式更新" (document 99547): what is not given falls back to its default.
  The page names no codes: 40058 (不合法的参数) for a bad field or more than 5 groups, 40050 for a chat id that is
  not a live group, and the codes the fake's contact ways answer for the config_id: 41043 missing, 41044 unknown.
* Transfers: `groupchat/transfer` for a departed owner's groups (https://developer.work.weixin.qq.com/document/path/92127)
  and `groupchat/onjob_transfer` for a serving owner's (https://developer.work.weixin.qq.com/document/path/95703):
  chat_id_list "取值范围: 1 ~ 100", new_owner; the groups that did not move are in failed_chat_list with a code:
  90500 "the owner of this chat is not resigned" (document 92127's example), 40050 for an unknown group, and for
  onjob "90个自然日内，在职成员的每个客户群仅可被转接2次": the page names no code for a third, the fake answers
  45009 (接口调用超过限制), as it does for remind_groupmsg_send. The fake moves a group at once (WeCom may take a
  while); each move queues a change_owner callback in `chat_callbacks` for the simulator to post. Document 96361
  says operations made through the API produce no callback; the fake queues one so a test can check the bot
  takes either path, and leaves them unsent unless asked.
"""

from __future__ import annotations

import secrets
from typing import Any

from bot.sandbox.fake_group_activity import FakeGroupActivity
from bot.sandbox.fake_group_welcome import FakeGroupWelcome
from bot.sandbox.fake_groupchat_state import (
    JOIN_WAY_MAX_CHATS,
    OWNER_RESIGNED,
    TRANSFERRED,
    TRANSFERRING,
    FakeJoinWay,
)
from bot.sandbox.fake_quotas import TOO_FREQUENT, ApiRefusal

LIST_MAX, OWNER_FILTER_MAX, TRANSFER_MAX = 1000, 100, 100
STATE_CHARS, REMARK_CHARS, ROOM_NAME_CHARS = 30, 30, 40
ONJOB_TRANSFERS, ONJOB_WINDOW_S = 2, 90 * 86400
BAD_PARAMETER, NO_CHAT, BAD_USERID, NOT_RESIGNED = 40058, 40050, 40003, 90500
NO_CONFIG_ID, BAD_CONFIG_ID = 41043, 41044
CURSOR_PREFIX = "gcc"


class FakeGroupChats(FakeGroupActivity, FakeGroupWelcome):
    """Mixin of FakeWeChat: the group endpoints over the groups FakeGroupActivity keeps."""

    def init_group_chats(self) -> None:
        self.init_group_activity()
        self.init_group_welcome()
        self.chat_callbacks: list[str] = []  # change_owner callbacks of transfers, oldest first
        self.group_transfers: list[dict[str, str]] = []  # chat_id, from, to, kind (resigned | onjob)

    def group_chat_routes(self) -> dict[str, Any]:
        return {"externalcontact/groupchat/list": self.groupchat_list,
                "externalcontact/groupchat/get": self.groupchat_get,
                "externalcontact/groupchat/add_join_way": self.add_join_way,
                "externalcontact/groupchat/get_join_way": self.get_join_way,
                "externalcontact/groupchat/update_join_way": self.update_join_way,
                "externalcontact/groupchat/del_join_way": self.del_join_way,
                "externalcontact/groupchat/transfer": self.groupchat_transfer,
                "externalcontact/groupchat/onjob_transfer": self.groupchat_onjob_transfer,
                **self.group_welcome_routes()}

    # --- list and get ------------------------------------------------------------------------
    async def groupchat_list(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        limit, status, owners, start = _list_query(body, len(self.chat_order))
        page: list[dict[str, Any]] = []
        position = start
        while position < len(self.chat_order):
            group = self.group_chats[self.chat_order[position]]
            position += 1
            if group.dismissed or (status and group.status != status):
                continue
            resigned = group.status in (OWNER_RESIGNED, TRANSFERRING)
            if (owners or resigned) and group.owner not in owners:
                continue
            if len(page) == limit:  # one more exists: the next page starts at it
                return {"group_chat_list": page, "next_cursor": f"{CURSOR_PREFIX}{position - 1}"}
            page.append({"chat_id": group.chat_id, "status": group.status})
        return {"group_chat_list": page, "next_cursor": ""}

    async def groupchat_get(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        chat_id = body.get("chat_id")
        if not isinstance(chat_id, str) or not chat_id:
            raise ApiRefusal(BAD_PARAMETER, "chat_id missing")
        group = self.group_chats.get(chat_id)
        if group is None or group.dismissed:
            raise ApiRefusal(NO_CHAT, "invalid group id")
        return {"group_chat": group.as_api(need_name=body.get("need_name") in (1, True))}

    # --- join ways ---------------------------------------------------------------------------
    async def add_join_way(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        config_id = secrets.token_hex(16)
        way = self._join_way_of(config_id, body)
        way.qr_code = _qr_code() if way.scene == 2 else ""
        self.join_ways[config_id] = way
        return {"config_id": config_id}

    async def get_join_way(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        return {"join_way": self._configured(body).as_api()}

    async def update_join_way(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        """Everything replaced (覆盖); the QR code and the groups it created so far stay."""
        old = self._configured(body)
        way = self._join_way_of(old.config_id, body)
        way.qr_code = (old.qr_code or _qr_code()) if way.scene == 2 else ""
        way.rooms_created = old.rooms_created
        self.join_ways[old.config_id] = way
        return {}

    async def del_join_way(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        del self.join_ways[self._configured(body).config_id]
        return {}

    def _configured(self, body: dict[str, Any]) -> FakeJoinWay:
        config_id = body.get("config_id")
        if not config_id:
            raise ApiRefusal(NO_CONFIG_ID, "missing config_id")
        way = self.join_ways.get(str(config_id))
        if way is None:
            raise ApiRefusal(BAD_CONFIG_ID, "invalid config_id")
        return way

    def _join_way_of(self, config_id: str, body: dict[str, Any]) -> FakeJoinWay:
        """The join way the body describes, or the refusal (nothing is kept on a refusal)."""
        scene, chats, auto = body.get("scene"), body.get("chat_id_list"), body.get("auto_create_room", 1)
        state, name, base_id = body.get("state", ""), body.get("room_base_name", ""), body.get("room_base_id", 1)
        if scene not in (1, 2) or auto not in (0, 1) or not isinstance(base_id, int) or base_id < 0:
            raise ApiRefusal(BAD_PARAMETER, "scene is 1 or 2, auto_create_room 0 or 1, room_base_id a number")
        if not isinstance(chats, list) or not 0 < len(chats) <= JOIN_WAY_MAX_CHATS or \
                not all(isinstance(chat, str) for chat in chats):
            raise ApiRefusal(BAD_PARAMETER, f"chat_id_list holds 1 to {JOIN_WAY_MAX_CHATS} chat ids")
        if not isinstance(state, str) or len(state) > STATE_CHARS or not isinstance(name, str) or \
                len(name) > ROOM_NAME_CHARS:
            raise ApiRefusal(BAD_PARAMETER, f"state at most {STATE_CHARS}, room_base_name {ROOM_NAME_CHARS} characters")
        unknown = [chat for chat in chats if chat not in self.group_chats or self.group_chats[chat].dismissed]
        if unknown:
            raise ApiRefusal(NO_CHAT, f"invalid group id {unknown[0]}")
        return FakeJoinWay(config_id, scene, list(dict.fromkeys(chats)), state,
                           str(body.get("remark") or "")[:REMARK_CHARS], auto, name, base_id,
                           mark_source=body.get("mark_source", True) is not False)

    # --- transfers ---------------------------------------------------------------------------
    async def groupchat_transfer(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        """A departed owner's groups to `new_owner`: only groups whose owner left (list status 1 or 2) move."""
        return self._transfer_groups(body, "resigned")

    async def groupchat_onjob_transfer(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        """A serving owner's groups to `new_owner`: each group at most twice in 90 days."""
        return self._transfer_groups(body, "onjob")

    def _transfer_groups(self, body: dict[str, Any], kind: str) -> dict[str, Any]:
        chats, new_owner = body.get("chat_id_list"), body.get("new_owner")
        if not isinstance(new_owner, str) or not new_owner:
            raise ApiRefusal(BAD_USERID, "new_owner missing")
        if not isinstance(chats, list) or not 0 < len(chats) <= TRANSFER_MAX:
            raise ApiRefusal(BAD_PARAMETER, f"chat_id_list holds 1 to {TRANSFER_MAX} chat ids")
        failed = []
        for chat_id in dict.fromkeys(str(chat) for chat in chats):
            errcode, errmsg = self._move_group(chat_id, new_owner, kind)
            if errcode:
                failed.append({"chat_id": chat_id, "errcode": errcode, "errmsg": errmsg})
        return {"failed_chat_list": failed}

    def _move_group(self, chat_id: str, new_owner: str, kind: str) -> tuple[int, str]:
        group = self.group_chats.get(chat_id)
        if group is None or group.dismissed:
            return NO_CHAT, "invalid group id"
        now = self.now()
        if kind == "resigned" and group.status not in (OWNER_RESIGNED, TRANSFERRING):
            return NOT_RESIGNED, "the owner of this chat is not resigned"
        if kind == "onjob":
            recent = [at for at in group.onjob_transfers if at > now - ONJOB_WINDOW_S]
            if len(recent) >= ONJOB_TRANSFERS:
                return TOO_FREQUENT, "each group moves at most twice in 90 days"
            group.onjob_transfers = [*recent, now]
        else:
            group.status = TRANSFERRED
        self.group_transfers.append({"chat_id": chat_id, "from": group.owner, "to": new_owner, "kind": kind})
        if new_owner not in group.members:  # the new owner joins the group: its add_member goes first
            self.chat_callbacks.append(self.add_member(group, new_owner, 1))
        group.owner = new_owner
        self.chat_callbacks.append(self._chat_xml(group, "update", "change_owner"))
        return 0, ""


def _qr_code() -> str:
    """A join way's QR picture, "仅在配置为群二维码时返回" (scene 2)."""
    return f"https://wework.qpic.cn/wwpic/{secrets.token_hex(8)}/0"


def _list_query(body: dict[str, Any], groups: int) -> tuple[int, int, set[str], int]:
    """groupchat/list's limit, status_filter, owners and start position, or 40058."""
    limit, status = body.get("limit"), body.get("status_filter", 0)
    owner_filter = body.get("owner_filter") or {}
    owners = (owner_filter.get("userid_list") or []) if isinstance(owner_filter, dict) else None
    cursor = body.get("cursor") or ""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_MAX:
        raise ApiRefusal(BAD_PARAMETER, f"limit must be 1 to {LIST_MAX}")
    if status not in (0, 1, 2, 3):
        raise ApiRefusal(BAD_PARAMETER, "status_filter is 0, 1, 2 or 3")
    if not isinstance(owners, list) or len(owners) > OWNER_FILTER_MAX:
        raise ApiRefusal(BAD_PARAMETER, f"owner_filter.userid_list holds at most {OWNER_FILTER_MAX} userids")
    digits = cursor.removeprefix(CURSOR_PREFIX) if isinstance(cursor, str) else ""
    if cursor and (not cursor.startswith(CURSOR_PREFIX) or not digits.isdigit() or int(digits) > groups):
        raise ApiRefusal(BAD_PARAMETER, "invalid cursor")
    return limit, status, {str(owner) for owner in owners}, int(digits) if cursor else 0
