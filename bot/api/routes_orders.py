"""Orders from the shop or the ERP: a purchase moves the customer's stage, and that is what pays referrals.

`POST /orders` is idempotent per (caller, order id): the first delivery stores the order, moves
the customer to the first purchase stage (`customer`) or, for a purchaser, the repeat stage
(`repeat`), runs the engine's stage handlers (the inviter's referral reward, nurture
conversions; a purchaser is no longer a new customer for new-customers-only group-buys) and
queues the notifications, all in one transaction. A redelivery with the same body gets the
same answer (200 instead of 201) and changes nothing; another body under the same id is a 409.

An order's transaction asks the store little (crm_store/orders.py): the customer is read and
locked with the order's earlier delivery, if any, and the published release in one statement;
the order's INSERT … ON CONFLICT DO NOTHING tells a first purchase from a repeat and makes a
delivery arriving twice at once harmless; the stage move is two Core statements; every timeline
row of the order is written in one INSERT at the end.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, field_validator, model_validator
from sqlalchemy.ext.asyncio import AsyncSession

from bot.api.auth import ApiContext, context, principal
from bot.api.errors import ApiError, read_json
from bot.api.routes_customers import Moment, Strict, follow_stage
from crm_store.customers import hold_timeline, record, write_timeline
from crm_store.lifecycle import move_locked_stage
from crm_store.orders import (
    OrderCustomer,
    OrderExists,
    StoredOrder,
    insert_order,
    lock_order_customer,
    save_result,
    stored_order,
)

FIRST_PURCHASE, REPEAT_PURCHASE = "customer", "repeat"
Money = Decimal


def _cents(value: Decimal) -> Decimal:
    if value != value.quantize(Decimal("0.01")):
        raise ValueError("at most 2 decimal places (yuan and fen)")
    return value.quantize(Decimal("0.01"))


class CustomerRef(Strict):
    """Exactly one of: the customer's id, WeCom external_userid, or OA openid."""

    id: int | None = Field(None, ge=1, lt=2**63)
    external_userid: str | None = Field(None, min_length=1, max_length=128)
    openid: str | None = Field(None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _exactly_one(self) -> CustomerRef:
        given = [name for name in ("id", "external_userid", "openid") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of id, external_userid, openid")
        return self


class OrderItem(Strict):
    sku: str = Field(min_length=1, max_length=64)
    name: str = Field("", max_length=128)
    quantity: int = Field(1, ge=1, le=100_000)
    price: Money | None = Field(None, ge=0, le=10_000_000_000, allow_inf_nan=False, description="yuan")

    @field_validator("price")
    @classmethod
    def _fen(cls, value: Decimal | None) -> Decimal | None:
        return None if value is None else _cents(value)


class OrderIn(Strict):
    order_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")
    customer: CustomerRef
    amount: Money = Field(ge=0, le=10_000_000_000, allow_inf_nan=False, description="yuan, e.g. \"199.00\"")
    currency: Literal["CNY"] = "CNY"
    items: list[OrderItem] = Field(default_factory=list, max_length=200)
    paid_at: AwareDatetime | None = None

    @field_validator("amount")
    @classmethod
    def _fen(cls, value: Decimal) -> Decimal:
        return _cents(value)

    @field_validator("paid_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(UTC)


class OrderResult(BaseModel):
    order_id: str
    source: str
    customer_id: int
    amount: str
    currency: str
    purchase: Literal["first", "repeat"]
    stage_before: str
    stage: str
    stage_changed: bool
    notifications: int
    created_at: Moment


async def post_order(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    order = await read_json(request, OrderIn, ctx.limits.max_body_bytes)
    canonical = json.dumps(order.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    try:
        async with ctx.runtime.sessions.begin() as session:
            result = await _record_order(ctx, session, caller.name, order, fingerprint)
    except OrderExists as exists:  # rolled back: nothing of this delivery is written
        return _replay(exists.stored, order.order_id, fingerprint)
    return web.json_response(text=result.model_dump_json(), status=201)


def _replay(stored: StoredOrder, order_id: str, fingerprint: str) -> web.Response:
    if stored.request_sha256 != fingerprint:
        raise ApiError(409, "order_conflict", f"order {order_id!r} was already received with a different body",
                       {"order_id": order_id})
    return web.json_response(stored.result, status=200, headers={"Idempotent-Replayed": "true"})


async def _record_order(ctx: ApiContext, session: AsyncSession, source: str, order: OrderIn, fingerprint: str
                        ) -> OrderResult:
    """The order, its stage move and what the stage's handlers do, with the timeline written once at the end."""
    found = await _locked_customer(session, source, order)
    if found.stored is not None:
        raise OrderExists(found.stored)
    customer = found.customer
    row = await insert_order(session, source, order.order_id, customer.id, amount_cents=int(order.amount * 100),
                             currency=order.currency, items=[item.model_dump(mode="json") for item in order.items],
                             request_sha256=fingerprint, paid_at=order.paid_at)
    purchaser = customer.stage in ctx.runtime.settings.growth.purchase_stages or row.bought_before
    before = customer.stage
    target = REPEAT_PURCHASE if purchaser else FIRST_PURCHASE
    changed, sent = False, 0
    hold_timeline(session)
    if target in ctx.lifecycle.stage_ids:
        changed = await move_locked_stage(session, customer, target, f"order:{source}:{order.order_id}",
                                          ctx.lifecycle, force=True)
    if changed:
        sent = await follow_stage(ctx, session, customer, target, f"api:order:{row.id}", row.facts(found.facts))
    await record(session, customer.id, "order.paid", {"order_id": order.order_id, "source": source,
                                                      "amount": str(order.amount), "currency": order.currency})
    result = OrderResult(order_id=order.order_id, source=source, customer_id=customer.id, amount=str(order.amount),
                         currency=order.currency, purchase="repeat" if purchaser else "first", stage_before=before,
                         stage=customer.stage, stage_changed=changed, notifications=sent, created_at=row.created_at)
    await save_result(session, row.id, json.loads(result.model_dump_json()))
    await write_timeline(session)
    return result


async def _locked_customer(session: AsyncSession, source: str, order: OrderIn) -> OrderCustomer:
    """The customer, locked, with the order if it came before; a 404 only for an order never received
    (a stored order is answered, or refused as a conflict, whoever its body names now)."""
    ref = order.customer
    if ref.id is not None:
        found = await lock_order_customer(session, source, order.order_id, customer_id=ref.id)
        missing = ApiError(404, "not_found", f"no customer {ref.id}")
    else:
        kind, external_id = ("wecom", ref.external_userid) if ref.external_userid is not None else ("oa", ref.openid)
        found = await lock_order_customer(session, source, order.order_id, identity=(kind, external_id or ""))
        missing = ApiError(404, "customer_not_found", f"no customer with {kind} id {external_id!r}")
    if found is None:
        stored = await stored_order(session, source, order.order_id)
        raise missing if stored is None else OrderExists(stored)
    return found


def add_routes(api: web.Application) -> None:
    api.router.add_post("/orders", post_order)
