"""Flow runner: the published flows answer the turn (flows/engine.py); a timer wakes its conversation."""

from __future__ import annotations

from flows.engine import FlowEngine
from flows.pipeline import Next
from flows.turn import Turn


class FlowRunner:
    name = "flow_runner"

    def __init__(self, engine: FlowEngine) -> None:
        self.engine = engine

    async def __call__(self, turn: Turn, next: Next) -> None:
        if turn.event.kind == "timer":
            assert turn.conversation is not None, "the waker names the conversation it wakes"
            await self.engine.wake(turn, turn.conversation)
        elif turn.release is not None and turn.event.kind != "stage_changed":
            await self.engine.run(turn, turn.release)
        await next()
