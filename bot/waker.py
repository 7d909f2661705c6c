"""Wakes waiting conversations when their timer is due: `wait` steps, ask time-outs, inactivity.

APScheduler is only the clock: one interval job that takes no objects. What is due
lives in the store (`conversations.wake_at`) and is claimed with FOR UPDATE SKIP
LOCKED, so a restart loses nothing and several instances never wake the same
conversation twice; the wake-up and its replies commit in one transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.effects_writer import write_effects
from bot.jobs import every
from bot.worker import TurnPipeline
from core import metrics
from core.events import InboundEvent
from core.reply_address import ReplyAddress
from crm_store.conversations import claim_due
from crm_store.customers import live_customer
from crm_store.models import Conversation, utcnow
from flows.turn import Turn

log = logging.getLogger("scrm.waker")

WAKE_BATCH = 100


class Waker:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], pipeline: TurnPipeline, interval_s: float,
        agent_id: int = 0,
    ) -> None:
        self.sessions = sessions
        self.pipeline = pipeline
        self.interval_s = interval_s
        self.agent_id = agent_id
        self.on_outbox = lambda: None

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        every(scheduler, self.interval_s, "wake-conversations", self.wake_due)

    async def wake_due(self, now: datetime | None = None) -> int:
        """Wake every conversation due at `now` (default: the current time); how many were woken."""
        woken = 0
        while True:
            async with self.sessions() as session, session.begin():
                due = await claim_due(session, now or utcnow(), WAKE_BATCH)
                for conversation in due:
                    await self._wake(session, conversation)
            woken += len(due)
            metrics.CONVERSATIONS_WOKEN.inc(len(due))
            if due:
                self.on_outbox()
            if len(due) < WAKE_BATCH:
                return woken

    async def _wake(self, session: AsyncSession, conversation: Conversation) -> None:
        customer = await live_customer(session, conversation.customer_id)
        target = ReplyAddress.from_data(conversation.reply_to) or ReplyAddress("kf", "")
        assert conversation.wake_at is not None
        origin = f"wake:{conversation.id}:{int(conversation.wake_at.timestamp() * 1000)}"
        event = InboundEvent(channel=target.channel, kind="timer", dedup_key=origin, sender=target.user,
                             account=target.account)
        try:
            async with session.begin_nested():
                effects = await self.pipeline.run(Turn(session, event, customer, conversation=conversation))
                await write_effects(session, origin, event, customer, effects, self.agent_id)
        except Exception:  # noqa: BLE001 - one broken conversation must not stop the others
            log.exception("waker.failed conversation=%s", conversation.id)
            conversation.status, conversation.end_reason, conversation.wake_at = "ended", "wake_failed", None
