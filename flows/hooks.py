"""Hooks: the `action` steps and `check` conditions that other parts of the product provide.

Group-buy, invite-for-reward and nurture sequences register their handlers here; the
flow engine only knows names (flows/growth_hooks.py registers the growth mechanics). An action nobody registered is not silent: the step is
recorded on the timeline as unavailable, logged, and the flow carries on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.events import Effect, InboundEvent
from crm_store.models import Customer


@dataclass(frozen=True)
class HookCall:
    """What a hook may look at: the customer, the event, the slots so far and the step's params."""

    session: AsyncSession
    customer: Customer
    event: InboundEvent
    slots: Mapping[str, str]
    params: Mapping[str, Any]


@dataclass(frozen=True)
class ActionResult:
    slots: Mapping[str, str] = field(default_factory=dict)  # filled for the steps after it
    replies: tuple[str, ...] = ()
    goto: str = ""  # a step of the flow to continue at instead of `next`
    effects: tuple[Effect, ...] = ()  # notes for the timeline, notifications to other customers
    signals: tuple[tuple[str, str], ...] = ()  # ("stage", id) / ("tag", name) the action caused


@dataclass(frozen=True)
class ArrivalResult:
    """What an arrival through a code (channel, invite, group) asks for: a flow to start, effects."""

    flow: str = ""
    effects: tuple[Effect, ...] = ()
    signals: tuple[tuple[str, str], ...] = ()


ActionHandler = Callable[[HookCall], Awaitable[ActionResult]]
CheckHandler = Callable[[HookCall], Awaitable[bool]]
ArrivalHandler = Callable[[HookCall], Awaitable[ArrivalResult]]
StageHandler = Callable[[HookCall, str], Awaitable[Sequence[Effect]]]
SignalHandler = Callable[[HookCall, str, str], Awaitable[None]]  # ("tag", name) / ("stage", id)
MessageHandler = Callable[[HookCall], Awaitable[None]]  # the customer wrote


@dataclass
class Hooks:
    """actions and checks by name; arrival handlers see every arriving event (they read its scene code);
    stage handlers hear of every stage the turn's customer entered; signal handlers of every tag added
    and stage entered; message handlers of every message the customer wrote."""

    actions: dict[str, ActionHandler] = field(default_factory=dict)
    checks: dict[str, CheckHandler] = field(default_factory=dict)
    arrivals: list[ArrivalHandler] = field(default_factory=list)
    stage_handlers: list[StageHandler] = field(default_factory=list)
    signal_handlers: list[SignalHandler] = field(default_factory=list)
    message_handlers: list[MessageHandler] = field(default_factory=list)

    def action(self, name: str) -> Callable[[ActionHandler], ActionHandler]:
        def register(handler: ActionHandler) -> ActionHandler:
            self.actions[name] = handler
            return handler

        return register

    def check(self, name: str) -> Callable[[CheckHandler], CheckHandler]:
        def register(handler: CheckHandler) -> CheckHandler:
            self.checks[name] = handler
            return handler

        return register
