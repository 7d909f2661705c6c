"""Tables of the outgoing webhooks: endpoints, the feed's cursor over the timeline, the delivery log.

An endpoint subscribes to webhook event types (`crm_store.webhooks.EVENT_TYPES`). The feed
reads timeline events after its cursor (one row per feed, locked FOR UPDATE) and queues one
outbox row per (endpoint, event); every HTTP attempt the sender makes is one delivery row.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from crm_store.models import Base, BigId, utcnow


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    url: Mapped[str] = mapped_column(String(500))
    secret: Mapped[str] = mapped_column(String(128))  # shown once when added; signs every request
    events: Mapped[list[str]] = mapped_column(JSON, default=list)  # webhook event types, or ["*"]
    active: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookCursor(Base):
    """The last timeline event a feed has turned into deliveries: its transaction and its id."""

    __tablename__ = "webhook_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_xact: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """One HTTP attempt: what the endpoint answered (or why there was no answer) and how long it took."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(64))  # X-Scrm-Event-Id: evt_<timeline id> or ping_<hex>
    event_type: Mapped[str] = mapped_column(String(32), default="")
    attempt: Mapped[int] = mapped_column(default=1)
    status_code: Mapped[int | None]
    ok: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int] = mapped_column(default=0)
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_event", "event_id"),
    )
