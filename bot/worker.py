"""The inbox worker: one pipeline per stored event.

identity (find or create the customer, profile looked up once) → intent (NLU, outside
any transaction) → conversation → one transaction with the customer's state, timeline,
outbox rows and the inbox item marked done. A crash anywhere before that commit leaves
the item to be claimed again; after it, the item is done: processed exactly once.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import metrics
from bot.conversation import Conversation, TurnContext
from bot.delivery import REACHABLE_AFTER, kf_state_call, notify_call, rep_call, reply_call
from bot.events import Effect, InboundEvent, Note, Notify, Reply, SideEffect, ToRep
from bot.kf_sync import KfPuller
from bot.profiles import ProfileLookup
from crm_store import work_queue
from crm_store.customers import find_identity, live_customer, record, resolve_customer
from crm_store.models import Customer, InboxItem, OutboxItem
from crm_store.work_queue import ClaimLost

if TYPE_CHECKING:
    from bot.rep_commands import RepCommands
    from nlu.client import Intent

log = logging.getLogger("scrm.worker")

KNOWN_IDENTITIES_REMEMBERED = 100_000


class IntentParser(Protocol):
    async def parse(self, text: str) -> Intent: ...


class InboxWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        conversation: Conversation,
        nlu: IntentParser,
        profiles: ProfileLookup,
        kf_puller: KfPuller,
        max_attempts: int,
        retry_base_s: float,
        app_agent_id: int = 0,
        rep_commands: RepCommands | None = None,
    ) -> None:
        self.sessions = sessions
        self.conversation = conversation
        self.nlu = nlu
        self.profiles = profiles
        self.kf_puller = kf_puller
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.app_agent_id = app_agent_id
        self.rep_commands = rep_commands
        self.on_outbox: Callable[[], None] = lambda: None
        self.processed = 0
        self._known_identities: OrderedDict[str, None] = OrderedDict()  # identities never disappear

    async def process(self, item: InboxItem) -> None:
        try:
            event = InboundEvent.from_payload(item.payload)
            if event.kind == "kf_sync":
                await self.kf_puller.pull(item, event)
            elif event.channel == "app":
                await self._rep_event(item, event)
            else:
                await self._handle_customer_event(item, event)
        except ClaimLost:
            log.warning("worker.claim_lost id=%s", item.id)
            return
        except Exception as exc:  # noqa: BLE001 - recorded on the item, retried with back-off
            await self._retry_or_fail(item, exc)
            return
        self.processed += 1
        metrics.INBOX_PROCESSED.labels(item.kind, "done").inc()

    async def _handle_customer_event(self, item: InboxItem, event: InboundEvent) -> None:
        external = event.channel == "api"  # another system's event: the customer is named by id
        known = external or await self._is_known(event)
        profile = None if known else await self.profiles.lookup(event)
        intent = await self.nlu.parse(event.text) if _needs_intent(event) else None
        async with self.sessions() as session, session.begin():
            customer = await live_customer(session, int(event.sender)) if external else \
                await resolve_customer(session, event.identity_kind, event.sender, profile)
            remember_reach(customer, event)
            await record(session, customer.id, f"inbound.{event.kind}", _summary(event, intent))
            context = TurnContext(session=session, intent=intent, is_new_customer=not known)
            effects = await self.conversation.handle(event, customer, context)
            wrote = await write_effects(session, item.dedup_key, event, customer, effects, self.app_agent_id)
            await work_queue.finish(session, item)
        self._remember(event)
        if wrote:
            self.on_outbox()

    async def _is_known(self, event: InboundEvent) -> bool:
        """Has this identity been seen? Asked of memory first: most messages come from known customers."""
        key = f"{event.identity_kind}:{event.sender}"
        if key in self._known_identities:
            self._known_identities.move_to_end(key)
            return True
        async with self.sessions() as session:
            return await find_identity(session, event.identity_kind, event.sender) is not None

    def _remember(self, event: InboundEvent) -> None:
        self._known_identities[f"{event.identity_kind}:{event.sender}"] = None
        if len(self._known_identities) > KNOWN_IDENTITIES_REMEMBERED:
            self._known_identities.popitem(last=False)

    async def _rep_event(self, item: InboxItem, event: InboundEvent) -> None:
        """A rep wrote in the self-built app: a command (take, release, note, reply), answered in the app."""
        log.info("worker.app_event sender=%s kind=%s", event.sender, event.kind)
        wrote = 0
        async with self.sessions() as session, session.begin():
            if self.rep_commands is not None:
                for effect in await self.rep_commands.handle(session, event):
                    wrote += await write_side_effect(session, f"{item.dedup_key}#{wrote}", effect, self.app_agent_id)
            await work_queue.finish(session, item)
        if wrote:
            self.on_outbox()

    async def _retry_or_fail(self, item: InboxItem, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:1000]
        async with self.sessions() as session, session.begin():
            if item.attempts >= self.max_attempts:
                log.error("worker.failed id=%s attempts=%s %s", item.id, item.attempts, reason)
                metrics.INBOX_PROCESSED.labels(item.kind, "failed").inc()
                await work_queue.finish(session, item, "failed", reason)
            else:
                delay = work_queue.backoff_s(item.attempts, self.retry_base_s)
                log.warning("worker.retry id=%s in %.0fs: %s", item.id, delay, reason)
                metrics.INBOX_PROCESSED.labels(item.kind, "retry").inc()
                await work_queue.retry_later(session, item, delay, reason)


async def write_effects(
    session: AsyncSession,
    origin_key: str,
    event: InboundEvent,
    customer: Customer,
    effects: Sequence[Effect],
    agent_id: int = 0,
) -> int:
    """Timeline notes and outbox rows for a turn's effects; the number of messages queued.

    Outbox keys derive from `origin_key` (the inbox item, or a conversation's wake-up),
    so a turn that is run again after a crash cannot queue its replies twice.
    """
    queued = replies = 0  # rows written / replies to this customer (the first may use a welcome code)
    for effect in effects:
        if isinstance(effect, Note):
            await record(session, customer.id, effect.kind, effect.data)
            continue
        if not isinstance(effect, Reply):
            queued += await write_side_effect(session, f"{origin_key}#{queued}", effect, agent_id)
            continue
        if event.channel == "api":  # nobody wrote: the answer goes where the customer last chatted
            queued += await write_notification(session, f"{origin_key}#{queued}",
                                               Notify(customer.id, effect.text, str(event.extra.get("name", ""))),
                                               agent_id)
            continue
        call = reply_call(event, effect, first=replies == 0, agent_id=agent_id)
        if call is None:
            await record(session, customer.id, "reply.undeliverable", {"channel": event.channel})
            continue
        session.add(
            OutboxItem(
                dedup_key=f"{origin_key}#{queued}",
                queue_key=f"customer:{customer.id}",
                kind=call.kind,
                payload=call.payload,
                customer_id=customer.id,
            )
        )
        await record(session, customer.id, "outbound.reply", {"text": effect.text[:200], "via": call.kind})
        replies += 1
        queued += 1
    return queued


async def write_side_effect(session: AsyncSession, dedup_key: str, effect: SideEffect,
                            agent_id: int = 0) -> int:
    """An effect that is not a reply in the customer's own turn: its outbox row (or why none); rows written."""
    if isinstance(effect, Notify):
        return await write_notification(session, dedup_key, effect, agent_id)
    if isinstance(effect, ToRep):
        call, queue_key, customer_id = rep_call(effect, agent_id), f"rep:{effect.userid}", None
    else:
        call, queue_key, customer_id = kf_state_call(effect), f"customer:{effect.customer_id}", effect.customer_id
    session.add(OutboxItem(dedup_key=dedup_key, queue_key=queue_key, kind=call.kind, payload=call.payload,
                           customer_id=customer_id))
    return 1


async def write_notification(session: AsyncSession, dedup_key: str, notify: Notify, agent_id: int = 0) -> int:
    """An outbox row that tells another customer something, on the channel they last chatted on
    while the platform still lets us write to them there; recorded as undeliverable otherwise."""
    target = await session.get(Customer, notify.customer_id)
    call, why = (None, "unknown customer") if target is None else notify_call(target.reach, notify.text, agent_id)
    if call is None:
        await record(session, notify.customer_id, "notify.undeliverable", {"reason": why, "about": notify.reason,
                                                                            "text": notify.text[:200]})
        return 0
    session.add(OutboxItem(dedup_key=dedup_key, queue_key=f"customer:{notify.customer_id}", kind=call.kind,
                           payload=call.payload, customer_id=notify.customer_id))
    await record(session, notify.customer_id, "outbound.notify",
                 {"text": notify.text[:200], "via": call.kind, "about": notify.reason})
    return 1


def remember_reach(customer: Customer, event: InboundEvent) -> None:
    """Where the customer last chatted, so others' actions (a filled group, a friend) can reach them."""
    if event.kind not in REACHABLE_AFTER or event.channel not in ("kf", "oa"):
        return
    now = int(time.time())
    reach: dict[str, object] = {"channel": event.channel, "sender": event.sender, "account": event.account}
    previous = customer.reach or {}
    moved = any(previous.get(key) != value for key, value in reach.items())
    if moved or int(previous.get("at", 0)) < now - 60:  # the row is written at most once a minute
        customer.reach = {**reach, "at": now}


def _needs_intent(event: InboundEvent) -> bool:
    """Menu clicks already say what the customer wants: skip NLU for them."""
    return event.kind == "message" and bool(event.text.strip()) and not event.menu_id


def _summary(event: InboundEvent, intent: Intent | None) -> dict[str, object]:
    summary: dict[str, object] = {"channel": event.channel}
    if event.text:
        summary["text"] = event.text[:500]
    for field in ("menu_id", "scene"):
        if getattr(event, field):
            summary[field] = getattr(event, field)
    if event.kind == "external":
        summary["name"], summary["data"] = event.extra.get("name", ""), event.extra.get("data", {})
    if intent is not None:
        summary["intent"] = intent.name
        summary["confidence"] = round(intent.confidence, 3)
        summary["intent_source"] = intent.source
    return summary
