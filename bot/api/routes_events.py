"""External events (POST /api/v1/events): another system says something happened to a customer.

The event is stored in the durable inbox by its id (bot/external_events.py) and answered 202:
flows with an `external:` trigger run on it in a worker, in order per customer. A repeat of the
same event id is a no-op (200, `"duplicate": true`), so a caller may retry freely.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from bot.api.auth import context, principal
from bot.api.errors import ApiError, read_json
from bot.api.routes_customers import Strict, locked_customer
from bot.external_events import EVENT_ID, EVENT_NAME, ExternalEventError, report_event

Scalar = str | int | float | bool


class EventIn(Strict):
    event_id: Annotated[str, StringConstraints(pattern=EVENT_ID.pattern)] = Field(
        description="the caller's id of this event: a retry with the same id is stored once")
    customer_id: int = Field(ge=1, lt=2**63)
    name: Annotated[str, StringConstraints(pattern=EVENT_NAME.pattern)] = Field(
        description="what happened, e.g. order_shipped: flows start on `external: order_shipped`")
    data: dict[Annotated[str, StringConstraints(max_length=64)], Scalar] = Field(
        default_factory=dict, max_length=50, description="values a flow can show as slots")


class EventAccepted(BaseModel):
    event_id: str
    customer_id: int
    duplicate: bool


async def post_event(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    body = await read_json(request, EventIn, ctx.limits.max_body_bytes)
    async with ctx.runtime.sessions.begin() as session:
        customer = await locked_customer(session, body.customer_id)
        try:
            customer_id, new = await report_event(session, customer.id, body.name, body.event_id, body.data,
                                                  source=caller.name)
        except ExternalEventError as exc:
            raise ApiError(422, "invalid", str(exc)) from None
    if new:
        ctx.runtime.inbox.wake()
    out = EventAccepted(event_id=body.event_id, customer_id=customer_id, duplicate=not new)
    return web.json_response(text=out.model_dump_json(), status=202 if new else 200)


def add_routes(api: web.Application) -> None:
    api.router.add_post("/events", post_event)
