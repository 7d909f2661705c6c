"""A departing rep's customer groups (客户群的离职继承) go to the reps who take their customers.

WeCom moves a departed member's groups with `externalcontact/groupchat/transfer`
(https://developer.work.weixin.qq.com/document/path/92127): 1 to 100 chat ids a call, one new
owner, and the groups it could not move in `failed_chat_list`, each with its errcode. Customers
are queued in the outbox (WeCom only answers "started" for them); a group moves at once and
may be refused one by one, so these calls are made here and the store changes only for what
moved, one transaction per call: a crash between calls loses nothing, and a run again finds the
moved groups owned by someone else and leaves them alone. A refused group is reported with
what its errcode means, never retried blindly: most refusals would only be refused again.

Which groups: those the store says the rep owns, and those WeCom lists for them (`groupchat/list`
with `owner_filter`, https://developer.work.weixin.qq.com/document/path/92120). A group of the
store that WeCom does not list is looked at (`groupchat/get`, .../92122): already someone else's
(a run that stopped before its commit, an admin in the console) it is only recorded; still the
rep's (WeCom has been known not to list a departed member's groups by owner) it is moved.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.wechat_api import ApiError, WeChatApi
from crm_store.group_chat_owners import groups_owned_by, hand_over

log = logging.getLogger("scrm.groupchat")

TRANSFER_PATH = "externalcontact/groupchat/transfer"  # the owner has left (document 92127)
TRANSFER_BATCH = 100  # chat_id_list: 1 ~ 100 a call
LIST_LIMIT = 1000  # groupchat/list: limit 1 ~ 1000
WHY = "rep_left"
# What WeCom's errcodes for a group it would not move mean (the global error codes,
# https://developer.work.weixin.qq.com/document/path/90455).
TRANSFER_ERRORS = {
    90500: "its owner has not left the company on WeCom (群主并未离职): move it with an on-the-job transfer",
    90501: "it is not a customer group (该群不是客户群)",
    90502: "its owner has left the company (群主已经离职)",
    90503: "it is full with 99 WeChat members and needs the owner's confirmation in the app (满人)",
    90504: "its owner would not change (群主没变)",
    90507: "it is being transferred already (离职群正在继承处理中)",
    90508: "it has been transferred already (离职群已经继承)",
    40050: "WeCom does not know this chat id (dismissed, or not a group of this company)",
}


@dataclass(frozen=True)
class GroupMoved:
    chat_id: str
    to: str


@dataclass(frozen=True)
class GroupFailed:
    chat_id: str
    errcode: int
    reason: str  # what the errcode means, in words


@dataclass(frozen=True)
class GroupsOutcome:
    moved: tuple[GroupMoved, ...]
    failed: tuple[GroupFailed, ...]
    timeline_entries: int  # group.owner_changed entries written


class GroupsInterrupted(Exception):
    """WeCom refused a whole call (rate limit, system busy…): what moved until then is recorded."""

    def __init__(self, done: GroupsOutcome, cause: ApiError) -> None:
        super().__init__(f"{cause} after {len(done.moved)} group(s) moved")
        self.done = done
        self.cause = cause


@dataclass
class _Progress:
    moved: list[GroupMoved] = field(default_factory=list)
    failed: list[GroupFailed] = field(default_factory=list)
    entries: int = 0

    def outcome(self) -> GroupsOutcome:
        return GroupsOutcome(tuple(self.moved), tuple(self.failed), self.entries)


def failure_reason(errcode: int, errmsg: str = "") -> str:
    """An errcode of a group WeCom would not move, in words."""
    return TRANSFER_ERRORS.get(errcode) or f"WeCom refused it: errcode {errcode} {errmsg}".rstrip()


async def move_groups(sessions: async_sessionmaker[AsyncSession], api: WeChatApi, userid: str,
                      heirs: list[str]) -> GroupsOutcome:
    """Give the departed `userid`'s groups to `heirs` (shared out in turn, as customers are)."""
    progress = _Progress()
    try:
        async with sessions() as session:
            known = await groups_owned_by(session, userid)
        listed = await groups_listed_for(api, userid)
        on_wecom = set(listed)
        unlisted = [chat_id for chat_id in known if chat_id not in on_wecom]
        still_theirs = await _look_at_unlisted(sessions, api, userid, unlisted, progress)
        for heir, chunk in _batches(sorted({*listed, *still_theirs}), heirs):
            await _transfer(sessions, api, userid, heir, chunk, progress)
    except ApiError as exc:
        raise GroupsInterrupted(progress.outcome(), exc) from exc
    return progress.outcome()


