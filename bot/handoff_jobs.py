"""The handoffs' scheduled work: queues that can be offered now, offers nobody took, idle reps.

As with the waker, APScheduler is only the clock: what is due lives in `handoffs.due_at`,
claimed with FOR UPDATE SKIP LOCKED, so a restart fires what came due while the process
was down and two instances never escalate the same handoff. Each step's messages are
written in its transaction with keys derived from the handoff and its due time, so a
step run again after a crash cannot queue them twice.
"""

from __future__ import annotations

import logging
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.effects_writer import write_side_effect
from bot.jobs import every
from crm_store.handoffs import claim_due
from crm_store.models import as_utc, utcnow
from flows.handoff_desk import HandoffDesk

log = logging.getLogger("scrm.handoffs")

DUE_BATCH = 100


class HandoffJobs:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], desk: HandoffDesk, interval_s: float, agent_id: int = 0
    ) -> None:
        self.sessions = sessions
        self.desk = desk
        self.interval_s = interval_s
        self.agent_id = agent_id
        self.on_outbox = lambda: None

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        every(scheduler, self.interval_s, "handoffs-due", self.run_due)

    async def run_due(self, now: datetime | None = None) -> int:
        """Handle every handoff due at `now`; how many."""
        handled = 0
        while True:
            wrote = 0
            async with self.sessions() as session, session.begin():
                due = await claim_due(session, now or utcnow(), DUE_BATCH)
                for handoff in due:
                    assert handoff.due_at is not None
                    origin = f"handoff:{handoff.id}:{int(as_utc(handoff.due_at).timestamp() * 1000)}"
                    status = handoff.status
                    for index, effect in enumerate(await self.desk.due(session, handoff, now or utcnow())):
                        wrote += await write_side_effect(session, f"{origin}#{index}", effect, self.agent_id)
                    log.info("handoffs.due id=%s was=%s now=%s rep=%s", handoff.id, status, handoff.status,
                             handoff.rep_userid)
            handled += len(due)
            if wrote:
                self.on_outbox()
            if len(due) < DUE_BATCH:
                return handled
