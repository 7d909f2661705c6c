"""The flow engine: the conversation layer the inbox worker calls for every customer event.

    a person has the customer (an open handoff)? then silence →
    lifecycle events (owner, churn, return) → intent counting and tag rules →
    the running conversation (resume it, or let a stronger trigger interrupt it) →
    or the flow a trigger starts → or the fallback flow → signals (tags added,
    stages entered) may start a flow when none is running → does the turn call for a
    person (the handoff desk)?

Everything happens in the worker's transaction: the conversation row, tags, stages
and the replies are committed together or not at all. A conversation keeps the
release it started on, so publishing never changes a flow under a customer's feet.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot import metrics
from bot.conversation import TurnContext
from bot.events import Effect, InboundEvent
from bot.responder import BuiltinResponder
from crm_store import lifecycle as stages
from crm_store import tags
from crm_store.conversations import active_conversation, end_conversation
from crm_store.intent_counts import count_intent
from crm_store.models import Conversation, Customer, as_utc, utcnow
from flows.hooks import HookCall, Hooks
from flows.matching import CERTAIN, Match, match_event, match_message, match_signal
from flows.model import Flow, FlowSet
from flows.releases import ReleaseCache
from flows.runner import Position, Runner, Stop, Turn, own_timer
from flows.settings import FlowSettings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from bot.handoff_desk import HandoffDesk

log = logging.getLogger("scrm.flows")

LEAVING = frozenset({"unsubscribe", "contact_removed", "contact_lost"})
ARRIVING = frozenset({"message", "enter_session", "contact_added", "subscribe", "scan", "menu_click"})
MAX_SIGNAL_FLOWS = 3


class FlowEngine:
    """Implements bot.conversation.Conversation with the published flows."""

    def __init__(
        self,
        settings: FlowSettings,
        lifecycle: stages.Lifecycle,
        releases: ReleaseCache,
        hooks: Hooks | None = None,
        desk: HandoffDesk | None = None,
    ) -> None:
        self.settings = settings
        self.desk = desk
        self.lifecycle = lifecycle
        self.releases = releases
        self.hooks = hooks or Hooks()
        self.runner = Runner(self.hooks, settings.max_steps_per_turn)
        self.unpublished = BuiltinResponder()
        self._warned_unpublished = False

    async def handle(self, event: InboundEvent, customer: Customer, context: TurnContext) -> Sequence[Effect]:
        session = context.session
        current = await self.releases.current(session)
        if current is None:
            if not self._warned_unpublished:
                log.warning("flows.unpublished: no flows are published; the built-in responder answers")
                self._warned_unpublished = True
            return await self.unpublished.handle(event, customer, context)
        release_id, flows = current
        turn = Turn(session, event, customer, context.intent, self.lifecycle)
        if context.is_new_customer and customer.stage != self.lifecycle.initial:
            customer.stage = self.lifecycle.initial
        if self.desk is not None and await self.desk.holds(turn):
            return turn.effects  # a person has the customer: the bot stays silent
        conversation = await active_conversation(session, customer.id)
        if event.kind in LEAVING:
            await self._customer_left(turn, conversation)
            return turn.effects
        if event.kind in ("message", "menu_click"):
            call = HookCall(session, customer, event, {}, {})
            for message_handler in self.hooks.message_handlers:
                await message_handler(call)
        requested = ""
        if event.kind in ARRIVING:
            requested = await self._customer_arrived(turn, flows)
        await self._run(turn, conversation, release_id, flows, requested)
        await self._follow_signals(turn, release_id, flows)
        if self.desk is not None:
            await self.desk.after_turn(turn)
        return turn.effects

    # ------------------------------------------------------------ the turn

    async def _run(
        self, turn: Turn, conversation: Conversation | None, release_id: int, flows: FlowSet, requested: str = ""
    ) -> None:
        event = turn.event
        is_message = event.kind in ("message", "menu_click")
        match = (
            match_message(flows, event.text, event.menu_id, turn.intent) if is_message else match_event(flows, event)
        )
        if requested and requested in flows.flows:  # an entry channel names its welcome flow
            match = Match(flows.flows[requested], None, CERTAIN)
        if conversation is not None:
            pinned = await self.releases.get(turn.session, conversation.release_id)
            running = pinned.flows[conversation.flow_id]
            if self._expired(conversation, running):  # past its inactivity timeout, not yet woken
                self._end(turn, conversation, "timeout")
                conversation = None
        if conversation is not None:
            if match is not None and self._interrupts(turn, conversation, pinned, match.flow):
                self._end(turn, conversation, f"interrupted:{match.flow.id}")
            elif is_message:
                retries = conversation.retries
                if await self._resume(turn, conversation, pinned):  # a fallback asking again did not understand
                    turn.fell_back = conversation.flow_id == self.settings.fallback_flow and conversation.retries > retries
                    return
                self._end(turn, conversation, "not_answered")
            else:
                return  # an entry event while a flow runs: the flow carries on
        if match is None and is_message:
            fallback = flows.flows.get(self.settings.fallback_flow)
            match = Match(fallback, None, 0.0) if fallback else None
            turn.fell_back = match is not None
        if match is not None:
            await self._start(turn, match, release_id, flows)

    async def _start(self, turn: Turn, match: Match, release_id: int, flows: FlowSet) -> None:
        flow = match.flow
        pos = Position(flows, release_id, flow, flow.first_step, slots=self._entity_slots(flow, turn))
        trigger = match.describe()
        turn.note("flow.started", flow=flow.id, version=self._version(flow.id, release_id), trigger=trigger)
        metrics.FLOWS_STARTED.labels(flow.id, trigger.split(":")[0]).inc()
        stop = await self.runner.advance(pos, turn)
        conversation = Conversation(
            customer_id=turn.customer.id,
            flow_id=flow.id,
            flow_version=0,
            release_id=release_id,
            step_id=pos.step_id,
            started_at=utcnow(),
        )
        turn.session.add(conversation)
        await self._save(turn, conversation, pos, stop)

    async def _resume(self, turn: Turn, conversation: Conversation, flows: FlowSet) -> bool:
        pos = self._position(conversation, flows)
        stop = await self.runner.resume(pos, turn)
        if stop is None:
            return False
        await self._save(turn, conversation, pos, stop)
        return True

    async def wake(self, session: AsyncSession, conversation: Conversation, customer: Customer,
                   event: InboundEvent) -> Sequence[Effect]:
        """A waiting conversation's timer fired (called by the waker, in its transaction)."""
        flows = await self.releases.get(session, conversation.release_id)
        turn = Turn(session, event, customer, None, self.lifecycle)
        pos = self._position(conversation, flows)
        stop = await self.runner.wake(pos, turn)
        await self._save(turn, conversation, pos, stop)
        current = await self.releases.current(session)
        if current is not None:
            await self._follow_signals(turn, *current)
        if self.desk is not None and turn.handoff:
            await self.desk.after_turn(turn)
        return turn.effects

    async def _follow_signals(self, turn: Turn, release_id: int, flows: FlowSet) -> None:
        """Tags added and stages entered may start a flow, when none is running."""
        for _ in range(MAX_SIGNAL_FLOWS):
            if not turn.signals:
                return
            signals, turn.signals = turn.signals, []
            await self._stage_handlers(turn, signals)
            match = next((m for kind, value in signals if (m := match_signal(flows, kind, value))), None)
            if match is None:
                return
            if await active_conversation(turn.session, turn.customer.id) is not None:
                return
            await self._start(turn, match, release_id, flows)

    async def _stage_handlers(self, turn: Turn, signals: list[tuple[str, str]]) -> None:
        """Stages the customer entered may qualify rewards and conversions (the growth hooks); tags and
        stages may enrol the customer in a sequence or end one (the nurture hooks)."""
        call = HookCall(turn.session, turn.customer, turn.event, {}, {})
        for kind, value in signals:
            for signal_handler in self.hooks.signal_handlers:
                await signal_handler(call, kind, value)
            if kind != "stage":
                continue
            for handler in self.hooks.stage_handlers:
                turn.effects.extend(await handler(call, value))

    # ------------------------------------------------------------ lifecycle

    async def _customer_left(self, turn: Turn, conversation: Conversation | None) -> None:
        if conversation is not None:
            self._end(turn, conversation, "customer_left")
        if await stages.churn(turn.session, turn.customer, f"event:{turn.event.kind}", self.lifecycle):
            turn.signals.append(("stage", self.lifecycle.churned))

    async def _customer_arrived(self, turn: Turn, flows: FlowSet) -> str:
        """Owner, return from churn, codes on arrival, intent rules; the flow an arrival code asks for."""
        event, customer = turn.event, turn.customer
        if event.kind == "contact_added" and event.account and not customer.owner_userid:
            customer.owner_userid = event.account
        if customer.stage == self.lifecycle.churned:
            if await stages.return_from_churn(turn.session, customer, f"event:{event.kind}", self.lifecycle):
                turn.signals.append(("stage", customer.stage))
        requested = await self._arrival_hooks(turn) if event.scene else ""
        await self._count_intent(turn, flows)
        return requested

    async def _arrival_hooks(self, turn: Turn) -> str:
        requested = ""
        call = HookCall(turn.session, turn.customer, turn.event, {}, {})
        for handler in self.hooks.arrivals:
            result = await handler(call)
            turn.effects.extend(result.effects)
            turn.signals.extend(result.signals)
            requested = requested or result.flow
        return requested

    async def _count_intent(self, turn: Turn, flows: FlowSet) -> None:
        """Tag rules: "asked the price 3 times → 高意向"."""
        intent, customer = turn.intent, turn.customer
        if intent is None or turn.event.kind != "message" or intent.name in ("nlu_fallback", "out_of_scope"):
            return
        rules = [rule for rule in flows.rules if rule.intent == intent.name]
        if not rules:
            return
        count = await count_intent(turn.session, customer.id, intent.name)
        for rule in rules:
            if count != rule.count:
                continue
            cause = f"rule:{rule.id}"
            if rule.tag:
                added = await tags.add_tags(turn.session, customer, [rule.tag], cause)
                turn.signals.extend(("tag", name) for name in added)
            if rule.stage:
                try:
                    if await stages.set_stage(turn.session, customer, rule.stage, cause, self.lifecycle):
                        turn.signals.append(("stage", rule.stage))
                except stages.StageNotAllowed as exc:
                    turn.note("stage.refused", stage=rule.stage, reason=str(exc), rule=rule.id)

    # ------------------------------------------------------------ helpers

    def _interrupts(self, turn: Turn, conversation: Conversation, flows: FlowSet, candidate: Flow) -> bool:
        """Does `candidate`'s trigger stop the running flow? A stronger flow may; so may any flow when
        the waiting step cannot use the message (free text counts as unusable when another flow wants it)."""
        running = flows.flows[conversation.flow_id]
        mode = self.settings.interrupt
        if candidate.id == running.id or mode == "never" or not running.interruptible:
            return False
        if mode == "any" or candidate.priority > running.priority:
            return True
        return not self.runner.takes_answer(self._position(conversation, flows), turn)

    @staticmethod
    def _expired(conversation: Conversation, running: Flow) -> bool:
        """Idle past the flow's timeout at a step with no timer of its own (the waker runs every few seconds)."""
        if own_timer(running.step(conversation.step_id)):
            return False
        return (utcnow() - as_utc(conversation.updated_at)).total_seconds() >= running.timeout_s

    def _end(self, turn: Turn, conversation: Conversation, reason: str) -> None:
        end_conversation(conversation, reason)
        metrics.FLOWS_ENDED.labels(conversation.flow_id, reason.split(":")[0]).inc()
        turn.note("flow.ended", flow=conversation.flow_id, step=conversation.step_id, reason=reason)

    def _position(self, conversation: Conversation, flows: FlowSet) -> Position:
        return Position(
            flows,
            conversation.release_id,
            flows.flows[conversation.flow_id],
            conversation.step_id,
            slots=dict(conversation.slots),
            stack=list(conversation.stack),
            retries=conversation.retries,
        )

    async def _save(self, turn: Turn, conversation: Conversation, pos: Position, stop: Stop) -> None:
        conversation.flow_id = pos.flow.id
        conversation.flow_version = self._version(pos.flow.id, pos.release_id)
        conversation.step_id = pos.step_id
        conversation.slots = dict(pos.slots)
        turn.slots = dict(pos.slots)
        conversation.stack = list(pos.stack)
        conversation.retries = pos.retries
        conversation.updated_at = utcnow()
        conversation.reply_to = {"channel": turn.event.channel, "sender": turn.event.sender,
                                 "account": turn.event.account} if turn.event.kind != "timer" else \
            conversation.reply_to
        outcome = f"ended:{stop.reason}" if stop.ended else f"waiting:{pos.step_id}"
        turn.note("flow.turn", flow=pos.flow.id, steps=pos.visited, outcome=outcome)
        if stop.ended:
            end_conversation(conversation, stop.reason)
            metrics.FLOWS_ENDED.labels(pos.flow.id, stop.reason).inc()
        else:
            conversation.wake_at = stop.wake_at
        await turn.session.flush()

    def _version(self, flow_id: str, release_id: int) -> int:
        return int(self.releases.versions(release_id).get(flow_id, 0))

    def _entity_slots(self, flow: Flow, turn: Turn) -> dict[str, str]:
        """Slots the flow declares, filled from the intent's entities or an external event's data."""
        if turn.event.kind == "external":
            data = turn.event.extra.get("data") or {}
            return {str(k): str(v)[:200] for k, v in data.items() if k in flow.slots and isinstance(v, str | int | float)}
        intent = turn.intent
        if intent is None:
            return {}
        return {entity.name: entity.value for entity in intent.entities if entity.name in flow.slots}
