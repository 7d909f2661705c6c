"""Group fission (群裂变) in a conversation: a customer asks for their personal group invite.

The `group_invite` action (params: {code: gc_…}, the campaign's fission code; without it the newest
active fission code) answers with the customer's personal group QR: a join way over the campaign's
groups whose state names them, so each friend who joins through it counts for them (flows/group_joins.py). Making that join way
is WeCom's work, so the action asks a port (`PersonalGroupCodes`) that the transport layer
implements (bot/group_join_ways.py) and the assembly passes in.

A code that is unknown, no longer active or not a fission code gets a clear answer, logged;
so does a WeCom that cannot make the join way just now.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.group_code_reports import friends_brought
from crm_store.group_join_codes import code_by_code, latest_fission_code, personal_code_of
from flows.hooks import ActionResult, Hooks
from flows.turn import Turn

log = logging.getLogger("scrm.groupchat.fission")

REFUSED = {
    "missing": "这个活动暂时无法生成邀请码，请稍后再试或联系客服～",
    "unknown": "当前没有进行中的邀请进群活动，敬请关注～",
    "inactive": "这个群活动已经结束啦，敬请关注下一次活动～",
    "not_fission": "这个群暂不支持邀请好友领奖励哦～",
    "unavailable": "邀请码生成失败，请稍后再试一次～",
}


class GroupInviteUnavailable(Exception):
    """WeCom could not make the personal join way now (refused, or did not answer): try again later."""


class PersonalGroupCodes(Protocol):
    """The customer's personal code under a fission code (made once, then reused): its QR picture URL."""

    async def code_for(self, session: AsyncSession, parent_code: str, customer_id: int) -> str: ...


class GroupInvite:
    def __init__(self, codes: PersonalGroupCodes | None) -> None:
        self.codes = codes

    def register(self, hooks: Hooks) -> Hooks:
        hooks.actions["group_invite"] = self.invite
        return hooks

    async def invite(self, turn: Turn, params: Mapping[str, Any]) -> ActionResult:
        """Slots group_invite_qr, group_invite_code, group_invite_friends; group_invite_refused and a reply
        when there is no invite to give."""
        session, customer_id = turn.session, turn.customer.id
        given = str(params.get("code", "")).strip()
        parent = await code_by_code(session, given) if given else await latest_fission_code(session)
        reason = ("missing" if self.codes is None else "unknown" if parent is None
                  else "inactive" if not parent.active else "not_fission" if not parent.fission else "")
        if reason or parent is None or self.codes is None:
            return _refused(reason or "unknown", given, customer_id)
        try:
            qr = await self.codes.code_for(session, parent.code, customer_id)
        except GroupInviteUnavailable as exc:
            log.warning("groupchat.fission.unavailable code=%s customer=%s %s", parent.code, customer_id, exc)
            return _refused("unavailable", given, customer_id)
        personal = await personal_code_of(session, parent.id, customer_id)
        friends = await friends_brought(session, personal.id, customer_id) if personal else 0
        log.info("groupchat.fission.invite code=%s customer=%s", parent.code, customer_id)
        return ActionResult(slots={"group_invite_qr": qr, "group_invite_code": personal.code if personal else "",
                                   "group_invite_friends": str(friends), "group_invite_name": parent.name})


def _refused(reason: str, code: str, customer_id: int) -> ActionResult:
    log.warning("groupchat.fission.refused reason=%s code=%s customer=%s", reason, code[:40], customer_id)
    return ActionResult(slots={"group_invite_refused": reason}, replies=(REFUSED[reason],))
