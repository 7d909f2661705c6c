"""Signal follower: tags added and stages entered end or start sequences, convert referrals and grant
rewards, and may start a flow when none is running."""

from __future__ import annotations

from flows.engine import FlowEngine
from flows.growth import Growth
from flows.matching import match_signal
from flows.nurture_hooks import NurtureHooks
from flows.pipeline import Next
from flows.turn import Signal, Turn

MAX_SIGNAL_ROUNDS = 3  # a flow started by a signal may add tags that start another: bounded


class SignalFollower:
    name = "signals"

    def __init__(self, engine: FlowEngine, growth: Growth, nurture: NurtureHooks) -> None:
        self.engine = engine
        self.growth = growth
        self.nurture = nurture

    async def __call__(self, turn: Turn, next: Next) -> None:
        await self.follow(turn)
        await next()

    async def follow(self, turn: Turn) -> None:
        for _ in range(MAX_SIGNAL_ROUNDS):
            if not turn.signals:
                return
            signals, turn.signals = turn.signals, []
            await self._handle(turn, signals)
            release = turn.release
            if release is None:
                return
            match = next((m for kind, value in signals if (m := match_signal(release.flows, kind, value))), None)
            if match is None or self._running(turn):
                return
            await self.engine.start(turn, match, release)

    async def _handle(self, turn: Turn, signals: list[Signal]) -> None:
        """Sequences watch tags and stages; a stage may convert a referral and grant rewards."""
        for kind, value in signals:
            await self.nurture.signal(turn, kind, value)
            if kind == "stage":
                invited = turn.facts is None or turn.facts.invited
                turn.effects.extend(await self.growth.stage_reached(turn.session, turn.customer, value,
                                                                    turn.customer.id, invited))

    @staticmethod
    def _running(turn: Turn) -> bool:
        return turn.conversation is not None and turn.conversation.status == "active"
