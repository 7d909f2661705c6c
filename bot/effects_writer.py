"""A turn's effects (and other customers' notifications) as timeline notes and outbox rows, fitted to the quota.

Written in the transaction of the change that caused them. Replies are buffered until the
next side effect, merged and fitted to the customer's allowance (bot/quota.py); a kf
session move tells the ledger whose session it is from then on; a notification that finds
no allowance is held for the customer's next message, which releases it after its replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from bot.delivery import (
    REACHABLE_AFTER,
    WELCOME_KINDS,
    Welcome,
    effect_key,
    kf_state_call,
    notify_call,
    queue_call,
    rep_call,
    reply_call,
    welcome_of,
)
from bot.quota import Ledger, held_back, merged, within
from core import metrics
from core.allowance import KF_ENDED, KF_SERVED, QUOTA_CHANNELS
from core.events import OUTSIDE_THE_CHAT, Effect, InboundEvent, Note, Notify, Reply, SideEffect, ToRep
from crm_store.allowances import hold, take_held
from crm_store.customers import record
from crm_store.models import Customer, Lane


async def write_effects(
    session: AsyncSession,
    origin_key: str,
    event: InboundEvent,
    customer: Customer,
    effects: Sequence[Effect],
    agent_id: int = 0,
    held_waiting: bool = True,
) -> int:
    """Timeline notes and outbox rows for a turn's effects; the number of rows queued.

    Outbox keys derive from `origin_key` (the inbox item, or a conversation's wake-up),
    so a turn that is run again after a crash cannot queue its replies twice. Replies are
    fitted to the customer's allowance first (bot/quota.py); what it leaves carries the
    messages held for this customer (`held_waiting`: some may be), after the replies.
    """
    ledger = Ledger(session)
    writer = _TurnWriter(session, origin_key, event, customer, agent_id, ledger)
    await writer.start()
    for effect in effects:
        if isinstance(effect, Note):
            await record(session, customer.id, effect.kind, effect.data)
        elif isinstance(effect, Reply) and event.channel != "api":
            writer.pending.append(effect)
        elif isinstance(effect, Reply) and effect.media is not None:  # a notification is text only
            await record(session, customer.id, "reply.undeliverable", {"channel": "api", "media": effect.media.source,
                                                                       "reason": "media go only in the customer's turn"})
        elif isinstance(effect, Reply):  # nobody wrote: the answer goes where the customer last chatted
            await writer.flush()
            writer.queued += await write_notification(session, writer.next_key(),
                                                      Notify(customer.id, effect.text, str(event.extra.get("name", ""))),
                                                      agent_id, ledger)
        else:
            await writer.flush()
            writer.queued += await write_side_effect(session, writer.next_key(), effect, agent_id, ledger)
    await writer.flush()
    if held_waiting:
        await writer.release_held()
    await ledger.flush()
    return writer.queued


@dataclass
class _TurnWriter:
    """A turn's replies, buffered until the next side effect, then merged and fitted to the allowance."""

    session: AsyncSession
    origin_key: str
    event: InboundEvent
    customer: Customer
    agent_id: int
    ledger: Ledger
    pending: list[Reply] = field(default_factory=list)
    queued: int = 0
    welcome: Welcome | None = None

    def next_key(self) -> str:
        return effect_key(self.origin_key, self.queued)

    @property
    def channel(self) -> str:
        return self.event.channel

    @property
    def reply_lane(self) -> Lane:
        """The customer who wrote waits for the answer; a timer's or another system's turn has nobody waiting."""
        return Lane.TRANSACTIONAL if self.event.kind in OUTSIDE_THE_CHAT else Lane.REPLY

    async def start(self) -> None:
        """What the customer's action earned (and, kf, what it says of the session)."""
        self.welcome = welcome_of(self.event)
        if self.channel not in QUOTA_CHANNELS:
            return
        allowance = await self.ledger.get(self.customer.id, self.channel)
        if self.event.kind == "session_ended":
            allowance = allowance.in_session(KF_ENDED)
        elif self.event.kind == "rep_message":  # a rep answered in the kf workspace: the session is theirs
            allowance = allowance.in_session(KF_SERVED)
        kind = "message" if self.event.kind == "menu_click" and self.channel == "kf" else self.event.kind
        self.ledger.put(self.customer.id, allowance.earned(kind, float(self.event.created_at or self.ledger.now)))

    async def budget(self) -> int | None:
        """Messages this turn may still send (None: no limit applies): the allowance, plus a welcome code's one."""
        left = await self.ledger.left(self.customer.id, self.channel)
        code = 1 if self.welcome is not None else 0
        if left is None:
            return code if self.channel == "contacts" and code else None
        return left + code

    async def flush(self) -> None:
        if not self.pending:
            return
        messages, self.pending = merged(self.pending, self.channel), []
        sending, kept_back = within(messages, await self.budget())
        for reply in sending:
            await self._queue(reply, "outbound.reply", self.reply_lane)
        if kept_back:
            await record(self.session, self.customer.id, "reply.held_back",
                         held_back(kept_back, "the platform allows no more messages after this customer action"))

    async def _queue(self, reply: Reply, note: str, lane: Lane, dedup_key: str = "", about: str = "") -> bool:
        call = reply_call(self.event.reply_address, reply, self.agent_id, self.welcome)
        if call is None:
            await record(self.session, self.customer.id, "reply.undeliverable", {"channel": self.channel})
            return False
        if call.kind in WELCOME_KINDS:
            self.welcome = None  # single use (a media reply does not use it: the code carries text only)
        queue_call(self.session, dedup_key or self.next_key(), call, self.customer.id, lane=lane)
        await self.ledger.spend(self.customer.id, self.channel, call.kind)
        data: dict[str, object] = {"text": reply.text[:200], "via": call.kind, **({"about": about} if about else {})}
        if reply.media is not None:
            data["media"] = {"kind": reply.media.kind, "source": reply.media.source[:300]}
        await record(self.session, self.customer.id, note, data)
        self.queued += 1
        return True

    async def release_held(self) -> None:
        """Messages held for this customer go out with what the allowance has left after the replies."""
        left = await self.budget()
        if self.event.kind not in REACHABLE_AFTER or left == 0 or self.channel not in QUOTA_CHANNELS:
            return
        held, stale = await take_held(self.session, self.customer.id, left if left is not None else 0)
        for message in held:
            await self._queue(Reply(message.text), "outbound.notify", Lane.TRANSACTIONAL, f"held:{message.dedup_key}",
                              message.about)
            metrics.QUOTA_DECISIONS.labels(message.about or "notify", "released").inc()
        if stale:
            await record(self.session, self.customer.id, "notify.dropped", {"reason": "held too long", "count": stale})


async def write_side_effect(session: AsyncSession, dedup_key: str, effect: SideEffect,
                            agent_id: int = 0, ledger: Ledger | None = None) -> int:
    """An effect that is not a reply in the customer's own turn: its outbox row (or why none); rows written."""
    if isinstance(effect, Notify):
        return await write_notification(session, dedup_key, effect, agent_id, ledger)
    if isinstance(effect, ToRep):
        call, queue_key, customer_id = rep_call(effect, agent_id), f"rep:{effect.userid}", None
    else:
        call, queue_key, customer_id = kf_state_call(effect), f"customer:{effect.customer_id}", effect.customer_id
        own = ledger or Ledger(session)  # from here on the bot writes to this session only as its state allows
        own.put(effect.customer_id, (await own.get(effect.customer_id, "kf")).in_session(effect.state))
        if ledger is None:
            await own.flush()
    queue_call(session, dedup_key, call, customer_id, queue_key, lane=Lane.TRANSACTIONAL)
    return 1


async def write_notification(session: AsyncSession, dedup_key: str, notify: Notify, agent_id: int = 0,
                             ledger: Ledger | None = None) -> int:
    """An outbox row that tells another customer something, on the channel they last chatted on, while the
    platform lets us write to them there and their allowance has room; held for their next message when it
    has none; recorded as undeliverable when no chat can carry it."""
    target = await session.get(Customer, notify.customer_id)
    call, why = (None, "unknown customer") if target is None else notify_call(target.reach, notify.text, agent_id)
    if call is None:
        await record(session, notify.customer_id, "notify.undeliverable", {"reason": why, "about": notify.reason,
                                                                            "text": notify.text[:200]})
        metrics.QUOTA_DECISIONS.labels(notify.reason or "notify", "skipped").inc()
        return 0
    own = ledger or Ledger(session)
    channel = str((target.reach if target is not None else {}).get("channel", ""))
    if await own.left(notify.customer_id, channel) == 0:
        await hold(session, notify.customer_id, dedup_key, notify.text, notify.reason)
        await record(session, notify.customer_id, "notify.held", {"reason": "no messages left until the customer "
                                                                  "writes again", "about": notify.reason,
                                                                  "text": notify.text[:200]})
        metrics.QUOTA_DECISIONS.labels(notify.reason or "notify", "held").inc()
        return 0
    queue_call(session, dedup_key, call, notify.customer_id, lane=Lane.TRANSACTIONAL)
    await own.spend(notify.customer_id, channel, call.kind)
    if ledger is None:
        await own.flush()
    await record(session, notify.customer_id, "outbound.notify",
                 {"text": notify.text[:200], "via": call.kind, "about": notify.reason})
    return 1
