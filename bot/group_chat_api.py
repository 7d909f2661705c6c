"""The two WeCom calls that read customer groups, typed: one page of the list, one group in full.

Both go through the contacts credential's `WeChatApi` (token sharing, retryable errors as
every other caller sees them). A group WeCom does not know (a dismissed one, a wrong id, a
chat that is not a customer group) is `UnknownGroupChat`: nothing to retry.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.wechat_api import ApiError, WeChatApi
from crm_store.group_chats import GroupInfo

LIST_PATH = "externalcontact/groupchat/list"  # https://developer.work.weixin.qq.com/document/path/92120
GET_PATH = "externalcontact/groupchat/get"  # https://developer.work.weixin.qq.com/document/path/92122
LIST_LIMIT_MAX = 1000  # groupchat/list: limit 1–1000
# 40050 invalid chat id (the answer for a group that does not exist or is gone); 90501 a chat that is
# not a customer group (https://developer.work.weixin.qq.com/document/path/90313, the global error codes).
UNKNOWN_GROUP = frozenset({40050, 90501})


class UnknownGroupChat(Exception):
    def __init__(self, chat_id: str, error: ApiError) -> None:
        super().__init__(f"group {chat_id}: {error.errmsg} (errcode {error.errcode})")
        self.chat_id = chat_id
        self.errcode = error.errcode


@dataclass(frozen=True)
class GroupPage:
    """One page of groupchat/list: the groups' ids, and the cursor of the next page ("" after the last)."""

    chat_ids: tuple[str, ...]
    next_cursor: str


async def read_group(api: WeChatApi, chat_id: str) -> GroupInfo:
    """The group in full, with the members' names (need_name: 1)."""
    try:
        answer = await api.post(GET_PATH, {"chat_id": chat_id, "need_name": 1})
    except ApiError as exc:
        if exc.errcode in UNKNOWN_GROUP:
            raise UnknownGroupChat(chat_id, exc) from exc
        raise
    return GroupInfo.from_api(answer.get("group_chat") or {})


async def list_groups(api: WeChatApi, cursor: str, limit: int) -> GroupPage:
    """Every group of the enterprise, whatever its state (status_filter 0), one page at a time."""
    body = {"status_filter": 0, "cursor": cursor, "limit": max(1, min(limit, LIST_LIMIT_MAX))}
    answer = await api.post(LIST_PATH, body)
    chat_ids = tuple(str(entry["chat_id"]) for entry in answer.get("group_chat_list") or [] if entry.get("chat_id"))
    return GroupPage(chat_ids, str(answer.get("next_cursor") or ""))
