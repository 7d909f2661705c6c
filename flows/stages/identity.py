"""Identity: the worker found (or made) the customer; a new one starts at the lifecycle's first stage."""

from __future__ import annotations

from crm_store.lifecycle import Lifecycle
from flows.pipeline import Next
from flows.turn import Turn


class IdentityStage:
    name = "identity"

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    async def __call__(self, turn: Turn, next: Next) -> None:
        if turn.is_new_customer and turn.customer.stage != self.lifecycle.initial:
            turn.customer.stage = self.lifecycle.initial
        await next()
