"""Growth arrival: a code on arrival (an entry channel, an invite, a group) attributes the customer, may name
a welcome flow, and may enrol them in the sequences that watch for it."""

from __future__ import annotations

from core.events import ARRIVING
from flows.growth import Growth
from flows.nurture_hooks import NurtureHooks
from flows.pipeline import Next
from flows.turn import Turn


class GrowthArrival:
    name = "growth_arrival"

    def __init__(self, growth: Growth, nurture: NurtureHooks) -> None:
        self.growth = growth
        self.nurture = nurture

    async def __call__(self, turn: Turn, next: Next) -> None:
        if turn.event.scene and turn.event.kind in ARRIVING:
            arrival = await self.growth.arrival(turn)
            turn.effects.extend(arrival.effects)
            turn.signals.extend(arrival.signals)
            turn.requested_flow = arrival.flow
            await self.nurture.arrival(turn)
        await next()
