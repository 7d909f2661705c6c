"""Campaigns and sequences: what runs (read), and enrolling one customer in a sequence (write).

An enrolment through the API is the same as `scrm sequences enroll ID`: the current version,
merges followed, customers who opted out of marketing left out (409), already enrolled → 409.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from bot.api.auth import context, principal
from bot.api.errors import ApiError, read_json, read_query
from bot.api.routes_customers import Moment, Strict, locked_customer
from crm_store.campaigns import list_campaigns, yuan
from crm_store.enrolments import EnrolError, enrol
from crm_store.sequence_stats import sequence_overview


class PageQuery(Strict):
    limit: int = Field(50, ge=1, le=200)
    offset: int = Field(0, ge=0, le=100_000)


class CampaignQuery(PageQuery):
    status: str | None = Field(None, max_length=16, description="open | closed")


class CampaignOut(BaseModel):
    code: str
    name: str
    product: str
    status: str
    price: str
    group_size: int
    starts_at: Moment
    ends_at: Moment
    stock: int
    groups_opened: int
    groups_open: int
    groups_filled: int
    groups_expired: int
    members: int
    fill_rate: float | None


class CampaignPage(BaseModel):
    items: list[CampaignOut]
    limit: int
    offset: int
    next_offset: int | None


class SequenceOut(BaseModel):
    name: str
    version: int
    paused: bool
    retired: bool
    enrolled: int
    active: int
    steps: int
    description: str


class SequencePage(BaseModel):
    items: list[SequenceOut]
    limit: int
    offset: int
    next_offset: int | None


class EnrolmentIn(Strict):
    customer_id: int = Field(ge=1, lt=2**63)


class EnrolmentOut(BaseModel):
    id: int
    sequence: str
    version: int
    customer_id: int
    status: str
    enrolled_at: Moment


def _next(offset: int, limit: int, total: int) -> int | None:
    return offset + limit if offset + limit < total else None


async def get_campaigns(request: web.Request) -> web.Response:
    ctx, query = context(request), read_query(request, CampaignQuery)
    async with ctx.runtime.sessions() as session:
        stats = [s for s in await list_campaigns(session) if query.status in (None, s.campaign.status)]
    items = [CampaignOut(
        code=s.campaign.code, name=s.campaign.name, product=s.campaign.product, status=s.campaign.status,
        price=yuan(s.campaign.price_cents), group_size=s.campaign.group_size, starts_at=s.campaign.starts_at,
        ends_at=s.campaign.ends_at, stock=s.campaign.stock, groups_opened=s.opened, groups_open=s.open,
        groups_filled=s.filled, groups_expired=s.expired, members=s.members, fill_rate=s.fill_rate,
    ) for s in stats]
    page = CampaignPage(items=items[query.offset:query.offset + query.limit], limit=query.limit,
                        offset=query.offset, next_offset=_next(query.offset, query.limit, len(items)))
    return web.json_response(text=page.model_dump_json())


async def get_sequences(request: web.Request) -> web.Response:
    ctx, query = context(request), read_query(request, PageQuery)
    async with ctx.runtime.sessions() as session:
        rows = await sequence_overview(session)
    items = [SequenceOut(name=r["sequence"], version=r["version"], paused=r["paused"], retired=r["retired"],
                         enrolled=r["enrolled"], active=r["active"], steps=r["steps"], description=r["description"])
             for r in rows]
    page = SequencePage(items=items[query.offset:query.offset + query.limit], limit=query.limit,
                        offset=query.offset, next_offset=_next(query.offset, query.limit, len(items)))
    return web.json_response(text=page.model_dump_json())


async def post_enrolment(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    name = request.match_info["name"]
    body = await read_json(request, EnrolmentIn, ctx.limits.max_body_bytes)
    async with ctx.runtime.sessions.begin() as session:
        try:
            sequence, state = await ctx.domain.nurture.catalog.current(session, name[:64])
        except EnrolError as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        customer = await locked_customer(session, body.customer_id)
        if sequence.marketing and customer.marketing_opt_out:
            raise ApiError(409, "opted_out", f"customer {customer.id} opted out of marketing messages")
        made = await enrol(session, customer.id, sequence, state.current_version, f"api:{caller.name}", ctx.zone)
        if made is None:
            raise ApiError(409, "already_enrolled", f"customer {customer.id} is already in {name}")
        out = EnrolmentOut(id=made.id, sequence=made.sequence, version=made.version, customer_id=customer.id,
                           status=made.status, enrolled_at=made.enrolled_at)
    return web.json_response(text=out.model_dump_json(), status=201)


def add_routes(api: web.Application) -> None:
    api.router.add_get("/campaigns", get_campaigns)
    api.router.add_get("/sequences", get_sequences)
    api.router.add_post("/sequences/{name}/enrolments", post_enrolment)
