"""Tables of the integration API: API keys (only their SHA-256 is kept) and orders from the shop or ERP.

An order is unique per (source, order_id): a redelivered order finds its row and gets the
result stored with it, so a retry never moves a stage or grants a reward twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from crm_store.models import Base, BigId, utcnow


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))  # the key's visible start, to recognise it in lists
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(8))  # read | write
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))  # the API key's name: the shop, the ERP
    order_id: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="paid")
    items: Mapped[list[Any]] = mapped_column(JSON, default=list)
    request_sha256: Mapped[str] = mapped_column(String(64))  # the canonical body: a replay must match it
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)  # what the first delivery answered
    paid_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("uq_orders_source_order_id", "source", "order_id", unique=True),)
