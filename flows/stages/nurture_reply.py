"""Nurture reply: the customer wrote, so the last sequence step counts as answered, and sequences that
end on a reply end."""

from __future__ import annotations

from flows.nurture_hooks import NurtureHooks
from flows.pipeline import Next
from flows.turn import Turn


class NurtureReply:
    name = "nurture_reply"

    def __init__(self, nurture: NurtureHooks) -> None:
        self.nurture = nurture

    async def __call__(self, turn: Turn, next: Next) -> None:
        if turn.is_message:
            await self.nurture.replied(turn)
        await next()
