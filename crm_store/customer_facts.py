"""A known customer and the facts a turn asks about them, read in one statement.

Most messages come from known customers with no open handoff, no running sequence and
nothing recent to count as replied. Asking each of those questions on its own cost a
round trip per message whatever the customer said; here they are subqueries of the
customer's own SELECT, answered from the same snapshot, so a stage that sees "no" can
skip its query and a stage that sees "yes" (or has no facts: a new customer, a timer,
an API call) asks as before. Nothing is cached: the facts are as fresh as the turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.allowances import HeldMessage
from crm_store.enrolments import REPLY_WINDOW
from crm_store.handoff_models import OPEN_STATUSES, Handoff
from crm_store.models import Customer, FlowRelease, Identity
from crm_store.nurture_models import ENROLLED, Enrolment, NurtureSend


@dataclass(frozen=True)
class CustomerFacts:
    """What the turn's stages would otherwise ask the store one by one."""

    release_id: int | None  # the published release (None: nothing is published)
    open_handoff: bool  # a handoff is queued, offered or taken
    running_enrolments: bool  # enrolled in a sequence (active or paused)
    unreplied_sends: bool  # a sequence step or push sent within the reply window, not yet replied to
    held_messages: bool = False  # notifications wait for the customer's next message (no allowance was left)
    invited: bool = True  # referred by another customer: a purchase may convert it and earn rewards (True: ask)


# Built once: executing the same statement object skips its construction and its cache key (memoized).
_KNOWN_CUSTOMER = (
    select(
        Customer,
        select(func.max(FlowRelease.id)).scalar_subquery(),
        exists().where(Handoff.customer_id == Customer.id, Handoff.status.in_(OPEN_STATUSES)),
        exists().where(Enrolment.customer_id == Customer.id, Enrolment.status.in_(ENROLLED)),
        exists().where(NurtureSend.customer_id == Customer.id, NurtureSend.status == "sent",
                       NurtureSend.replied_at.is_(None), NurtureSend.sent_at >= bindparam("replied_since")),
        exists().where(HeldMessage.customer_id == Customer.id),
    )
    .join(Identity)
    .where(Identity.kind == bindparam("kind"), Identity.external_id == bindparam("external_id"))
)


async def known_customer(
    session: AsyncSession, kind: str, external_id: str, now: datetime
) -> tuple[Customer, CustomerFacts] | None:
    """The live customer behind a known identity, with its facts; None when the identity is unknown or
    its customer was merged into another (the caller then resolves it the long way)."""
    params = {"kind": kind, "external_id": external_id, "replied_since": now - REPLY_WINDOW}
    row = (await session.execute(_KNOWN_CUSTOMER, params)).first()
    if row is None or row[0].merged_into_id is not None:
        return None
    customer, release_id, open_handoff, enrolled, unreplied, held = row
    return customer, CustomerFacts(release_id, bool(open_handoff), bool(enrolled), bool(unreplied), bool(held))
