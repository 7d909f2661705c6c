"""Events other systems report about a customer (POST /api/v1/events): into the inbox, then the flows.

An external event is an InboundEvent (channel `api`, kind `external`, sender = the customer id)
stored in the same durable inbox as WeChat's callbacks, so it is processed once, in order with
the customer's other external events, by any worker; flows with an `external:` trigger start on
it and read its data as slots. The caller's event id is the dedup key: a retry is a no-op.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.inbox import store_events
from core.events import InboundEvent
from crm_store.customers import live_customer

EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
EVENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
MAX_DATA_KEYS = 50


class ExternalEventError(ValueError):
    """An event that cannot be accepted, and why."""


async def report_event(session: AsyncSession, customer_id: int, name: str, event_id: str,
                       data: Mapping[str, Any] | None = None, source: str = "api") -> tuple[int, bool]:
    """Queue the event for the customer (followed through merges); (customer id, newly stored)."""
    if not EVENT_NAME.fullmatch(name):
        raise ExternalEventError("name: lower-case letters, digits and _ (e.g. order_shipped)")
    if not EVENT_ID.fullmatch(event_id):
        raise ExternalEventError("event_id: 1-100 letters, digits or _ . : -")
    values = dict(data or {})
    if len(values) > MAX_DATA_KEYS or not all(isinstance(v, str | int | float | bool) for v in values.values()):
        raise ExternalEventError(f"data: at most {MAX_DATA_KEYS} keys with text, number or true/false values")
    customer = await live_customer(session, customer_id)
    event = InboundEvent(channel="api", kind="external", dedup_key=f"api:{source}:{event_id}",
                         sender=str(customer.id), created_at=int(time.time()),
                         extra={"name": name, "data": values, "source": source})
    stored = await store_events(session, [event])
    return customer.id, bool(stored)
