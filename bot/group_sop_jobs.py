"""The group-push job: SOP occurrences become pushes, due pushes become tasks, then reminders and results.

One job every `groupchats.push_check_s`; any number of schedulers may run it at once. An SOP
occurrence is created once (its source_key is unique, crm_store.group_pushes.ensure_occurrence)
and only if it fell due since this scheduler's last look and not more than LOOKBACK ago: a
scheduler back after a week off makes at most a day's occurrences, not seven days of them.
The SOP files are read again on every run; a broken file is logged and the last good set kept
(`scrm groupchats sops validate` lists every problem).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.api_budget import ApiBudgets
from bot.group_push_dispatch import DispatchOutcome, GroupPushDispatcher
from bot.group_push_results import GroupPushFollowUp, ResultsOutcome
from bot.jobs import every
from bot.settings import Settings
from bot.wechat_api import WeChatApi
from crm_store.group_pushes import GroupPushError, ensure_occurrence
from crm_store.models import utcnow
from flows.errors import FlowLoadError
from flows.group_sops import GroupSop, group_sop_dir, load_group_sops, occurrences

log = logging.getLogger("scrm.groupchat")

LOOKBACK = timedelta(days=1)


@dataclass(frozen=True)
class GroupJobOutcome:
    occurrences: int
    dispatch: DispatchOutcome
    reminded: int
    results: ResultsOutcome


class GroupPushJobs:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], dispatcher: GroupPushDispatcher,
                 follow_up: GroupPushFollowUp, sop_directory: Path, default_timezone: str,
                 check_s: float = 30.0) -> None:
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.follow_up = follow_up
        self.sop_directory = sop_directory
        self.default_timezone = default_timezone
        self.check_s = check_s
        self.last_check: datetime | None = None
        self.sops: dict[str, GroupSop] = {}

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        every(scheduler, self.check_s, "group-pushes", self.run)

    async def run(self, now: datetime | None = None) -> GroupJobOutcome:
        """One look: occurrences, tasks, reminders, results (`now`: a test's clock)."""
        created = await self.create_occurrences(now)
        dispatched = await self.dispatcher.dispatch_due(now)
        reminded = await self.follow_up.remind_due(now)
        results = await self.follow_up.read_due(now)
        return GroupJobOutcome(created, dispatched, reminded, results)

    def reload(self) -> dict[str, GroupSop]:
        try:
            self.sops, _sources = load_group_sops(self.sop_directory, self.default_timezone)
        except FlowLoadError as exc:
            log.error("groupchat.sops.rejected directory=%s: the last good SOPs are kept\n%s", self.sop_directory, exc)
        return self.sops

    async def create_occurrences(self, now: datetime | None = None) -> int:
        """A push for each SOP step due since the last look (at most LOOKBACK ago); how many this call made."""
        now = now or utcnow()
        since = now - LOOKBACK if self.last_check is None else max(self.last_check, now - LOOKBACK)
        created = 0
        for sop in self.reload().values():
            if not sop.enabled:
                continue
            for occurrence in occurrences(sop, since, now):
                try:
                    async with self.sessions() as session, session.begin():
                        push, new = await ensure_occurrence(session, occurrence.source_key, occurrence.spec(), now)
                except GroupPushError as exc:
                    log.error("groupchat.sop.refused key=%s: %s", occurrence.source_key, exc)
                    continue
                if new:
                    created += 1
                    log.info("groupchat.sop.occurrence key=%s push=%s groups=%s", occurrence.source_key, push.id,
                             push.audience)
        self.last_check = now
        return created


def build_group_push_jobs(sessions: async_sessionmaker[AsyncSession], api: WeChatApi,
                          settings: Settings) -> GroupPushJobs:
    """The job as the runtime runs it, from settings (the contacts credential calls the group-message APIs)."""
    groups = settings.groupchats
    budgets = ApiBudgets(api.state, settings.sender.budget_share)  # shared with every process's senders
    dispatcher = GroupPushDispatcher(sessions, api, groups, None, settings.nurture.timezone,  # WeCom's rule now
                                     budgets)
    return GroupPushJobs(sessions, dispatcher, GroupPushFollowUp(sessions, api, groups, budgets),
                         group_sop_dir(Path(settings.flows.directory)), settings.nurture.timezone, groups.push_check_s)
