"""The flow engine: runs the published flows for one turn, and nothing else.

    a kf button of an FAQ offer → that FAQ entry's answer;
    the running conversation (resume it, or let a stronger trigger interrupt it) →
    or the flow a trigger (or an arrival's channel) starts → or the FAQ (flows/faq_answers.py)
    → or the fallback flow (and `turn.unanswered` on the timeline: what the FAQ could learn);
    a waiting conversation's timer → the step after the wait.

Everything happens in the turn's transaction: the conversation row and what the steps
did are committed together with the replies, or not at all. A conversation keeps the
release it started on, so publishing never changes a flow under a customer's feet.
Which events reach it, and what happens around it, is the pipeline's business
(flows/assembly.py).
"""

from __future__ import annotations

import logging

from core import metrics
from crm_store.conversations import end_conversation
from crm_store.faq_queries import TURN_UNANSWERED
from crm_store.models import Conversation, as_utc, utcnow
from flows.answers import is_typed_answer
from flows.faq_answers import FaqAnswerer
from flows.matching import CERTAIN, Match, match_event, match_message
from flows.model import Ask, FaqTrigger, Flow, FlowSet, Say
from flows.releases import ReleaseCache
from flows.runner import Position, Runner, Stop, own_timer
from flows.settings import FlowSettings
from flows.turn import Release, Turn

log = logging.getLogger("scrm.flows")


class FlowEngine:
    def __init__(self, settings: FlowSettings, releases: ReleaseCache, runner: Runner, faq: FaqAnswerer) -> None:
        self.settings = settings
        self.releases = releases
        self.runner = runner
        self.faq = faq

    async def run(self, turn: Turn, release: Release) -> None:
        """A message or an entry event: resume, interrupt, start, answer from the FAQ or fall back."""
        event, flows = turn.event, release.flows
        is_message = turn.is_message
        if is_message and await self.faq.chosen(turn, flows.faq):
            return
        match = (match_message(flows, event.text, event.menu_id, turn.intent, event.content_kind) if is_message
                 else match_event(flows, event))
        if turn.requested_flow and turn.requested_flow in flows.flows:  # an entry channel names its welcome flow
            match = Match(flows.flows[turn.requested_flow], None, CERTAIN)
        conversation = turn.conversation
        if conversation is not None:
            pinned = await self.releases.get(turn.session, conversation.release_id)
            if self._expired(conversation, pinned.flows[conversation.flow_id]):  # past its timeout, not yet woken
                self.end(turn, conversation, "timeout")
                conversation = None
        if conversation is not None:
            if match is not None and self._interrupts(turn, conversation, pinned, match.flow):
                self.end(turn, conversation, f"interrupted:{match.flow.id}")
            elif is_message:
                retries = conversation.retries
                if await self._resume(turn, conversation, pinned):  # a fallback asking again did not understand
                    turn.fell_back = conversation.flow_id == self.settings.fallback_flow and conversation.retries > retries
                    return
                self.end(turn, conversation, "not_answered")
            else:
                return  # an entry event while a flow runs: the flow carries on
        if is_message and self._faq_may_answer(match) and await self.faq.take(turn, flows.faq, unsure=match is None):
            return
        if match is None and is_message:
            fallback = flows.flows.get(self.settings.fallback_flow)
            match = Match(fallback, None, 0.0) if fallback else None
            turn.fell_back = match is not None
            turn.note(TURN_UNANSWERED, text=event.text[:200])
        if match is not None:
            await self.start(turn, match, release)

    async def start(self, turn: Turn, match: Match, release: Release) -> None:
        flow = match.flow
        pos = Position(release.flows, release.id, flow, flow.first_step, slots=self._entity_slots(flow, turn))
        trigger = match.describe()
        turn.note("flow.started", flow=flow.id, version=self._version(flow.id, release.id), trigger=trigger)
        metrics.FLOWS_STARTED.labels(flow.id, trigger.split(":")[0]).inc()
        stop = await self.runner.advance(pos, turn)
        conversation = Conversation(
            customer_id=turn.customer.id,
            flow_id=flow.id,
            flow_version=0,
            release_id=release.id,
            step_id=pos.step_id,
            started_at=utcnow(),
        )
        turn.session.add(conversation)
        turn.conversation = conversation
        await self._save(turn, conversation, pos, stop)

    async def waits_for_typed_answer(self, turn: Turn) -> bool:
        """Does the running conversation wait for a typed answer (a choice, a phone number, a number, an
        email) and is this whole message one? Then it resumes the flow whatever an NLU would say of it."""
        conversation = turn.conversation
        if conversation is None or conversation.status != "active" or not turn.is_message:
            return False
        flows = await self.releases.get(turn.session, conversation.release_id)
        running = flows.flows[conversation.flow_id]
        if self._expired(conversation, running):
            return False
        step = running.step(conversation.step_id)
        if isinstance(step, Say):  # a menu with destinations waits for a choice
            step = Ask(id=step.id, expect="choice", choices=step.menu)
        return isinstance(step, Ask) and is_typed_answer(step, turn.event.text, turn.event.menu_id)

    async def wake(self, turn: Turn, conversation: Conversation) -> None:
        """A waiting conversation's timer fired (the waker's turn)."""
        flows = await self.releases.get(turn.session, conversation.release_id)
        pos = self._position(conversation, flows)
        stop = await self.runner.wake(pos, turn)
        await self._save(turn, conversation, pos, stop)

    def end(self, turn: Turn, conversation: Conversation, reason: str) -> None:
        end_conversation(conversation, reason)
        metrics.FLOWS_ENDED.labels(conversation.flow_id, reason.split(":")[0]).inc()
        turn.note("flow.ended", flow=conversation.flow_id, step=conversation.step_id, reason=reason)

    async def _resume(self, turn: Turn, conversation: Conversation, flows: FlowSet) -> bool:
        pos = self._position(conversation, flows)
        stop = await self.runner.resume(pos, turn)
        if stop is None:
            return False
        await self._save(turn, conversation, pos, stop)
        return True

    def _faq_may_answer(self, match: Match | None) -> bool:
        """The FAQ answers what no flow wants, and what a weaker flow wants (flows.faq_priority: the FAQ is a
        better answer than a generic flow, a complaint or a person is not); never an entry a flow took over."""
        if match is None:
            return True
        return not isinstance(match.trigger, FaqTrigger) and match.flow.priority < self.settings.faq_priority

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
        if turn.event.kind != "timer":
            conversation.reply_to = turn.event.reply_address.to_data()
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
