"""The scheduled job that turns new timeline events into webhook deliveries in the outbox.

As with the other jobs, APScheduler is only the clock: the position lives in the
`webhook_cursors` row, locked while a batch is read and queued, and every outbox row has
the dedup key `webhook:<endpoint id>:<timeline id>`, so any number of instances can run
the feed and each event is queued once per endpoint. On PostgreSQL only events of
transactions that have ended are read (crm_store.webhooks), so one that commits late, after
events numbered above its own were queued, is still read in full.
"""

from __future__ import annotations

import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.jobs import every
from crm_store.webhooks import feed_batch

log = logging.getLogger("scrm.webhooks")

BATCH = 500


class WebhookFeed:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], interval_s: float) -> None:
        self.sessions = sessions
        self.interval_s = interval_s
        self.on_outbox = lambda: None

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        every(scheduler, self.interval_s, "webhook-feed", self.run_due)

    async def run_due(self) -> int:
        """Queue deliveries for every event after the cursor; how many outbox rows."""
        queued = 0
        while True:
            async with self.sessions() as session, session.begin():
                read, wrote = await feed_batch(session, BATCH)
            queued += wrote
            if read < BATCH:
                break
        if queued:
            log.info("webhooks.feed queued=%s", queued)
            self.on_outbox()
        return queued
