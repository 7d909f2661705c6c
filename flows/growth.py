"""The growth mechanics inside a turn: what codes on arrival mean, and what follows a filled group, a
first purchase or an expired group.

The store modules decide (a seat, a unit of stock, an attribution, a grant, each once);
this module turns their outcomes into what people are told: the customer of the turn
gets replies, everyone else (the group's other members, the inviter) gets a `Notify`
on the channel they last chatted on, in the same transaction as the change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from core import metrics
from core.events import Effect, InboundEvent, Note, Notify, Reply
from crm_store import channels, group_buys, referrals, rewards, social, tags
from crm_store import lifecycle as stages
from crm_store.campaigns import yuan
from crm_store.codes import CHANNEL_PREFIX, GROUP_PREFIX, INVITE_PREFIX, normalise_code
from crm_store.customers import record
from crm_store.growth_models import Campaign, GroupBuy
from crm_store.growth_settings import GrowthSettings
from crm_store.models import Customer
from flows.turn import Signal, Turn

log = logging.getLogger("scrm.growth")

Signals = list[Signal]


@dataclass(frozen=True)
class ArrivalResult:
    """What an arrival through a code (channel, invite, group) asks for: a flow to start, effects."""

    flow: str = ""
    effects: tuple[Effect, ...] = ()
    signals: tuple[Signal, ...] = ()


class Growth:
    def __init__(self, settings: GrowthSettings, lifecycle: stages.Lifecycle) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.zone = ZoneInfo(settings.timezone)

    # ------------------------------------------------------------ arrivals through a code

    async def arrival(self, turn: Turn) -> ArrivalResult:
        """A customer arrived through a code: a channel (its flow and tags), an invite or a group (attribution)."""
        scene = turn.event.scene.strip()
        lowered = scene.lower()
        if not scene:
            return ArrivalResult()
        if lowered.startswith(CHANNEL_PREFIX):
            return await self._channel_arrival(turn, scene)
        inviter_id: int | None = None
        if lowered.startswith(INVITE_PREFIX):
            inviter_id = await referrals.owner_of_code(turn.session, normalise_code(scene))
        elif lowered.startswith(GROUP_PREFIX):
            group = await group_buys.group_by_code(turn.session, normalise_code(scene))
            inviter_id = group.leader_id if group is not None else None
        if inviter_id is None:
            return ArrivalResult(effects=(Note("code.unknown", {"scene": scene[:64]}),))
        effects, _ = await self.attribute(turn.session, turn.customer, inviter_id, scene, turn.event.channel)
        return ArrivalResult(effects=tuple(effects))

    async def _channel_arrival(self, turn: Turn, code: str) -> ArrivalResult:
        session, customer, event = turn.session, turn.customer, turn.event
        channel = await channels.channel_by_code(session, code)
        if channel is None or not channel.active:
            return ArrivalResult(effects=(Note("channel.unknown", {"code": code[:64]}),))
        rep = event.account if event.channel == "contacts" else ""
        first = await channels.record_arrival(session, channel, customer, rep, channels.brand_day(self.settings.timezone))
        added = await tags.add_tags(session, customer, channel.tags, f"channel:{channel.code}")
        note = Note("channel.arrived", {"channel": channel.code, "name": channel.name, "first_touch": first})
        metrics.CHANNEL_ARRIVALS.labels(channel.code).inc()
        return ArrivalResult(channel.welcome_flow, (note,), tuple(("tag", name) for name in added))

    async def attribute(
        self, session: AsyncSession, friend: Customer, inviter_id: int, via: str, channel: str
    ) -> tuple[list[Effect], str]:
        """Attribute `friend` to the inviter, tell the inviter, grant arrival rewards; (effects, refusal)."""
        outcome = await referrals.attribute(session, friend, inviter_id, via, channel,
                                            self.settings.new_customer_window_s)
        if outcome.referral is None:
            return [Note("referral.refused", {"inviter": inviter_id, "reason": outcome.refused, "via": via})], \
                outcome.refused
        await social.bump(session, [inviter_id], "friends", self.settings.social_weights)
        await record(session, inviter_id, "referral.friend_arrived", {"friend": friend.id, "via": via})
        metrics.REFERRALS.inc()
        effects: list[Effect] = [Note("referral.attributed", {"inviter": inviter_id, "via": via})]
        grants = await rewards.qualify(session, friend.id, "arrival", self.settings.rewards)
        if not any(grant.customer_id == inviter_id for grant in grants):
            effects.append(Notify(inviter_id, f"您邀请的好友 {_name(friend)} 来了！好友下单后您还能获得奖励～",
                                  "referral.friend_arrived"))
        effects += await self._grant_effects(session, grants, friend, friend.id)
        return effects, ""

    # ------------------------------------------------------------ stages, conversions, rewards

    async def stage_reached(self, session: AsyncSession, customer: Customer, stage: str, current_id: int,
                            invited: bool = True) -> list[Effect]:
        """`customer` entered `stage`: a first purchase converts a referral (and counts up the tree);
        stage rules may grant rewards. `invited` False (read with the customer: nobody referred them)
        skips both: there is no referral to convert and no inviter to reward."""
        if not invited:
            return []
        if stage in self.settings.purchase_stages:
            inviter_id = await referrals.mark_converted(session, customer.id)
            if inviter_id is not None:
                weights = self.settings.social_weights
                await social.bump(session, [inviter_id], "friends_converted", weights)
                above = await referrals.ancestors(session, inviter_id, self.settings.referral_depth - 1)
                await social.bump(session, above, "downstream_converted", weights)
        grants = await rewards.qualify(session, customer.id, f"stage:{stage}", self.settings.rewards)
        return await self._grant_effects(session, grants, customer, current_id)

    async def grant_effects(
        self, session: AsyncSession, grants: Sequence[rewards.Grant], friend: Customer
    ) -> list[Effect]:
        """Grants made outside a customer's turn (a friend joined a group): every receiver is notified."""
        return await self._grant_effects(session, grants, friend, current_id=0)

    async def _grant_effects(
        self, session: AsyncSession, grants: Sequence[rewards.Grant], friend: Customer, current_id: int
    ) -> list[Effect]:
        effects: list[Effect] = []
        for grant in grants:
            rule = grant.rule
            text = (rule.message or "恭喜！您获得了奖励：{reward}").replace("{reward}", rule.reward)
            text = text.replace("{friend}", _name(friend))
            data = {"rule": rule.id, "reward": rule.reward, "friend": grant.friend_id, "entry": grant.entry_id}
            await record(session, grant.customer_id, "reward.granted", data)
            metrics.REWARDS_GRANTED.labels(rule.id).inc()
            effects.append(Reply(text) if grant.customer_id == current_id else
                           Notify(grant.customer_id, text, "reward.granted"))
        return effects

    # ------------------------------------------------------------ groups

    async def group_filled(
        self, session: AsyncSession, group: GroupBuy, campaign: Campaign, current: Customer
    ) -> tuple[list[Effect], Signals]:
        """Every member is told at once, tagged, moved to the campaign's stage, and may earn rewards."""
        effects: list[Effect] = []
        told: list[Effect] = [Reply(text := (f"🎉 拼团成功！「{campaign.name}」{group.size} 人团已满员（团号 {group.code}），"
                f"拼团价 ¥{yuan(campaign.price_cents)}，我们会尽快为您安排～"))]
        signals: Signals = []
        fill_tags = [*self.settings.group_fill_tags, *campaign.fill_tags]
        for member_id in await group_buys.member_ids(session, group.id):
            member = current if member_id == current.id else await session.get(Customer, member_id)
            if member is None:
                continue
            added = await tags.add_tags(session, member, fill_tags, f"group:{group.code}")
            await record(session, member_id, "group.filled", {"group": group.code, "campaign": campaign.code})
            member_signals: Signals = [("tag", name) for name in added]
            if campaign.fill_stage:
                member_signals += await self._move(session, member, campaign.fill_stage, f"group:{group.code}")
            for kind, value in member_signals:
                if kind == "stage":
                    effects += await self.stage_reached(session, member, value, current.id)
            grants = await rewards.qualify(session, member_id, "group_filled", self.settings.rewards)
            effects += await self._grant_effects(session, grants, member, current.id)
            if member_id == current.id:
                signals += member_signals
            else:
                told.append(Notify(member_id, text, "group.filled"))
        await social.bump(session, [group.leader_id], "groups_filled", self.settings.social_weights)
        metrics.GROUPS_CLOSED.labels("filled").inc()
        return told + effects, signals  # everyone hears of the group first, then of rewards

    async def expire_due(self, session: AsyncSession, now: datetime, limit: int) -> list[tuple[GroupBuy, list[Effect]]]:
        """Groups past their deadline: expired, seats given back, members told and offered other groups."""
        expired = []
        for group in await group_buys.expire_due(session, now, limit):
            campaign = await session.get(Campaign, group.campaign_id)
            assert campaign is not None
            members = await group_buys.member_ids(session, group.id)
            others = await group_buys.open_groups(session, campaign.id, now, exclude=group.leader_id)
            offer = self.join_offer(others) if campaign.status == "open" else ""
            text = f"很遗憾，您的拼团「{campaign.name}」（团号 {group.code}）未能在截止前成团，已自动取消，名额已释放。"
            text += offer or ("回复「开团」可以再开一个新团～" if campaign.status == "open" else "")
            effects: list[Effect] = []
            for member_id in members:
                await record(session, member_id, "group.expired", {"group": group.code, "campaign": campaign.code})
                effects.append(Notify(member_id, text, "group.expired"))
            metrics.GROUPS_CLOSED.labels("expired").inc()
            expired.append((group, effects))
        return expired

    def join_offer(self, groups: Sequence[GroupBuy]) -> str:
        if not groups:
            return ""
        listed = "、".join(f"{group.code}（{group.members}/{group.size}）" for group in groups)
        return f"回复「开团」开一个新团，或发送「参团 团号」加入正在拼的团：{listed}"

    async def _move(self, session: AsyncSession, customer: Customer, stage: str, reason: str) -> Signals:
        try:
            if await stages.set_stage(session, customer, stage, reason, self.lifecycle):
                return [("stage", self.lifecycle.resolve(stage))]
        except stages.StageNotAllowed as exc:
            await record(session, customer.id, "stage.refused", {"stage": stage, "reason": str(exc)})
        return []

    # ------------------------------------------------------------ what customers see

    def share_link(self, code: str) -> str:
        """A kf link that carries the code as scene_param: it works for every friend, in any WeChat."""
        base = self.settings.share_link
        if not base:
            return ""
        return f"{base}{'&' if '?' in base else '?'}scene_param={code}"

    def local_time(self, moment: datetime) -> str:
        return f"{moment.astimezone(self.zone):%m-%d %H:%M}"


def _name(customer: Customer) -> str:
    return customer.display_name or "一位好友"


def event_code(event: InboundEvent, prefix: str) -> str:
    """The code an arrival's scene carries, when it is of this kind."""
    return normalise_code(event.scene) if event.scene.lower().startswith(prefix) else ""
