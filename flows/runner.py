"""Running steps: from where a conversation stands to the next point where it waits or ends.

A turn is bounded (`max_steps_per_turn`): the loader already refuses loops without a
waiting step, and this guard makes sure a mistake can never spin a worker. Every
change a step makes (tags, stage, marketing consent) is written in the turn's
transaction; what the customer should see is collected as effects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from core.events import Reply
from core.templates import Template, render
from crm_store import lifecycle as stages
from crm_store import social, tags
from crm_store.models import utcnow
from flows.answers import Answer, answer_to
from flows.hooks import Hooks
from flows.model import (
    END,
    MEDIA_EXPECTS,
    Action,
    Ask,
    Branch,
    Call,
    Condition,
    End,
    Flow,
    FlowSet,
    Goto,
    Handoff,
    Marketing,
    Say,
    SetStage,
    Step,
    TagStep,
    Wait,
    content_named,
)
from flows.turn import Turn

if TYPE_CHECKING:
    pass

log = logging.getLogger("scrm.flows")

HANDOFF_MESSAGE = "好的，正在为您转接人工客服，请稍候。"


@dataclass
class Position:
    """Where a conversation is: flow, step, slots, and the sub-flows to return to."""

    flows: FlowSet
    release_id: int
    flow: Flow
    step_id: str
    slots: dict[str, str] = field(default_factory=dict)
    stack: list[dict[str, str]] = field(default_factory=list)
    retries: int = 0
    visited: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Stop:
    """Why the turn stopped: waiting at a step (until `wake_at` at the latest) or ended."""

    ended: bool
    reason: str = ""
    wake_at: datetime | None = None


class Runner:
    def __init__(self, hooks: Hooks, max_steps: int, lifecycle: stages.Lifecycle) -> None:
        self.hooks = hooks
        self.max_steps = max_steps
        self.lifecycle = lifecycle

    # ------------------------------------------------------------ moving on

    async def advance(self, pos: Position, turn: Turn) -> Stop:
        """Run steps from `pos.step_id` (just arrived at) until one waits or the flow ends."""
        for _ in range(self.max_steps):
            if pos.step_id == END:
                if not pos.stack:
                    return Stop(True, "completed")
                frame = pos.stack.pop()
                pos.flow, pos.step_id = pos.flows.flows[frame["flow"]], frame["step"]
                continue
            step = pos.flow.step(pos.step_id)
            pos.visited.append(f"{pos.flow.id}.{step.id}")
            outcome = await self._arrive(step, pos, turn)
            if isinstance(outcome, Stop):
                return outcome
            pos.step_id, pos.retries = outcome, 0
        log.error("flows.loop_guard flow=%s step=%s customer=%s", pos.flow.id, pos.step_id, turn.customer.id)
        turn.note("flow.loop_guard", flow=pos.flow.id, step=pos.step_id)
        return Stop(True, "loop_guard")

    async def resume(self, pos: Position, turn: Turn) -> Stop | None:
        """The customer answered the waiting step; None when the message is not for this flow."""
        step = pos.flow.step(pos.step_id)
        if isinstance(step, Wait):
            if not step.reply:
                return None
            pos.step_id = step.on_reply or step.next
            return await self.advance(pos, turn)
        if isinstance(step, Say):  # a menu with destinations: only a choice continues here
            chosen = answer_to(Ask(id=step.id, expect="choice", choices=step.menu), turn.event.text,
                               turn.event.menu_id, "", 0.0)
            if chosen is None:
                return None
            pos.step_id = chosen.goto or step.next
            return await self.advance(pos, turn)
        assert isinstance(step, Ask)
        return await self._answer(step, pos, turn)

    def takes_answer(self, pos: Position, turn: Turn) -> bool:
        """Would the waiting step keep this message: a typed answer (a choice, a phone number, a photo for a
        photo ask), or a message without words at a step that asks for words? The step asks that again
        (a voice note at "your phone number?" is re-prompted), so a weaker media flow ("收到了") does not
        take away the customer's place in the conversation."""
        step = pos.flow.step(pos.step_id)
        if isinstance(step, Say):
            step = Ask(id=step.id, expect="choice", choices=step.menu)
        if isinstance(step, Ask) and step.expect not in MEDIA_EXPECTS and _wordless(turn):
            return True
        if not isinstance(step, Ask) or step.expect == "text":
            return isinstance(step, Wait) and step.reply
        return _answer_of(step, turn) is not None

    async def wake(self, pos: Position, turn: Turn) -> Stop:
        """The waiting step's own timer fired (a wait, an ask's timeout), or the flow's inactivity timeout."""
        step = pos.flow.step(pos.step_id)
        if not own_timer(step):
            return Stop(True, "timeout")
        pos.step_id = step.on_timeout if isinstance(step, Ask) else step.next
        pos.visited.append(f"{pos.flow.id}.{step.id}:timer")
        return await self.advance(pos, turn)

    def wake_at(self, step: Step, flow: Flow) -> datetime:
        """A step's own timer replaces the flow's inactivity timeout: waiting is what the admin asked for."""
        return utcnow() + timedelta(seconds=own_timer(step) or flow.timeout_s)

    # ------------------------------------------------------------ steps

    async def _arrive(self, step: Step, pos: Position, turn: Turn) -> str | Stop:
        """Execute `step`; the id of the step to go to, or a Stop."""
        if isinstance(step, Say):
            return self._say(step, pos, turn)
        if isinstance(step, Ask):
            turn.reply(self._render(step.prompt, pos, turn), step.choices)
            return Stop(False, wake_at=self.wake_at(step, pos.flow))
        if isinstance(step, Branch):
            for case in step.cases:
                if await self._holds(case.when, pos, turn):
                    return case.goto
            return step.otherwise
        if isinstance(step, TagStep):
            await self._tag(step, pos, turn)
            return step.next
        if isinstance(step, SetStage):
            await self._set_stage(step, pos, turn)
            return step.next
        if isinstance(step, Goto):
            if step.flow:
                pos.flow = pos.flows.flows[step.flow]
                return pos.flow.first_step
            return step.step
        if isinstance(step, Call):
            pos.stack.append({"flow": pos.flow.id, "step": step.next})
            pos.flow = pos.flows.flows[step.flow]
            return pos.flow.first_step
        if isinstance(step, Wait):
            return Stop(False, wake_at=self.wake_at(step, pos.flow))
        if isinstance(step, Handoff):
            turn.reply(self._render(step.message, pos, turn) or HANDOFF_MESSAGE)
            turn.note("handoff.requested", reason=step.reason, flow=pos.flow.id, step=step.id)
            turn.handoff = step.reason or pos.flow.id
            turn.slots = dict(pos.slots)
            return Stop(True, "handoff")
        if isinstance(step, Marketing):
            turn.customer.marketing_opt_out = not step.subscribe
            turn.note("marketing.resumed" if step.subscribe else "marketing.stopped", flow=pos.flow.id)
            return step.next
        if isinstance(step, Action):
            return await self._action(step, pos, turn)
        assert isinstance(step, End), step
        turn.reply(self._render(step.message, pos, turn))
        pos.stack.clear()
        return Stop(True, "end")

    def _say(self, step: Say, pos: Position, turn: Turn) -> str | Stop:
        turn.reply(self._render(step.text, pos, turn), step.menu)
        if step.media is not None:  # a message of its own, after the text
            turn.effects.append(Reply("", media=step.media))
        for link in step.links:
            turn.effects.append(Reply(link.title, link=link))
        if step.miniprogram is not None:
            turn.effects.append(Reply(step.miniprogram.title, miniprogram=step.miniprogram))
        if any(choice.goto for choice in step.menu):
            return Stop(False, wake_at=self.wake_at(step, pos.flow))
        return step.next

    async def _answer(self, step: Ask, pos: Position, turn: Turn) -> Stop:
        intent = turn.intent
        answer = _answer_of(step, turn)
        if answer is not None:
            if step.slot:
                entity = intent.entity(step.slot) if intent and step.expect == "text" else None
                pos.slots[step.slot] = entity or answer.value  # "连衣裙多少钱" answers "连衣裙"
            pos.step_id, pos.retries = answer.goto or step.next, 0
            return await self.advance(pos, turn)
        pos.retries += 1
        pos.visited.append(f"{pos.flow.id}.{step.id}:retry{pos.retries}")
        if pos.retries > step.retries:
            turn.note("flow.ask_failed", flow=pos.flow.id, step=step.id, expect=step.expect)
            pos.step_id, pos.retries = step.on_fail, 0
            return await self.advance(pos, turn)
        turn.reply(self._render(step.reprompt if step.reprompt.source else step.prompt, pos, turn), step.choices)
        return Stop(False, wake_at=self.wake_at(step, pos.flow))

    async def _holds(self, when: Condition, pos: Position, turn: Turn) -> bool:
        customer_id = turn.customer.id
        if when.intent and (turn.intent is None or turn.intent.name not in when.intent):
            return False
        if when.slot:
            value = pos.slots.get(when.slot)
            if value is None or (when.equals is not None and value != when.equals):
                return False
        if when.tag and not await tags.has_tag(turn.session, customer_id, when.tag):
            return False
        if when.not_tag and await tags.has_tag(turn.session, customer_id, when.not_tag):
            return False
        if when.stage and turn.customer.stage not in when.stage:
            return False
        if when.content and not (turn.is_message and content_named(when.content, turn.event.content_kind)):
            return False
        if when.social_min is not None:
            stats = await social.stats_of(turn.session, customer_id)
            if (stats.score if stats is not None else 0.0) < when.social_min:
                return False
        if when.check:
            check = self.hooks.checks.get(when.check)
            if check is None:
                log.warning("flows.check_unavailable check=%s flow=%s", when.check, pos.flow.id)
                return False
            turn.slots = pos.slots  # the check sees the slots so far
            return await check(turn)
        return True

    async def _tag(self, step: TagStep, pos: Position, turn: Turn) -> None:
        cause = f"flow:{pos.flow.id}.{step.id}"
        added = await tags.add_tags(turn.session, turn.customer, step.add, cause) if step.add else []
        if step.remove:
            await tags.remove_tags(turn.session, turn.customer, step.remove, cause)
        turn.signals.extend(("tag", name) for name in added)

    async def _set_stage(self, step: SetStage, pos: Position, turn: Turn) -> None:
        reason = f"flow:{pos.flow.id}.{step.id}"
        try:
            if await stages.set_stage(turn.session, turn.customer, step.stage, reason, self.lifecycle):
                turn.signals.append(("stage", step.stage))
        except stages.StageNotAllowed as exc:
            turn.note("stage.refused", stage=step.stage, reason=str(exc), flow=pos.flow.id, step=step.id)

    async def _action(self, step: Action, pos: Position, turn: Turn) -> str:
        handler = self.hooks.actions.get(step.name)
        if handler is None:
            log.warning("flows.action_unavailable action=%s flow=%s", step.name, pos.flow.id)
            turn.note("action.unavailable", action=step.name, flow=pos.flow.id, step=step.id)
            return step.next
        turn.slots = pos.slots  # the action sees the slots so far
        result = await handler(turn, step.params)
        pos.slots.update({key: str(value) for key, value in result.slots.items()})
        for text in result.replies:
            turn.reply(text)
        turn.effects.extend(result.effects)
        turn.signals.extend(result.signals)
        return result.goto or step.next

    def _render(self, template: Template, pos: Position, turn: Turn) -> str:
        if not template.source:
            return ""
        customer = turn.customer
        values: dict[str, object] = {
            "customer.name": customer.display_name,
            "customer.id": customer.id,
            "customer.stage": customer.stage,
            "customer.stage_label": self.lifecycle.label(customer.stage),
            "event.code": turn.event.scene,
            "intent.name": turn.intent.name if turn.intent else "",
        }
        values.update({f"slots.{name}": value for name, value in pos.slots.items()})
        return render(template, values)


def _answer_of(step: Ask, turn: Turn) -> Answer | None:
    """What `step` accepts in the turn's message (its text, button, intent, or content part), or None."""
    event, intent = turn.event, turn.intent
    return answer_to(step, event.text, event.menu_id, intent.name if intent else "",
                     intent.confidence if intent else 0.0, event.content, event.channel)


def _wordless(turn: Turn) -> bool:
    """A customer message with a part (photo, voice note…) and no words nor button."""
    event = turn.event
    return turn.is_message and event.content is not None and not event.text.strip() and not event.menu_id


def own_timer(step: Step) -> float:
    if isinstance(step, Wait):
        return step.seconds
    return step.timeout_s if isinstance(step, Ask) else 0.0
