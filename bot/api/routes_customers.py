"""Customers: find (filtered, paginated), one customer's card with its timeline, tags, stage moves.

A stage move through the API is followed exactly as a flow's is: the engine's signal and
stage handlers run in the same transaction (referral conversions and rewards, nurture
exits and enrolments), and what they say to people goes to the outbox from there.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.api.auth import ApiContext, context
from bot.api.errors import ApiError, path_id, read_json, read_query
from bot.effects_writer import write_effects
from core.events import InboundEvent
from crm_store.customer_facts import CustomerFacts
from crm_store.customer_queries import CustomerRow, current_customer, customer_card, find_customers
from crm_store.lifecycle import StageNotAllowed, set_stage
from crm_store.models import Customer, as_utc
from crm_store.tags import add_tags, remove_tags, tags_of
from flows.turn import Turn

Moment = Annotated[datetime, AfterValidator(as_utc)]  # SQLite reads naive UTC times back
TagName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerQuery(Strict):
    stage: str | None = Field(None, max_length=32, description="stage id or label")
    tags: str | None = Field(None, max_length=512, description="comma-separated: customers carrying every one")
    q: str | None = Field(None, max_length=128, description="text in names, channel ids and messages")
    sort: Literal["seen", "social"] = "seen"
    limit: int = Field(50, ge=1, le=200)
    offset: int = Field(0, ge=0, le=100_000)


class CustomerOut(BaseModel):
    id: int
    display_name: str
    stage: str
    stage_label: str
    tags: list[str]
    identities: list[str]
    last_seen_at: Moment | None
    social: float


class CustomerPage(BaseModel):
    items: list[CustomerOut]
    limit: int
    offset: int
    next_offset: int | None = Field(description="the offset of the next page; null on the last page")


class StageStepOut(BaseModel):
    from_stage: str
    to_stage: str
    reason: str
    at: Moment


class TimelineOut(BaseModel):
    at: Moment
    kind: str
    data: dict[str, object]


class CustomerDetail(CustomerOut):
    marketing_opt_out: bool
    owner_userid: str | None
    inviter_id: int | None
    stage_history: list[StageStepOut]
    timeline: list[TimelineOut]


class CardQuery(Strict):
    timeline_limit: int = Field(50, ge=1, le=200)


class TagChange(Strict):
    add: list[TagName] = Field(default_factory=list, max_length=50)
    remove: list[TagName] = Field(default_factory=list, max_length=50)


class TagResult(BaseModel):
    tags: list[str]
    added: list[str]
    removed: list[str]


class StageChangeIn(Strict):
    stage: str = Field(min_length=1, max_length=32, description="stage id or label")
    reason: str = Field("api", max_length=200)
    force: bool = Field(False, description="move even where lifecycle.transitions does not allow it")


class StageResult(BaseModel):
    stage: str
    stage_label: str
    changed: bool
    notifications: int


def _out(ctx: ApiContext, row: CustomerRow) -> CustomerOut:
    return CustomerOut(id=row.id, display_name=row.display_name, stage=row.stage,
                       stage_label=ctx.lifecycle.label(row.stage), tags=list(row.tags),
                       identities=list(row.identities), last_seen_at=row.last_seen_at, social=row.social)


async def list_customers(request: web.Request) -> web.Response:
    ctx, query = context(request), read_query(request, CustomerQuery)
    stage = _stage_id(ctx, query.stage) if query.stage else None
    tags = [tag.strip() for tag in (query.tags or "").split(",") if tag.strip()]
    async with ctx.runtime.sessions() as session:
        rows = await find_customers(session, tags=tags, stage=stage, text=query.q, sort=query.sort,
                                    limit=query.limit + 1, offset=query.offset)
    more = len(rows) > query.limit
    page = CustomerPage(items=[_out(ctx, row) for row in rows[:query.limit]], limit=query.limit,
                        offset=query.offset, next_offset=query.offset + query.limit if more else None)
    return web.json_response(text=page.model_dump_json())


async def get_customer(request: web.Request) -> web.Response:
    ctx, customer_id = context(request), path_id(request, "customer_id")
    query = read_query(request, CardQuery)
    async with ctx.runtime.sessions() as session:
        card = await customer_card(session, customer_id, ctx.lifecycle, query.timeline_limit)
    if card is None:
        raise ApiError(404, "not_found", f"no customer {customer_id}")
    detail = CustomerDetail(
        **_out(ctx, card.row).model_dump(), marketing_opt_out=card.marketing_opt_out,
        owner_userid=card.owner_userid, inviter_id=card.growth.inviter_id,
        stage_history=[StageStepOut(from_stage=s.from_stage, to_stage=s.to_stage, reason=s.reason, at=s.at)
                       for s in card.stage_history],
        timeline=[TimelineOut(at=e.at, kind=e.kind, data=e.data) for e in card.timeline],
    )
    return web.json_response(text=detail.model_dump_json())


async def change_tags(request: web.Request) -> web.Response:
    ctx, customer_id = context(request), path_id(request, "customer_id")
    change = await read_json(request, TagChange, ctx.limits.max_body_bytes)
    async with ctx.runtime.sessions.begin() as session:
        customer = await locked_customer(session, customer_id)
        added = await add_tags(session, customer, change.add, "api") if change.add else []
        removed = await remove_tags(session, customer, change.remove, "api") if change.remove else []
        result = TagResult(tags=await tags_of(session, customer.id), added=added, removed=removed)
    return web.json_response(text=result.model_dump_json())


async def change_stage(request: web.Request) -> web.Response:
    ctx, customer_id = context(request), path_id(request, "customer_id")
    change = await read_json(request, StageChangeIn, ctx.limits.max_body_bytes)
    stage = _stage_id(ctx, change.stage)
    async with ctx.runtime.sessions.begin() as session:
        customer = await locked_customer(session, customer_id)
        try:
            changed = await set_stage(session, customer, stage, f"api:{change.reason}", ctx.lifecycle,
                                      force=change.force)
        except StageNotAllowed as exc:
            raise ApiError(409, "stage_not_allowed", str(exc),
                           {"from": exc.from_stage, "to": exc.to_stage, "allowed": list(exc.allowed)}) from None
        dedup = f"api:stage:{customer.id}:{uuid.uuid4().hex}"
        sent = await follow_stage(ctx, session, customer, stage, dedup) if changed else 0
        result = StageResult(stage=customer.stage, stage_label=ctx.lifecycle.label(customer.stage),
                             changed=changed, notifications=sent)
    return web.json_response(text=result.model_dump_json())


def _stage_id(ctx: ApiContext, name: str) -> str:
    try:
        return ctx.lifecycle.resolve(name)
    except ValueError as exc:
        raise ApiError(422, "unknown_stage", str(exc), {"stages": list(ctx.lifecycle.stage_ids)}) from None


async def locked_customer(session: AsyncSession, customer_id: int) -> Customer:
    """The customer (merges followed), its row locked for the transaction; 404 when there is none."""
    customer = await current_customer(session, customer_id)
    if customer is None:
        raise ApiError(404, "not_found", f"no customer {customer_id}")
    locked = await session.scalar(select(Customer).where(Customer.id == customer.id).with_for_update())
    assert locked is not None
    return locked


async def follow_stage(ctx: ApiContext, session: AsyncSession, customer: Customer, stage: str, dedup: str,
                       facts: CustomerFacts | None = None) -> int:
    """A stage change made outside a chat, followed by the same pipeline as one a flow makes (sequences,
    referral conversion, rewards, a flow the stage starts); messages queued.

    The customer is not in a chat turn, so what would have been a reply to them is a notification
    where they last chatted. `facts`: what was read with the customer (None: the stages ask).
    """
    event = InboundEvent(channel="api", kind="stage_changed", dedup_key=dedup, sender=str(customer.id),
                         extra={"name": "api.stage"})
    turn = Turn(session, event, customer, facts=facts, signals=[("stage", stage)])
    effects = await ctx.domain.pipeline.run(turn)
    return await write_effects(session, f"{dedup}:{stage}", event, customer, effects,
                               ctx.runtime.settings.wecom.app.agent_id)


def add_routes(api: web.Application) -> None:
    api.router.add_get("/customers", list_customers)
    api.router.add_get("/customers/{customer_id}", get_customer)
    api.router.add_post("/customers/{customer_id}/tags", change_tags)
    api.router.add_put("/customers/{customer_id}/stage", change_stage)
