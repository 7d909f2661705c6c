"""Orders from the shop or the ERP, in as few statements as an order's transaction allows.

An order asks three things before it moves a stage: who the customer is (locked, merges
followed), whether this (source, order id) was received before, and whether the customer
bought before. The first two are one SELECT … FOR UPDATE with the order as subqueries;
the third is answered by the order's own INSERT … ON CONFLICT DO NOTHING … RETURNING,
which runs once the customer is locked, so it sees every order committed before it (and, for
the stage's handlers, whether anybody referred the customer and whether a sequence runs for
them: a stage that sees "no" skips its query, see crm_store/customer_facts.py). The
INSERT is also what makes a delivery arriving twice at once harmless: the second waits for
the first's commit, inserts nothing and answers the first's result.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BindParameter, Select, Table, bindparam, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from crm_store.api_models import Order
from crm_store.customer_facts import CustomerFacts
from crm_store.customer_queries import current_customer
from crm_store.dialect_insert import dialect_insert
from crm_store.growth_models import Referral
from crm_store.models import Customer, FlowRelease, Identity, utcnow
from crm_store.nurture_models import ENROLLED, Enrolment


@dataclass(frozen=True)
class StoredOrder:
    """An order as first received: the SHA-256 of its canonical body, and what it was answered."""

    request_sha256: str
    result: dict[str, Any]


@dataclass(frozen=True)
class OrderCustomer:
    """The order's customer, its row locked for the transaction, and the order if it came before."""

    customer: Customer
    facts: CustomerFacts
    stored: StoredOrder | None


@dataclass(frozen=True)
class NewOrder:
    id: int
    created_at: datetime
    bought_before: bool  # the customer has another order (from any source)
    invited: bool  # another customer referred this one: the purchase may convert it and earn rewards
    enrolled: bool  # in a sequence (active or paused): the stage move may convert it or end it

    def facts(self, read_with_the_customer: CustomerFacts) -> CustomerFacts:
        """The turn's facts, with what the INSERT read once the customer was locked."""
        return replace(read_with_the_customer, running_enrolments=self.enrolled, invited=self.invited)


class OrderExists(Exception):
    """(source, order id) is stored already: the caller rolls back and answers from `stored`."""

    def __init__(self, stored: StoredOrder) -> None:
        super().__init__("the order was received before")
        self.stored = stored


def _with_the_order(query: Select[Any]) -> Select[Any]:
    stored = (Order.source == bindparam("source")) & (Order.order_id == bindparam("order_id"))
    return query.add_columns(
        select(func.max(FlowRelease.id)).scalar_subquery(),
        select(Order.request_sha256).where(stored).scalar_subquery(),
        select(Order.result).where(stored).scalar_subquery(),
    ).with_for_update(of=Customer)


# Built once: executing the same statement object skips its construction and its cache key (memoized).
_BY_ID = _with_the_order(select(Customer).where(Customer.id == bindparam("customer_id")))
_BY_IDENTITY = _with_the_order(
    select(Customer).join(Identity, Identity.customer_id == Customer.id)
    .where(Identity.kind == bindparam("kind"), Identity.external_id == bindparam("external_id"))
)


async def lock_order_customer(session: AsyncSession, source: str, order_id: str, *, customer_id: int | None = None,
                              identity: tuple[str, str] | None = None) -> OrderCustomer | None:
    """The customer named by id or by identity (kind, external id), locked; None when there is none.

    A merged customer stands for the one it became: that one is locked and returned. Only the
    release is read with the customer; its other facts say "ask" (`NewOrder.facts` adds what the
    INSERT read once the row was locked: a lock's wait would leave this statement's reads stale).
    """
    order = {"source": source, "order_id": order_id}
    if customer_id is not None:
        row = (await session.execute(_BY_ID, {**order, "customer_id": customer_id})).first()
    else:
        assert identity is not None, "name the customer by id or by identity"
        kind, external_id = identity
        row = (await session.execute(_BY_IDENTITY, {**order, "kind": kind, "external_id": external_id})).first()
    if row is None:
        return None
    customer, release_id, sha256, result = row
    if customer.merged_into_id is not None:
        live = await current_customer(session, customer.id)
        if live is None or live.merged_into_id is not None:
            return None
        return await lock_order_customer(session, source, order_id, customer_id=live.id)
    stored = None if sha256 is None else StoredOrder(sha256, result or {})
    return OrderCustomer(customer, CustomerFacts(release_id, True, True, True, True), stored)


ORDERS = cast(Table, Order.__table__)  # Core on the write path: no objects wanted back
_OTHER = aliased(ORDERS)
_INSERTS: dict[str, Any] = {}  # by dialect: built once, as the SELECTs are
_SAVE_RESULT = update(ORDERS).where(ORDERS.c.id == bindparam("order_row_id")).values(result=bindparam("answer"))
_STORED = select(ORDERS.c.request_sha256, ORDERS.c.result).where(
    ORDERS.c.source == bindparam("source"), ORDERS.c.order_id == bindparam("order_id"))


def _insert(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect not in _INSERTS:
        buyer: BindParameter[int] = bindparam("buyer")
        bought_before = exists().where(  # another order of the customer's, from any source
            _OTHER.c.customer_id == buyer,
            ~((_OTHER.c.source == bindparam("this_source")) & (_OTHER.c.order_id == bindparam("this_order_id"))))
        _INSERTS[dialect] = (
            dialect_insert(session, ORDERS)
            .on_conflict_do_nothing(index_elements=["source", "order_id"])
            .returning(ORDERS.c.id, ORDERS.c.created_at, bought_before, exists().where(Referral.friend_id == buyer),
                       exists().where(Enrolment.customer_id == buyer, Enrolment.status.in_(ENROLLED)))
        )
    return _INSERTS[dialect]


async def insert_order(session: AsyncSession, source: str, order_id: str, customer_id: int, *, amount_cents: int,
                       currency: str, items: list[Any], request_sha256: str, paid_at: datetime | None) -> NewOrder:
    """Store the order (its result comes with `save_result`); `OrderExists` when it is stored already."""
    values = {"source": source, "order_id": order_id, "customer_id": customer_id, "amount_cents": amount_cents,
              "currency": currency, "status": "paid", "items": items, "request_sha256": request_sha256,
              "result": {}, "paid_at": paid_at, "created_at": utcnow(),
              "buyer": customer_id, "this_source": source, "this_order_id": order_id}
    row = (await session.execute(_insert(session), values)).first()
    if row is None:  # delivered twice at once: the other delivery's transaction has committed it
        stored = await stored_order(session, source, order_id)
        assert stored is not None, "ON CONFLICT found the order"
        raise OrderExists(stored)
    return NewOrder(row[0], row[1], bool(row[2]), bool(row[3]), bool(row[4]))


async def stored_order(session: AsyncSession, source: str, order_id: str) -> StoredOrder | None:
    """The order as first received, on its own (the usual way is with its customer)."""
    row = (await session.execute(_STORED, {"source": source, "order_id": order_id})).first()
    return None if row is None else StoredOrder(row.request_sha256, row.result)


async def save_result(session: AsyncSession, order_row_id: int, result: dict[str, Any]) -> None:
    """What the first delivery answered: a redelivery gets it back unchanged."""
    await session.execute(_SAVE_RESULT, {"order_row_id": order_row_id, "answer": result})
