"""The `group_buy.*` and `invite.*` steps of flows, and the checks that route to them.

Each action fills slots for the steps after it, and answers a refusal itself with
what the customer can do instead (open a new group, join another, check the code),
setting `group_refused` / `invite_refused` so a flow can branch on it.
A code comes from the slot of that name, the arrival's scene, or the message text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from core import metrics
from core.events import Effect
from crm_store import group_buys, referrals, social
from crm_store.campaigns import campaign_by_code, running_campaign, yuan
from crm_store.codes import GROUP_LENGTH, GROUP_PREFIX, INVITE_LENGTH, INVITE_PREFIX, codes_in, normalise_code
from crm_store.growth_models import Campaign, GroupBuy, Referral
from crm_store.models import Customer, as_utc, utcnow
from flows.group_fission import GroupInvite, PersonalGroupCodes
from flows.growth import Growth, event_code
from flows.hooks import ActionResult, Hooks
from flows.turn import Turn

REFUSED = {
    "unknown": "没有找到拼团码 {code}，请核对后再发一次（6 位字母或数字，如「参团 K7P3QX」）。",
    "full": "这个团已经满员啦～",
    "expired": "这个团已经过了截止时间～",
    "closed": "「{campaign}」活动已结束，敬请关注下一次活动～",
    "no_campaign": "当前没有进行中的拼团活动，敬请期待～",
    "not_started": "「{campaign}」还没开始，{starts} 开团，记得来哦～",
    "sold_out": "「{campaign}」已经被抢光啦，下次早点来～",
    "already_member": "您已经在这个团里了（{members}/{size} 人），把团号 {code} 分享给好友一起拼吧～",
    "limit": "「{campaign}」每人限参加 {limit} 个团，您已经参加过啦～",
    "not_new": "这个团仅限新朋友参加，您可以回复「开团」自己开一个团～",
}
INVITE_REFUSED = {
    "unknown": "没有找到邀请码 {code}，请核对后再发一次（8 位字母或数字）。",
    "self": "不能填写自己的邀请码哦，把它分享给好友吧～",
    "existing": "邀请码仅限新朋友使用，您是我们的老朋友啦～",
    "already": "您已经是 {inviter} 邀请来的好友啦～",
    "loop": "这个邀请码不能使用（你们已经是邀请关系）。",
    "missing": "请发送好友给您的 8 位邀请码，例如「邀请码 K7P3QX9M」。",
}


def register(hooks: Hooks, growth: Growth, personal_group_codes: PersonalGroupCodes | None = None) -> Hooks:
    """Add the growth actions and checks to `hooks` (arrivals and stages are pipeline stages).

    `personal_group_codes` makes customers' personal group invites (`group_invite`, group fission);
    without it the action answers that no invite can be made."""
    GroupInvite(personal_group_codes).register(hooks)
    actions = GrowthActions(growth)
    hooks.actions.update({
        "group_buy.open": actions.open_group,
        "group_buy.join": actions.join_group,
        "group_buy.status": actions.group_status,
        "invite.show": actions.show_invite,
        "invite.claim": actions.claim_invite,
    })
    hooks.checks.update({"group_buy.code_given": actions.group_code_given,
                         "invite.code_given": actions.invite_code_given})
    return hooks


class GrowthActions:
    def __init__(self, growth: Growth) -> None:
        self.growth = growth

    # ------------------------------------------------------------ group-buy

    async def open_group(self, turn: Turn, params: Mapping[str, Any]) -> ActionResult:
        session, now = turn.session, utcnow()
        code = str(params.get("campaign", ""))
        campaign = await campaign_by_code(session, code) if code else await running_campaign(session, now)
        if campaign is None:
            metrics.GROUP_JOINS.labels("open", "no_campaign").inc()
            return self._refused("no_campaign", None, None, "")
        try:
            group = await group_buys.open_group(session, campaign, turn.customer, now)
        except group_buys.GroupRefused as refusal:
            metrics.GROUP_JOINS.labels("open", refusal.reason).inc()
            others = await group_buys.open_groups(session, campaign.id, now, exclude=turn.customer.id)
            return self._refused(refusal.reason, None, campaign, "", others)
        await social.bump(session, [turn.customer.id], "groups_led", self.growth.settings.social_weights)
        metrics.GROUP_JOINS.labels("open", "opened").inc()
        return ActionResult(slots=self._group_slots(group, campaign))

    async def join_group(self, turn: Turn, params: Mapping[str, Any]) -> ActionResult:
        session, now = turn.session, utcnow()
        code = self._group_code(turn)
        if not code:
            return await self.open_group(turn, params)
        try:
            joined = await group_buys.join_group(session, code, turn.customer, self.growth.settings.purchase_stages, now)
        except group_buys.GroupRefused as refusal:
            metrics.GROUP_JOINS.labels("join", refusal.reason).inc()
            others: Sequence[GroupBuy] = []
            if refusal.reason in ("full", "expired", "not_new") and refusal.campaign is not None:
                others = await group_buys.open_groups(session, refusal.campaign.id, now, exclude=turn.customer.id)
            return self._refused(refusal.reason, refusal.group, refusal.campaign, code, others)
        metrics.GROUP_JOINS.labels("join", "filled" if joined.filled else "joined").inc()
        slots = {**self._group_slots(joined.group, joined.campaign), "group_filled": "yes" if joined.filled else ""}
        if not joined.filled:
            return ActionResult(slots=slots)
        effects, signals = await self.growth.group_filled(session, joined.group, joined.campaign, turn.customer)
        return ActionResult(slots=slots, effects=tuple(effects), signals=tuple(signals))

    async def group_status(self, turn: Turn, params: Mapping[str, Any]) -> ActionResult:
        groups = await group_buys.groups_of(turn.session, turn.customer.id, limit=1)
        if not groups:
            return ActionResult()
        group = groups[0]
        campaign = await turn.session.get(Campaign, group.campaign_id)
        assert campaign is not None
        status = {"open": "拼团中", "filled": "已成团", "expired": "已过期"}[group.status]
        return ActionResult(slots={**self._group_slots(group, campaign), "group_status": status})

    async def group_code_given(self, turn: Turn) -> bool:
        return bool(self._group_code(turn))

    def _group_code(self, turn: Turn) -> str:
        return _code_from(turn, "group_code", GROUP_PREFIX, GROUP_LENGTH)

    def _group_slots(self, group: GroupBuy, campaign: Campaign) -> dict[str, str]:
        link = self.growth.share_link(f"{GROUP_PREFIX}{group.code}")
        share = f"分享链接：{link}" if link else f"让好友给我发送「参团 {group.code}」即可加入"
        return {
            "group_code": group.code, "group_link": link, "group_share": share, "group_size": str(group.size),
            "group_members": str(group.members), "group_deadline": self.growth.local_time(as_utc(group.deadline)),
            "group_price": yuan(campaign.price_cents), "campaign_name": campaign.name,
        }

    def _refused(
        self, reason: str, group: GroupBuy | None, campaign: Campaign | None, code: str,
        others: Sequence[GroupBuy] = (),
    ) -> ActionResult:
        text = REFUSED[reason].format(
            code=group.code if group else code, campaign=campaign.name if campaign else "",
            members=group.members if group else "", size=group.size if group else "",
            limit=campaign.limit_per_customer if campaign else "",
            starts=self.growth.local_time(as_utc(campaign.starts_at)) if campaign else "",
        )
        if reason in ("full", "expired"):
            text += self.growth.join_offer(others) or "回复「开团」自己开一个新团吧～"
        return ActionResult(slots={"group_refused": reason}, replies=(text,))

    # ------------------------------------------------------------ invite-for-reward

    async def show_invite(self, turn: Turn, params: Mapping[str, Any]) -> ActionResult:
        code = await referrals.invite_code_for(turn.session, turn.customer.id)
        friends = await turn.session.scalar(
            select(func.count()).select_from(Referral).where(Referral.inviter_id == turn.customer.id)
        )
        link = self.growth.share_link(f"{INVITE_PREFIX}{code}")
        share = f"分享链接：{link}" if link else f"好友给我发送「邀请码 {code}」即可"
        return ActionResult(slots={"invite_code": code, "invite_link": link, "invite_share": share,
                                   "invite_friends": str(friends or 0)})

    async def claim_invite(self, turn: Turn, params: Mapping[str, Any]) -> ActionResult:
        """A typed code attributes the customer now; an arrival through a code was attributed on arrival."""
        session, customer = turn.session, turn.customer
        typed = _code_from(turn, "invite_code", INVITE_PREFIX, INVITE_LENGTH) if not event_code(
            turn.event, INVITE_PREFIX) else ""
        if typed:
            inviter_id = await referrals.owner_of_code(session, typed)
            if inviter_id is None:
                return self._invite_refused("unknown", typed)
            effects, refused = await self.growth.attribute(session, customer, inviter_id, typed, turn.event.channel)
            if refused:
                return self._invite_refused(refused, typed, await self._inviter_name(turn), effects)
            return ActionResult(slots={"inviter_name": await self._inviter_name(turn)}, effects=tuple(effects))
        name = await self._inviter_name(turn)
        if name:
            return ActionResult(slots={"inviter_name": name})
        if turn.event.kind == "message" and not event_code(turn.event, INVITE_PREFIX):
            return self._invite_refused("missing", "")
        return ActionResult()

    async def invite_code_given(self, turn: Turn) -> bool:
        return bool(_code_from(turn, "invite_code", INVITE_PREFIX, INVITE_LENGTH))

    async def _inviter_name(self, turn: Turn) -> str:
        inviter_id = await referrals.inviter_of(turn.session, turn.customer.id)
        if inviter_id is None:
            return ""
        inviter = await turn.session.get(Customer, inviter_id)
        return (inviter.display_name if inviter else "") or "您的好友"

    def _invite_refused(self, reason: str, code: str, inviter: str = "", effects: Sequence[Effect] = ()
                        ) -> ActionResult:
        text = INVITE_REFUSED[reason].format(code=code, inviter=inviter or "好友")
        return ActionResult(slots={"invite_refused": reason}, replies=(text,), effects=tuple(effects))

def _code_from(turn: Turn, slot: str, prefix: str, length: int) -> str:
    """The code in the slot, the arrival's scene, or the message text (with spaces, dashes, full-width)."""
    if turn.slots.get(slot):
        return normalise_code(turn.slots[slot])
    scene = event_code(turn.event, prefix)
    if scene:
        return scene
    return next((code for code in codes_in(turn.event.text) if len(code) == length), "")
