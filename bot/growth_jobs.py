"""The growth mechanics' scheduled work: group deadlines and the rotas of capped contact ways.

Like the waker, the jobs take no objects and keep nothing in the job store: what is
due lives in the database (`group_buys.deadline`), so a restart fires what came due
while the process was down, and rows are claimed with FOR UPDATE SKIP LOCKED, so two
instances never expire the same group. An expiry, its released stock and the
members' notifications commit together.
"""

from __future__ import annotations

import logging
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel_rota import refresh_rotas
from bot.effects_writer import write_notification
from bot.jobs import every
from bot.wechat_api import WeChatApi
from core.events import Notify
from crm_store.models import utcnow
from flows.growth import Growth

log = logging.getLogger("scrm.growth")

EXPIRE_BATCH = 100
ROTA_INTERVAL_S = 300  # caps are daily; a few minutes late to take a rep off the rota is one or two adds


class GrowthJobs:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], growth: Growth, contacts_api: WeChatApi,
        interval_s: float, agent_id: int = 0,
    ) -> None:
        self.sessions = sessions
        self.growth = growth
        self.contacts_api = contacts_api
        self.interval_s = interval_s
        self.agent_id = agent_id
        self.on_outbox = lambda: None

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        every(scheduler, self.interval_s, "expire-groups", self.expire_groups)
        every(scheduler, ROTA_INTERVAL_S, "refresh-rotas", self.refresh_rotas)

    async def expire_groups(self, now: datetime | None = None) -> int:
        """Expire every open group whose deadline is past at `now`; how many."""
        expired = 0
        while True:
            async with self.sessions() as session, session.begin():
                batch = await self.growth.expire_due(session, now or utcnow(), EXPIRE_BATCH)
                for group, effects in batch:
                    for index, effect in enumerate(effects):
                        assert isinstance(effect, Notify)
                        await write_notification(session, f"group-expired:{group.id}#{index}", effect, self.agent_id)
            expired += len(batch)
            if batch:
                log.info("growth.groups_expired count=%s", len(batch))
                self.on_outbox()
            if len(batch) < EXPIRE_BATCH:
                return expired

    async def refresh_rotas(self) -> int:
        return await refresh_rotas(self.sessions, self.contacts_api, self.growth.settings.timezone)
