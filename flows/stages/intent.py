"""Intent: what the customer means, asked of the NLU only when the answer matters.

A button, a menu click, or a message that is wholly a typed answer to the step the running
flow waits at (a choice by its number or label, a phone number, a number, an email) needs
no parse: the flow takes it as it is, so Rasa is not asked. Every other text message is
parsed (the NLU client answers from its cache when it can). It runs after the handoff gate,
so nobody parses what a person will read, and after the lifecycle stage has loaded the
running conversation whose waiting step decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from flows.engine import FlowEngine
from flows.pipeline import Next
from flows.turn import Turn
from nlu.metrics import NOT_NEEDED

if TYPE_CHECKING:
    from nlu.intent import Intent


class IntentParser(Protocol):
    async def parse(self, text: str) -> Intent: ...


class IntentStage:
    name = "intent"

    def __init__(self, nlu: IntentParser, engine: FlowEngine) -> None:
        self.nlu = nlu
        self.engine = engine

    async def __call__(self, turn: Turn, next: Next) -> None:
        await self.understand(turn)
        await next()

    async def understand(self, turn: Turn) -> None:
        """Set `turn.intent` when the message needs one."""
        event = turn.event
        if turn.intent is not None or event.kind != "message" or event.menu_id or not event.text.strip():
            return  # a menu click says what the customer wants; an event or an empty text has nothing to parse
        if await self.engine.waits_for_typed_answer(turn):
            NOT_NEEDED.labels("typed_answer").inc()
            return
        turn.intent = await self.nlu.parse(event.text)
