"""Outgoing webhooks: endpoints, which timeline events they receive, the feed that queues them, replays.

Every business event is already on a customer's timeline. The feed reads the timeline
after its cursor and, in the transaction that advances the cursor, writes one outbox row
(kind "webhook.post", dedup key `webhook:<endpoint id>:<timeline id>`) per subscribed
endpoint; the outbox sender then signs and POSTs it (bot/webhook_sender.py). The cursor
row is locked FOR UPDATE and the dedup key is unique, so several processes never queue
an event twice. A replay writes new rows with fresh keys (the event id stays the same, so
a receiver that deduplicates by X-Scrm-Event-Id can tell).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, delete, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.dialect_insert import dialect_insert
from crm_store.models import Lane, OutboxItem, TimelineEvent, as_utc, utcnow
from crm_store.webhook_models import WebhookCursor, WebhookDelivery, WebhookEndpoint
from crm_store.work_queue import insert_ignoring_duplicates

WEBHOOK_POST = "webhook.post"  # the outbox kind
FEED = "timeline"  # the feed's cursor name
ALL = "*"
PING = "ping"

# timeline kind -> webhook event type
EVENT_TYPES: dict[str, str] = {
    "stage.changed": "stage.changed",
    "tag.added": "tag.added",
    "tag.removed": "tag.removed",
    "handoff.opened": "handoff.opened",
    "handoff.taken": "handoff.taken",
    "handoff.closed": "handoff.closed",
    "reward.granted": "reward.granted",
    "reward.reversed": "reward.reversed",
    "group.filled": "group_buy.filled",
    "group.expired": "group_buy.expired",
}
TIMELINE_KINDS = {webhook_type: kind for kind, webhook_type in EVENT_TYPES.items()}


class WebhookError(Exception):
    """An endpoint or a replay that cannot be set up as asked (the message says why)."""


def check_url(url: str) -> str:
    """An http(s) URL with a host and no user:password in it (secrets belong in the signing secret)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise WebhookError("the URL must not contain credentials (user:password@); receivers check the signature")
    if len(url.strip()) > 500:
        raise WebhookError("the URL is longer than 500 characters")
    return url.strip()


def check_events(events: Sequence[str]) -> list[str]:
    """Known webhook event types (or "*" for all), without duplicates, in the order given."""
    if not events:
        raise WebhookError(f"name at least one event: {', '.join(sorted(TIMELINE_KINDS))}, or * for all")
    unknown = [event for event in events if event != ALL and event not in TIMELINE_KINDS]
    if unknown:
        raise WebhookError(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(sorted(TIMELINE_KINDS))}")
    return [ALL] if ALL in events else list(dict.fromkeys(events))


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Scrm-Signature value: HMAC-SHA256 of `<timestamp>.<body>` with the endpoint's secret."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def subscribed(endpoint: WebhookEndpoint, webhook_type: str) -> bool:
    return endpoint.active and (ALL in endpoint.events or webhook_type in endpoint.events or webhook_type == PING)


def event_id(timeline_id: int) -> str:
    return f"evt_{timeline_id}"


def parse_event_id(text: str) -> int:
    """`123` or `evt_123` → 123."""
    digits = text.removeprefix("evt_")
    if not digits.isdigit():
        raise WebhookError(f"{text!r} is not an event id (evt_123 or 123)")
    return int(digits)


def event_body(event: TimelineEvent) -> dict[str, Any]:
    """What the receiver gets: {id, type, occurred_at, customer_id, data}."""
    return {"id": event_id(event.id), "type": EVENT_TYPES[event.kind],
            "occurred_at": as_utc(event.created_at).isoformat(), "customer_id": event.customer_id,
            "data": event.data}


def ping_body() -> dict[str, Any]:
    return {"id": f"ping_{uuid.uuid4().hex[:16]}", "type": PING, "occurred_at": utcnow().isoformat(),
            "customer_id": None, "data": {"message": "a test event from scrm webhooks test"}}


def outbox_row(endpoint_id: int, body: dict[str, Any], dedup_key: str) -> dict[str, Any]:
    customer = body["customer_id"]
    return {"dedup_key": dedup_key, "queue_key": f"webhook:{endpoint_id}:{customer or 0}", "kind": WEBHOOK_POST,
            "payload": {"endpoint_id": endpoint_id, "event": body}, "customer_id": customer,
            "lane": int(Lane.TRANSACTIONAL)}


async def add_endpoint(session: AsyncSession, url: str, events: Sequence[str], secret: str | None = None
                       ) -> WebhookEndpoint:
    if secret is not None and len(secret) < 16:
        raise WebhookError("a secret needs at least 16 characters (leave it out to have one generated)")
    endpoint = WebhookEndpoint(url=check_url(url), events=check_events(events), secret=secret or new_secret(),
                               active=True, created_at=utcnow())
    session.add(endpoint)
    await session.flush()
    await _cursor(session, FEED)  # from now on: an endpoint gets what happens after it was added
    return endpoint


async def endpoints(session: AsyncSession, active_only: bool = False) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).order_by(WebhookEndpoint.id)
    if active_only:
        query = query.where(WebhookEndpoint.active)
    return list(await session.scalars(query))


async def get_endpoint(session: AsyncSession, endpoint_id: int) -> WebhookEndpoint:
    endpoint = await session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise WebhookError(f"no webhook endpoint #{endpoint_id} (see: scrm webhooks list)")
    return endpoint


