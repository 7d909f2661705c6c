"""Lifecycle: a customer leaving ends the running flow and churns; one arriving gets an owner or returns
from churn. Loads (and locks) the customer's running conversation for the stages after it."""

from __future__ import annotations

from core.events import ARRIVING, LEAVING
from crm_store import lifecycle as stages
from crm_store.conversations import active_conversation
from flows.engine import FlowEngine
from flows.pipeline import Next
from flows.turn import Turn


class LifecycleStage:
    name = "lifecycle"

    def __init__(self, lifecycle: stages.Lifecycle, engine: FlowEngine) -> None:
        self.lifecycle = lifecycle
        self.engine = engine

    async def __call__(self, turn: Turn, next: Next) -> None:
        if turn.conversation is None:  # the waker's turn names its conversation already
            turn.conversation = await active_conversation(turn.session, turn.customer.id)
        if turn.event.kind in LEAVING:
            await self._left(turn)
            return  # nothing more to say to someone who left
        if turn.event.kind in ARRIVING:
            await self._arrived(turn)
        await next()

    async def _left(self, turn: Turn) -> None:
        if turn.conversation is not None:
            self.engine.end(turn, turn.conversation, "customer_left")
        if await stages.churn(turn.session, turn.customer, f"event:{turn.event.kind}", self.lifecycle):
            turn.signals.append(("stage", self.lifecycle.churned))

    async def _arrived(self, turn: Turn) -> None:
        event, customer = turn.event, turn.customer
        if event.kind == "contact_added" and event.account and not customer.owner_userid:
            customer.owner_userid = event.account
        if customer.stage == self.lifecycle.churned:
            if await stages.return_from_churn(turn.session, customer, f"event:{event.kind}", self.lifecycle):
                turn.signals.append(("stage", customer.stage))
