"""Handoff gate: while a person has the customer, the bot says nothing (the rep's own events are noted)."""

from __future__ import annotations

from core.events import OUTSIDE_THE_CHAT
from flows.handoff_desk import HandoffDesk
from flows.pipeline import Next
from flows.turn import Turn


class HandoffGate:
    name = "handoff_gate"

    def __init__(self, desk: HandoffDesk) -> None:
        self.desk = desk

    async def __call__(self, turn: Turn, next: Next) -> None:
        if turn.event.kind in OUTSIDE_THE_CHAT or not await self.desk.holds(turn):
            await next()