async def remove_endpoint(session: AsyncSession, endpoint_id: int) -> WebhookEndpoint:
    """Delete the endpoint and its delivery log; its queued deliveries fail as "endpoint removed"."""
    endpoint = await get_endpoint(session, endpoint_id)
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
    await session.delete(endpoint)
    return endpoint


async def _cursor(session: AsyncSession, name: str) -> WebhookCursor:
    """The feed's cursor, locked; a new one starts after the newest timeline event."""
    newest = (await session.execute(select(TimelineEvent.xact, TimelineEvent.id)
                                    .order_by(TimelineEvent.xact.desc(), TimelineEvent.id.desc()).limit(1))).first()
    xact, event_id = newest if newest is not None else (0, 0)
    await session.execute(dialect_insert(session, WebhookCursor)
                          .values(name=name, last_xact=xact, last_event_id=event_id, updated_at=utcnow())
                          .on_conflict_do_nothing(index_elements=["name"]))
    cursor = await session.scalar(select(WebhookCursor).where(WebhookCursor.name == name)
                                  .with_for_update().execution_options(populate_existing=True))
    assert cursor is not None
    return cursor


async def _unread(session: AsyncSession, cursor: WebhookCursor) -> list[ColumnElement[bool]]:
    """Events after the cursor in (transaction, id) order, of transactions that have ended.

    On PostgreSQL every event carries the id of the transaction that wrote it, and every
    transaction below the snapshot's xmin has ended: its events are all there or never will
    be. A transaction still open, however long, therefore adds nothing behind the cursor.
    SQLite runs one writer at a time (BEGIN IMMEDIATE): its ids are in commit order already.
    """
    after = [tuple_(TimelineEvent.xact, TimelineEvent.id) > tuple_(cursor.last_xact, cursor.last_event_id)]
    if session.get_bind().dialect.name != "postgresql":
        return after
    ended_below = await session.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))
    return [*after, TimelineEvent.xact < ended_below]


async def feed_batch(session: AsyncSession, limit: int, name: str = FEED) -> tuple[int, int]:
    """Queue deliveries for up to `limit` timeline events after the cursor; (events read, rows queued)."""
    cursor = await _cursor(session, name)
    unread = await _unread(session, cursor)
    order = (TimelineEvent.xact, TimelineEvent.id)
    targets = await endpoints(session, active_only=True)
    if not targets:  # nobody listens: skip ahead without reading the events
        newest = (await session.execute(select(*order).where(*unread)
                                        .order_by(*(column.desc() for column in order)).limit(1))).first()
        if newest is not None:
            cursor.last_xact, cursor.last_event_id = newest
            cursor.updated_at = utcnow()
        return 0, 0
    events = list(await session.scalars(select(TimelineEvent).where(*unread).order_by(*order).limit(limit)))
    if not events:
        return 0, 0
    rows = [outbox_row(endpoint.id, event_body(event), f"webhook:{endpoint.id}:{event.id}")
            for event in events if event.kind in EVENT_TYPES
            for endpoint in targets
            if subscribed(endpoint, EVENT_TYPES[event.kind]) and as_utc(endpoint.created_at) <= as_utc(event.created_at)]
    queued = await insert_ignoring_duplicates(session, OutboxItem, rows)
    cursor.last_xact, cursor.last_event_id = events[-1].xact, events[-1].id
    cursor.updated_at = utcnow()
    return len(events), len(queued)


async def replay(session: AsyncSession, timeline_id: int | None = None, since: datetime | None = None,
                 endpoint_id: int | None = None, limit: int = 10_000) -> int:
    """Queue the event (or every event since `since`) again for its subscribers; how many deliveries."""
    if (timeline_id is None) == (since is None):
        raise WebhookError("give an event id or --since, not both")
    query = select(TimelineEvent).where(TimelineEvent.kind.in_(list(EVENT_TYPES)))
    if timeline_id is not None:
        event = await session.get(TimelineEvent, timeline_id)
        if event is None or event.kind not in EVENT_TYPES:
            raise WebhookError(f"timeline event {timeline_id} does not exist or is not a webhook event")
        query = query.where(TimelineEvent.id == timeline_id)
    else:
        query = query.where(TimelineEvent.created_at >= since)
    targets = [await get_endpoint(session, endpoint_id)] if endpoint_id else await endpoints(session, True)
    batch = uuid.uuid4().hex[:8]
    rows = [outbox_row(endpoint.id, event_body(event), f"webhook:{endpoint.id}:{event.id}:replay:{batch}")
            for event in await session.scalars(query.order_by(TimelineEvent.id).limit(limit))
            for endpoint in targets if subscribed(endpoint, EVENT_TYPES[event.kind])]
    return len(await insert_ignoring_duplicates(session, OutboxItem, rows))


def delivery_row(endpoint_id: int, body: dict[str, Any], attempt: int, status_code: int | None, ok: bool,
                 error: str | None, latency_ms: int) -> WebhookDelivery:
    return WebhookDelivery(endpoint_id=endpoint_id, event_id=str(body.get("id", ""))[:64],
                           event_type=str(body.get("type", ""))[:32], attempt=attempt, status_code=status_code,
                           ok=ok, error=error[:1000] if error else None, latency_ms=latency_ms, at=utcnow())


async def deliveries(session: AsyncSession, endpoint_id: int | None = None, failed_only: bool = False,
                     limit: int = 50) -> list[WebhookDelivery]:
    """The delivery log, newest first."""
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    if failed_only:
        query = query.where(WebhookDelivery.ok.is_(False))
    return list(await session.scalars(query))

