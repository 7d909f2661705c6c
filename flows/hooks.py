"""Hooks: the `action` steps and `check` conditions that other parts of the product provide.

Group-buy, invite-for-reward and nurture sequences register their handlers here; the
flow runner only knows names (flows/growth_hooks.py registers the growth mechanics). An
action nobody registered is not silent: the step is recorded on the timeline as
unavailable, logged, and the flow carries on. Handlers see the turn (its `slots` are the
running flow's, so far) and the step's params.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.events import Effect
from flows.turn import Signal, Turn


@dataclass(frozen=True)
class ActionResult:
    slots: Mapping[str, str] = field(default_factory=dict)  # filled for the steps after it
    replies: tuple[str, ...] = ()
    goto: str = ""  # a step of the flow to continue at instead of `next`
    effects: tuple[Effect, ...] = ()  # notes for the timeline, notifications to other customers
    signals: tuple[Signal, ...] = ()  # ("stage", id) / ("tag", name) the action caused


ActionHandler = Callable[[Turn, Mapping[str, Any]], Awaitable[ActionResult]]
CheckHandler = Callable[[Turn], Awaitable[bool]]


@dataclass
class Hooks:
    """Actions and checks by name."""

    actions: dict[str, ActionHandler] = field(default_factory=dict)
    checks: dict[str, CheckHandler] = field(default_factory=dict)
