"""The turn: one customer event being handled, the one object every pipeline stage reads and writes.

The worker (or the waker, or the API) makes it inside the transaction that will commit its
effects; stages fill in what they decide. Nothing of a turn outlives its transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from core.events import Effect, InboundEvent, MenuItem, Note, Reply
from crm_store.customer_facts import CustomerFacts
from crm_store.models import Conversation, Customer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from flows.model import FlowSet, MenuChoice
    from nlu.intent import Intent

SignalKind = Literal["tag", "stage"]
Signal = tuple[SignalKind, str]  # ("tag", name) / ("stage", id): what a turn changed, for the signal follower


@dataclass(frozen=True)
class Release:
    """The published flows a turn runs on: the release id and its flow set."""

    id: int
    flows: FlowSet


@dataclass
class Turn:
    """Who wrote, what was understood, what the published flows are, and what the turn produced."""

    session: AsyncSession
    event: InboundEvent
    customer: Customer
    intent: Intent | None = None
    is_new_customer: bool = False
    facts: CustomerFacts | None = None  # read with the customer as the turn began; None: stages ask the store
    release: Release | None = None  # set by the release stage; None: nothing is published
    conversation: Conversation | None = None  # the customer's running flow, loaded (and locked) once
    requested_flow: str = ""  # an entry channel's welcome flow, asked for on arrival
    effects: list[Effect] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    handoff: str = ""  # a flow's handoff step ran: its reason (the desk hands the customer over)
    fell_back: bool = False  # the fallback flow answered: the bot did not understand
    slots: dict[str, str] = field(default_factory=dict)  # the running flow's slots (live while steps run)

    @property
    def is_message(self) -> bool:
        return self.event.kind in ("message", "menu_click")

    def reply(self, text: str, menu: tuple[MenuChoice, ...] = ()) -> None:
        if text or menu:
            self.effects.append(Reply(text, tuple(MenuItem(c.id, c.text) for c in menu)))

    def note(self, kind: str, **data: Any) -> None:
        self.effects.append(Note(kind, data))
