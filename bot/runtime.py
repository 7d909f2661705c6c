"""The running parts of one bot instance, built from settings and closed in reverse order.

store → shared state → HTTP client and API clients → NLU → kf puller, inbox worker,
outbox sender. The web app (bot/app.py) and the CLI both use this, so there is one way
to assemble the product.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.api_budget import ApiBudgets
from bot.group_chat_events import GroupChatEvents
from bot.group_join_ways import PersonalJoinWays
from bot.group_sop_jobs import GroupPushJobs, build_group_push_jobs
from bot.growth_jobs import GrowthJobs
from bot.handoff_jobs import HandoffJobs
from bot.kf_sync import KfPuller
from bot.media_fetch import MediaFetcher
from bot.media_links import links_problem, signed_media_url
from bot.media_to_reps import RepMedia
from bot.media_uploads import MediaUploads
from bot.nurture_dispatch import NurtureDispatcher
from bot.profiles import ProfileLookup
from bot.queue_runner import QueueRunner
from bot.rep_commands import RepCommands
from bot.sender import OutboxSender
from bot.settings import Settings
from bot.waker import Waker
from bot.webhook_feed import WebhookFeed
from bot.webhook_sender import WebhookSender
from bot.wechat_api import WeChatApi, oa_credential, wecom_credential
from bot.worker import InboxWorker, TurnPipeline
from core.shared_state import SharedState, open_shared_state
from crm_store.db import count_store_work, create_engine, session_factory
from crm_store.media_store import MediaStore, build_media_store
from crm_store.models import InboxItem, OutboxItem
from crm_store.work_queue import due_count
from flows.assembly import Domain, assemble
from flows.errors import FlowLoadError
from flows.faq import read_faq
from flows.faq_model import FaqBook
from flows.publishing import publish_if_unpublished
from nlu.client import NluClient
from nlu.server import ManagedRasa

log = logging.getLogger("scrm.runtime")


def directory_faq(settings: Settings) -> FaqBook:
    """The FAQ of the configured flow directory: what the NLU model trains on and the keyword rules know.

    A broken faq.yaml must not keep the bot from starting: it is logged loudly and the NLU goes
    without the FAQ (`scrm flows validate` lists every error; `scrm faq publish` refuses it).
    """
    try:
        return read_faq(Path(settings.flows.directory), settings.lifecycle)
    except FlowLoadError as exc:
        log.error("nlu.faq.rejected directory=%s: the NLU runs without the FAQ until it is fixed\n%s",
                  settings.flows.directory, exc)
        return FaqBook()


def nlu_client(settings: Settings, state: SharedState, managed_rasa: ManagedRasa | None) -> NluClient:
    """The NLU client with the FAQ's keyword rules, following the managed Rasa through model swaps."""
    book = directory_faq(settings)
    nlu = NluClient(
        settings.nlu,
        state,
        rasa_url=managed_rasa.url if managed_rasa else None,
        token=managed_rasa.token if managed_rasa else None,
        faq=book.training_rows(),
        faq_titles={entry.id: entry.title for entry in book.entries.values()},
    )
    if managed_rasa is not None:
        managed_rasa.on_swap(nlu.use_server)
    return nlu


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    state: SharedState
    http: aiohttp.ClientSession
    apis: dict[str, WeChatApi]
    nlu: NluClient
    inbox: QueueRunner[InboxItem]
    outbox: QueueRunner[OutboxItem]
    worker: InboxWorker
    sender: OutboxSender
    domain: Domain | None = None  # the assembled conversation layer (None: a pipeline was given)
    waker: Waker | None = None  # with the assembled domain
    growth_jobs: GrowthJobs | None = None  # likewise
    handoff_jobs: HandoffJobs | None = None  # likewise
    nurture: NurtureDispatcher | None = None  # likewise
    managed_rasa: ManagedRasa | None = None
    webhook_feed: WebhookFeed | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    scheduler: AsyncIOScheduler | None = None
    media_fetcher: MediaFetcher | None = None  # downloads what customers send into the media store
    media_store: MediaStore | None = None  # the one store: the fetcher's, links' (bot/media_routes.py), uploads'
    group_pushes: GroupPushJobs | None = None  # group pushes and group SOPs (with the assembled domain)

    @classmethod
    async def open(
        cls, settings: Settings, pipeline: TurnPipeline | None = None, managed_rasa: ManagedRasa | None = None
    ) -> Runtime:
        """`pipeline` replaces the assembled one (tests of the machinery around a turn); without it the
        domain is assembled from settings once, and every part that runs a turn gets the same one."""
        # A turn holds its connection while Rasa answers: one each. A send holds none during its call, and the
        # outcomes of sends finishing together share one (bot/outcome_writer.py): a few for the sender, and spare.
        worker_settings = settings.worker
        pool_size = max(10, worker_settings.inbox_concurrency + min(worker_settings.outbox_concurrency, 8) + 4)
        engine = create_engine(settings.store.url, settings.store.echo, pool_size)
        count_store_work(engine)
        sessions = session_factory(engine)
        state = open_shared_state(settings.redis.url or None)
        http = aiohttp.ClientSession()
        apis = build_apis(settings, http, state)
        nlu = nlu_client(settings, state, managed_rasa)
        await nlu.start()
        waker = growth_jobs = handoff_jobs = rep_commands = nurture = domain = None
        store = build_media_store(settings.media)  # what customers send, kept; what reps are sent from it

        def media_link(item_id: int) -> str:
            return signed_media_url(settings, item_id, time.time())

        if problem := links_problem(settings):
            log.warning("media.links %s", problem)
        if pipeline is None:
            if settings.flows.publish_on_start:
                await publish_if_unpublished(sessions, settings.flows, settings.lifecycle, settings.nlu)
            domain = assemble(settings.flows, settings.lifecycle, settings.growth, settings.handoff, settings.nurture,
                              nlu, media_link, PersonalJoinWays(apis["wecom.contacts"]))
            rep_commands = RepCommands(domain.desk)
            agent_id, interval_s = settings.wecom.app.agent_id, settings.flows.wake_interval_s
            handoff_jobs = HandoffJobs(sessions, domain.desk, interval_s, agent_id)
            nurture = NurtureDispatcher(sessions, settings.nurture, domain.lifecycle, agent_id)
            waker = Waker(sessions, domain.pipeline, interval_s, agent_id)
            growth_jobs = GrowthJobs(sessions, domain.growth, apis["wecom.contacts"], interval_s, agent_id)
            pipeline = domain.pipeline
        puller = KfPuller(sessions, apis["wecom.kf"])
        worker = InboxWorker(
            sessions,
            pipeline,
            ProfileLookup(apis),
            puller,
            worker_settings.max_attempts,
            worker_settings.retry_base_s,
            settings.wecom.app.agent_id,
            rep_commands,
        )
        # Customer groups' change events; on_join: the hook of flows/group_joins.py (a live code's tags,
        # group fission rewards).
        worker.group_chats = GroupChatEvents(sessions, apis["wecom.contacts"], settings.wecom.app.agent_id,
                                             on_join=domain.group_joins.joined if domain else None)
        webhooks = WebhookSender(sessions, http, worker_settings.max_attempts, worker_settings.retry_base_s)
        uploads = MediaUploads(apis, state, store, Path(settings.flows.directory), http)
        budgets = (ApiBudgets(state, settings.sender.budget_share, settings.sender.budget_wait_s)  # shared by processes
                   if settings.sender.budgets else None)
        sender = OutboxSender(sessions, apis, worker_settings.max_attempts, worker_settings.retry_base_s,
                              webhooks=webhooks, finish_within_s=worker_settings.claim_ttl_s / 2, media=uploads,
                              budgets=budgets, marketing_share=settings.sender.marketing_share)
        webhook_feed = WebhookFeed(sessions, settings.flows.wake_interval_s)
        media_fetcher = MediaFetcher(sessions, apis, store, worker_settings.max_attempts,
                                     worker_settings.retry_base_s, settings.flows.wake_interval_s)
        media_fetcher.on_stored = RepMedia(media_link, settings.wecom.app.agent_id, settings.media.link_ttl_s).forward
        inbox = QueueRunner(
            "inbox", sessions, InboxItem, worker.process, worker_settings.inbox_concurrency,
            worker_settings.poll_interval_s, worker_settings.claim_ttl_s,
        )
        outbox = QueueRunner(
            "outbox", sessions, OutboxItem, sender.send, worker_settings.outbox_concurrency,
            worker_settings.poll_interval_s, worker_settings.claim_ttl_s,
        )
        puller.inbox, worker.outbox = inbox, outbox
        sender.on_rate_limited = outbox.pause
        webhook_feed.on_outbox = media_fetcher.on_outbox = outbox.wake
        if waker is not None and growth_jobs is not None and handoff_jobs is not None and nurture is not None:
            waker.on_outbox = growth_jobs.on_outbox = handoff_jobs.on_outbox = nurture.on_outbox = outbox.wake
        return cls(
            settings, engine, sessions, state, http, apis, nlu, inbox, outbox, worker, sender, domain, waker,
            growth_jobs, handoff_jobs, nurture, managed_rasa, webhook_feed, media_fetcher=media_fetcher,
            media_store=store,
            group_pushes=build_group_push_jobs(sessions, apis["wecom.contacts"], settings) if domain is not None else None,
        )

    def start_background(self) -> None:
        """Run the inbox worker and the outbox sender until `close()`; references are kept."""
        self.tasks = [
            asyncio.create_task(self.inbox.run(), name="inbox-runner"),
            asyncio.create_task(self.outbox.run(), name="outbox-runner"),
        ]
        if self.waker is not None and self.growth_jobs is not None:
            self.scheduler = AsyncIOScheduler(timezone="UTC")  # the clock only: jobs read what is due from the store
            self.waker.schedule(self.scheduler)
            self.growth_jobs.schedule(self.scheduler)
            if self.handoff_jobs is not None:
                self.handoff_jobs.schedule(self.scheduler)
            if self.nurture is not None:
                self.nurture.schedule(self.scheduler)
            if self.webhook_feed is not None:
                self.webhook_feed.schedule(self.scheduler)
            if self.media_fetcher is not None:
                self.media_fetcher.schedule(self.scheduler)
            if self.group_pushes is not None:
                self.group_pushes.schedule(self.scheduler)
            self.scheduler.start()

    async def drain(self) -> None:
        """Process every due inbox item and send every due outbox item (tests, CLI)."""
        for _ in range(100):
            await self.inbox.drain()
            await self.outbox.drain()
            async with self.sessions() as session:
                if not await due_count(session, InboxItem) and not await due_count(session, OutboxItem):
                    return

    async def close(self) -> None:
        timeout = self.settings.server.shutdown_timeout_s
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self.inbox.stop(timeout)
        await self.outbox.stop(timeout)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.media_fetcher is not None:
            await self.media_fetcher.close()
        await self.nlu.close()
        await self.http.close()
        await self.state.close()
        await self.engine.dispose()
        log.info("runtime.closed")


RUNTIME = web.AppKey("runtime", Runtime)


def build_apis(settings: Settings, http: aiohttp.ClientSession, state: SharedState) -> dict[str, WeChatApi]:
    wecom = settings.wecom
    credentials = [
        wecom_credential("wecom.kf", wecom.api_base, wecom.corp_id, wecom.kf.secret.get_secret_value()),
        wecom_credential("wecom.contacts", wecom.api_base, wecom.corp_id, wecom.contacts.secret.get_secret_value()),
        wecom_credential("wecom.app", wecom.api_base, wecom.corp_id, wecom.app.secret.get_secret_value()),
        oa_credential(settings.oa.api_base, settings.oa.app_id, settings.oa.app_secret.get_secret_value()),
    ]
    return {credential.name: WeChatApi(http, state, credential) for credential in credentials}