async def groups_listed_for(api: WeChatApi, userid: str) -> list[str]:
    """Chat ids WeCom lists with `userid` as the owner (every page)."""
    found: list[str] = []
    cursor = ""
    while True:
        page = await api.post("externalcontact/groupchat/list", {
            "status_filter": 0, "owner_filter": {"userid_list": [userid]}, "cursor": cursor, "limit": LIST_LIMIT})
        found.extend(str(item["chat_id"]) for item in page.get("group_chat_list") or [] if item.get("chat_id"))
        cursor = str(page.get("next_cursor") or "")
        if not cursor:
            return list(dict.fromkeys(found))


async def _look_at_unlisted(sessions: async_sessionmaker[AsyncSession], api: WeChatApi, userid: str,
                            chat_ids: list[str], progress: _Progress) -> list[str]:
    """The store's groups WeCom did not list: those still the rep's, the others recorded as they are."""
    still_theirs: list[str] = []
    for chat_id in chat_ids:
        try:
            answer = await api.post("externalcontact/groupchat/get", {"chat_id": chat_id, "need_name": 0})
        except ApiError as exc:
            if exc.errcode not in TRANSFER_ERRORS:
                raise  # not about this group: the call as a whole failed
            progress.failed.append(GroupFailed(chat_id, exc.errcode, failure_reason(exc.errcode)))
            continue
        owner = str((answer.get("group_chat") or {}).get("owner") or "")
        if owner == userid or not owner:
            still_theirs.append(chat_id)
            continue
        async with sessions() as session, session.begin():
            changed = await hand_over(session, [chat_id], userid, owner, WHY)
        progress.moved.extend(GroupMoved(moved, owner) for moved in changed.groups)
        progress.entries += changed.entries
    return still_theirs


def _batches(chat_ids: list[str], heirs: list[str]) -> Iterator[tuple[str, list[str]]]:
    """Each heir's share (in turn, by chat id), in calls of at most TRANSFER_BATCH."""
    shares = {heir: chat_ids[index::len(heirs)] for index, heir in enumerate(heirs)}
    for heir, share in shares.items():
        for start in range(0, len(share), TRANSFER_BATCH):
            yield heir, share[start:start + TRANSFER_BATCH]


async def _transfer(sessions: async_sessionmaker[AsyncSession], api: WeChatApi, userid: str, heir: str,
                    chunk: list[str], progress: _Progress) -> None:
    answer = await api.post(TRANSFER_PATH, {"chat_id_list": chunk, "new_owner": heir})
    refused = {str(item.get("chat_id")): item for item in answer.get("failed_chat_list") or []}
    moved = [chat_id for chat_id in chunk if chat_id not in refused]
    async with sessions() as session, session.begin():
        changed = await hand_over(session, moved, userid, heir, WHY)
    progress.moved.extend(GroupMoved(chat_id, heir) for chat_id in moved)
    progress.entries += changed.entries
    for chat_id, item in refused.items():
        errcode = int(item.get("errcode") or 0)
        progress.failed.append(GroupFailed(chat_id, errcode, failure_reason(errcode, str(item.get("errmsg") or ""))))
        log.warning("groupchat.transfer.refused chat_id=%s to=%s errcode=%s", chat_id, heir, errcode)
    log.info("groupchat.transfer.batch from=%s to=%s asked=%d moved=%d refused=%d entries=%d",
             userid, heir, len(chunk), len(moved), len(refused), changed.entries)
