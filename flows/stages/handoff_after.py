"""Handoff after the turn: does what happened call for a person (a flow's handoff step, an intent no flow
answers, two misses in a row, a high-value signal)? Then the desk hands the customer over."""

from __future__ import annotations

from flows.handoff_desk import HandoffDesk
from flows.pipeline import Next
from flows.turn import Turn


class HandoffAfter:
    name = "handoff_after"

    def __init__(self, desk: HandoffDesk) -> None:
        self.desk = desk

    async def __call__(self, turn: Turn, next: Next) -> None:
        await self.desk.after_turn(turn)
        await next()
