"""What a customer's joining a group through a live code means: tags, the code's new groups, group fission.

The group callbacks (the change_external_chat handling) call `GroupJoins.joined` for each
customer who joined, in the callback's transaction, with the member's code and inviter already
resolved from its `state`. Everything here is idempotent by the database: tags by their primary
key, a learnt group under the code's row lock, a fission milestone by (friend, group_joined) and a
grant by its key, so a callback delivered twice or a friend who leaves and joins again counts once.

A join is not a customer's turn: nobody is answered, so everyone told (the inviter) is told by a
`Notify` on the channel they last chatted on.
"""

from __future__ import annotations

import logging

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.events import Effect, Notify
from crm_store import rewards, tags
from crm_store.customers import live_customer, record
from crm_store.group_chat_models import GroupChat, GroupChatMember, GroupJoinCode
from crm_store.group_join_codes import learn_group
from crm_store.growth_models import ReferralMilestone
from crm_store.models import Customer
from flows.growth import Growth

log = logging.getLogger("scrm.groupchat.joins")

MILESTONE = "group_joined"  # the reward rules' `when` for group fission


class GroupJoins:
    def __init__(self, growth: Growth) -> None:
        self.growth = growth

    async def joined(self, session: AsyncSession, group: GroupChat, member: GroupChatMember) -> list[Effect]:
        """A customer joined `group`; the effects for others (the inviter's notifications and rewards)."""
        if member.kind != "customer" or member.customer_id is None or member.code_id is None:
            return []
        code = await session.get(GroupJoinCode, member.code_id)
        customer = await session.get(Customer, member.customer_id)
        if code is None or customer is None:
            return []
        root = await session.get(GroupJoinCode, code.parent_id) if code.parent_id is not None else code
        root = root or code
        if await learn_group(session, code.id, group):
            log.info("groupchat.code.group_learned code=%s chat=%s", code.code, group.chat_id)
        # the join itself is on the customer's timeline already (group.joined, with the code)
        await tags.add_tags(session, customer, root.tags, f"groupcode:{root.code}")
        inviter_id = member.inviter_id or code.inviter_id
        if inviter_id is not None:  # a personal code outlives its owner's merge into another customer
            inviter_id = (await live_customer(session, inviter_id)).id
        if inviter_id is None or inviter_id == customer.id:
            return []
        return await self._fission(session, customer, inviter_id, group, code)

    async def _fission(
        self, session: AsyncSession, friend: Customer, inviter_id: int, group: GroupChat, code: GroupJoinCode
    ) -> list[Effect]:
        """The friend joined through the inviter's personal code: counted once per friend, rewards by tier."""
        counted = await session.scalar(select(exists().where(ReferralMilestone.friend_id == friend.id,
                                                             ReferralMilestone.milestone == MILESTONE)))
        await record(session, inviter_id, "group.fission", {"friend": friend.id, "chat": group.chat_id,
                                                             "code": code.code, "first": not counted})
        grants = await rewards.qualify(session, friend.id, MILESTONE, self.growth.settings.rewards,
                                       inviter_id=inviter_id)
        log.info("groupchat.fission.joined inviter=%s friend=%s code=%s grants=%s", inviter_id, friend.id, code.code,
                 len(grants))
        effects: list[Effect] = []
        if not counted and not any(grant.customer_id == inviter_id for grant in grants):
            name = friend.display_name or "一位好友"
            effects.append(Notify(inviter_id, f"您邀请的好友 {name} 已进群，继续邀请好友进群可获得奖励～",
                                  "group.fission"))
        return effects + await self.growth.grant_effects(session, grants, friend)
