"""The inbox worker: one turn per stored event.

identity (a known customer is read with the facts the turn asks about them, in one
statement; a new one is created, its profile looked up once) → the turn's pipeline
(flows/assembly.py; its intent stage asks the NLU only when the answer matters) → one
transaction with the customer's state, the timeline (held and written in one statement),
outbox rows and the inbox item marked done. A crash anywhere before that commit leaves
the item to be claimed again; after it, the item is done: processed exactly once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.delivery import effect_key, remember_reach
from bot.effects_writer import write_effects, write_side_effect
from bot.kf_sync import KfPuller
from bot.media_fetch import queue_media
from bot.profiles import ProfileLookup
from bot.queue_runner import QueueRunner, put_back_after_fault
from core import metrics
from core.content import content_for_timeline
from core.events import Effect, InboundEvent
from core.faults import fault_component
from crm_store import work_queue
from crm_store.customer_facts import CustomerFacts, known_customer
from crm_store.customers import (
    Profile,
    find_identity,
    hold_timeline,
    live_customer,
    record,
    resolve_customer,
    touch,
    write_timeline,
)
from crm_store.models import Customer, InboxItem, OutboxItem, utcnow
from crm_store.work_queue import ClaimLost
from flows.turn import Turn

if TYPE_CHECKING:
    from bot.group_chat_events import GroupChatEvents
    from bot.rep_commands import RepCommands
    from nlu.intent import Intent

log = logging.getLogger("scrm.worker")

KNOWN_IDENTITIES_REMEMBERED = 100_000


class TurnPipeline(Protocol):
    async def run(self, turn: Turn) -> Sequence[Effect]: ...


class InboxWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        pipeline: TurnPipeline,
        profiles: ProfileLookup,
        kf_puller: KfPuller,
        max_attempts: int,
        retry_base_s: float,
        app_agent_id: int = 0,
        rep_commands: RepCommands | None = None,
    ) -> None:
        self.sessions = sessions
        self.pipeline = pipeline
        self.profiles = profiles
        self.kf_puller = kf_puller
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.app_agent_id = app_agent_id
        self.rep_commands = rep_commands
        self.group_chats: GroupChatEvents | None = None  # customer groups' change events (not a customer's turn)
        self.outbox: QueueRunner[OutboxItem] | None = None  # this process's sender: it takes the replies it can
        self.processed = 0
        self._known_identities: OrderedDict[str, None] = OrderedDict()  # identities never disappear

    async def process(self, item: InboxItem) -> None:
        try:
            event = InboundEvent.from_payload(item.payload)
            if event.kind == "kf_sync":
                await self.kf_puller.pull(item, event)
            elif event.kind == "group_changed":
                await self._group_event(item, event)
            elif event.channel == "app":
                await self._rep_event(item, event)
            else:
                await self._handle_customer_event(item, event)
        except ClaimLost:
            log.warning("worker.claim_lost id=%s", item.id)
            return
        except Exception as exc:  # noqa: BLE001 - recorded on the item, retried with back-off
            component = fault_component(exc)
            if component is None:
                await self._retry_or_fail(item, exc)
            else:
                await put_back_after_fault(self.sessions, item, component, exc, "inbox.turn")
            return
        self.processed += 1
        metrics.INBOX_PROCESSED.labels(item.kind, "done").inc()

    async def _handle_customer_event(self, item: InboxItem, event: InboundEvent) -> None:
        external = event.channel == "api"  # another system's event: the customer is named by id
        known = external or await self._is_known(event)
        profile = None if known else await self.profiles.lookup(event)
        async with self.sessions() as session, session.begin():
            customer, facts = await self._customer(session, event, known, profile)
            remember_reach(customer, event)
            hold_timeline(session)
            inbound = _summary(event)
            await record(session, customer.id, f"inbound.{event.kind}", inbound)  # held: the first row of the turn
            await queue_media(session, customer.id, event)  # media: downloaded later, never waited for
            turn = Turn(session, event, customer, is_new_customer=not known, facts=facts)
            effects = await self.pipeline.run(turn)
            inbound.update(_understood(turn.intent))
            wrote = await write_effects(session, item.dedup_key, event, customer, effects, self.app_agent_id,
                                        held_waiting=facts is None or facts.held_messages)
            await write_timeline(session)
            sending = await self._claim_for_sending(session, item, wrote)
            await work_queue.finish(session, item)
        self._remember(event)
        self._hand_over(sending, wrote)

    async def _claim_for_sending(self, session: AsyncSession, item: InboxItem, wrote: int) -> list[OutboxItem]:
        """The rows this turn wrote that this process's sender can take at once, claimed with the turn."""
        if self.outbox is None or not wrote:
            return []
        return await self.outbox.claim_stored(session, [effect_key(item.dedup_key, index) for index in range(wrote)])

    def _hand_over(self, sending: list[OutboxItem], wrote: int) -> None:
        if self.outbox is not None:
            self.outbox.start(sending)
            if wrote > len(sending):
                self.outbox.wake()

    async def _customer(self, session: AsyncSession, event: InboundEvent, known: bool,
                        profile: Profile | None) -> tuple[Customer, CustomerFacts | None]:
        """The customer, with the facts the turn asks about them when they are known (one statement)."""
        if event.channel == "api":
            return await live_customer(session, int(event.sender)), None
        if known:
            found = await known_customer(session, event.identity_kind, event.sender, utcnow())
            if found is not None:
                customer, facts = found
                touch(customer)
                return customer, facts
        return await resolve_customer(session, event.identity_kind, event.sender, profile), None

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
                    wrote += await write_side_effect(session, effect_key(item.dedup_key, wrote), effect,
                                                     self.app_agent_id)
            await work_queue.finish(session, item)
        self._hand_over([], wrote)

    async def _group_event(self, item: InboxItem, event: InboundEvent) -> None:
        """A customer group changed: applied by bot/group_chat_events.py. A worker built without it (never
        by Runtime) retries and then fails the item, visibly, rather than dropping the change."""
        if self.group_chats is None:
            raise RuntimeError(f"no customer-group handler in this worker for group {event.sender}")
        self._hand_over([], await self.group_chats.handle(item, event))

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


def _summary(event: InboundEvent) -> dict[str, object]:
    summary: dict[str, object] = {"channel": event.channel}
    if event.text:
        summary["text"] = event.text[:500]
    for field in ("menu_id", "scene"):
        if getattr(event, field):
            summary[field] = getattr(event, field)
    if event.kind == "external":
        summary["name"], summary["data"] = event.extra.get("name", ""), event.extra.get("data", {})
    if event.content is not None:  # what was received, at most a few KB: an unknown type's raw payload is cut short
        summary["content"] = content_for_timeline(event.content)
    return summary


def _understood(intent: Intent | None) -> dict[str, object]:
    """What the NLU made of the message, if it was asked (the intent stage decides)."""
    if intent is None:
        return {}
    return {"intent": intent.name, "confidence": round(intent.confidence, 3), "intent_source": intent.source}
