"""The conversation hook: what the bot does with one event of one customer.

The worker calls `handle(event, customer, context)` inside the transaction that
marks the inbox item done; the returned effects are written to the outbox in that same
transaction. The flow engine implements this interface; `BuiltinResponder` is the
small responder the product ships with until flows are configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from bot.events import Effect, InboundEvent
from crm_store.models import Customer

if TYPE_CHECKING:
    from nlu.client import Intent


@dataclass(frozen=True)
class TurnContext:
    """What the pipeline learnt before the conversation layer runs."""

    session: AsyncSession
    intent: Intent | None = None
    is_new_customer: bool = False


class Conversation(Protocol):
    async def handle(self, event: InboundEvent, customer: Customer, context: TurnContext) -> Sequence[Effect]: ...
