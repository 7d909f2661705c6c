"""Tables: customers and identities, the timeline, the inbox and the outbox, tags, stages, flows.

Invariants live in the schema: one identity per channel id, one inbox row per channel
message (retries are no-ops), one outbox row per effect (a redelivery cannot send twice).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    FetchedValue,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class JsonDocument(TypeDecorator[Any]):
    """JSON that reports read by key: JSONB on PostgreSQL, kept parsed, where `json ->> 'key'`
    parses each row's text again (4x slower over the timeline's millions of messages).

    JSONB cannot hold U+0000, and a customer can type it: it is dropped from strings on the way in.
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else JSON())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return without_nul(value)


def without_nul(value: Any) -> Any:
    """`value` with U+0000 removed from every string in it, keys included."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(item) for item in value]
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": text(where), "sqlite_where": text(where)}


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    unionid: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    last_seen_at: Mapped[datetime | None]
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    stage: Mapped[str] = mapped_column(String(32), default="lead", server_default="lead", index=True)
    stage_changed_at: Mapped[datetime | None]
    # Every stage the customer has been in, sorted and comma-separated (with `stage`, all it has
    # reached): the funnel counts from it in one pass over customers, not over the stage history.
    stages_reached: Mapped[str] = mapped_column(Text, default="", server_default="")
    marketing_opt_out: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    owner_userid: Mapped[str | None] = mapped_column(String(64))  # the rep the customer added in WeCom
    entry_channel_id: Mapped[int | None] = mapped_column(ForeignKey("entry_channels.id"))  # first touch
    reach: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'"))  # last chat: channel…

    identities: Mapped[list[Identity]] = relationship(back_populates="customer")

    # Segments (tag ∧ stage ∧ last active) read live customers' ids by stage and last seen from
    # the index alone. It costs an index entry per message (last_seen_at moves).
    __table_args__ = (
        Index("ix_customers_live_stage_seen", "stage", "last_seen_at", "id", **_partial("merged_into_id IS NULL")),
    )


class Identity(Base):
    """One way to reach a customer: a WeCom external_userid (kf and contacts share it) or an OA openid."""

    __tablename__ = "identities"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "wecom" | "oa"
    external_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())

    customer: Mapped[Customer] = relationship(back_populates="identities")

    __table_args__ = (Index("uq_identity_kind_external_id", "kind", "external_id", unique=True),)


class TimelineEvent(Base):
    """What happened to a customer, with its cause: the customer's timeline."""

    __tablename__ = "timeline_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JsonDocument(), default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    # The writing transaction's id on PostgreSQL (its default, pg_current_xact_id()), 0 on SQLite:
    # the webhook feed reads events of ended transactions only, so a late commit is never skipped.
    xact: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())

    __table_args__ = (Index("ix_timeline_events_xact_id", "xact", "id"),)


UNFINISHED = "status IN ('pending', 'claimed')"


class QueueItem:
    """Columns shared by the inbox and the outbox: both are work queues claimed by workers.

    Status: pending → claimed → done, or back to pending with a later `available_at`, or
    failed with `last_error`. Items with one `queue_key` are handled one at a time, in id order.
    """

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)
    queue_key: Mapped[str] = mapped_column(String(160))
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None]
    claim_token: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


def _queue_indexes(table: str, pending: Index | None = None, status: Index | None = None) -> tuple[Index, ...]:
    """Partial indexes that keep claims cheap however many finished items a queue has; `pending`: the index
    the claim reads ready items from, in the order it wants them (the id's by default); `status`: the index
    that finds items by status (all of them by default)."""
    return (
        pending if pending is not None else Index(f"ix_{table}_pending", "id", **_partial("status = 'pending'")),
        Index(f"ix_{table}_claimed", "claimed_until", **_partial("status = 'claimed'")),
        Index(f"ix_{table}_unfinished_queue", "queue_key", "id", **_partial(UNFINISHED)),
        status if status is not None else Index(f"ix_{table}_status", "status"),
    )


class InboxItem(QueueItem, Base):
    """A received callback or pulled message, stored before WeChat is answered."""

    __tablename__ = "inbox"

    channel: Mapped[str] = mapped_column(String(16))

    __table_args__ = _queue_indexes("inbox")


class Lane(IntEnum):
    """Which outbox rows are sent first: a lower lane before a higher one, oldest first within a lane.

    One customer's rows still go in the order they were written, whatever their lanes (a queue's
    head is its oldest unfinished row): a reply written behind that customer's own push waits for it,
    and the claim brings that push forward (crm_store/work_queue.py `claim_heads`).
    Who writes what:
      REPLY          a turn's answer to the customer who wrote (bot/effects_writer.py), the welcome
                     that uses an event's 20-second code included; not a timer's or another system's turn
      TRANSACTIONAL  what one event causes for one person: notices (a group filled, a reward, a friend
                     arrived), messages held for the customer's next one, a timer's or an API stage
                     move's messages, handoff cards and texts to reps, media to reps, kf session moves,
                     tag marks, webhooks, a departing rep's customer transfers; the default
      MARKETING      what one decision sends to many: sequence steps and pushes (bot/nurture_dispatch.py),
                     group-message tasks among them
    """

    REPLY = 0
    TRANSACTIONAL = 1
    MARKETING = 2


class OutboxItem(QueueItem, Base):
    """An API call to make, written in the same transaction as the change that caused it."""

    __tablename__ = "outbox"

    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    lane: Mapped[int] = mapped_column(SmallInteger, default=int(Lane.TRANSACTIONAL),
                                      server_default=text("1"))

    # Ready rows are read lane by lane, oldest first: a push of 100,000 rows does not delay a reply. The
    # status index holds failed rows only: one over every status let PostgreSQL, its statistics taken before
    # a push of 100,000 (pending rows then look rare), read the claim's candidates through it and sort
    # them all, 125 ms a claim, rather than read the first few from the partial indexes, 0.05 ms.
    __table_args__ = _queue_indexes("outbox", pending=Index("ix_outbox_pending_lane", "lane", "id",
                                                            **_partial("status = 'pending'")),
                                    status=Index("ix_outbox_status", "status", **_partial("status = 'failed'")))


class KfCursor(Base):
    """Where `kf/sync_msg` stopped for one kf account, so a restart neither re-reads nor skips."""

    __tablename__ = "kf_cursors"

    open_kfid: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[str] = mapped_column(String(256), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Tag(Base):
    """A tag of the brand's catalog; `wecom_tag_id` once mirrored to WeCom corp tags."""

    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    group_name: Mapped[str] = mapped_column(String(64), default="")
    wecom_tag_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CustomerTag(Base):
    """A tag on a customer: at most once (the primary key), with what added it."""

    __tablename__ = "customer_tags"

    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id"))
    cause: Mapped[str] = mapped_column(String(128), default="")
    added_at: Mapped[datetime] = mapped_column(default=utcnow)

    # (tag_id, customer_id): who carries a tag, read from the index alone (segments).
    __table_args__ = (PrimaryKeyConstraint("customer_id", "tag_id"),
                      Index("ix_customer_tags_tag_customer", "tag_id", "customer_id"))


class StageChange(Base):
    """Every lifecycle move, with its reason: the funnel is counted from these."""

    __tablename__ = "stage_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    from_stage: Mapped[str] = mapped_column(String(32))
    to_stage: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_stage_changes_to_stage_created", "to_stage", "created_at"),)


class IntentCount(Base):
    """How often a customer has shown an intent: what tag rules ("asked price 3 times") count."""

    __tablename__ = "intent_counts"

    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    intent: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(default=0)

    __table_args__ = (PrimaryKeyConstraint("customer_id", "intent"),)


class FlowRelease(Base):
    """One publication of the flow directory: immutable; a rollback is a new release."""

    __tablename__ = "flow_releases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sources: Mapped[dict[str, Any]]  # file name -> YAML text
    versions: Mapped[dict[str, Any]]  # flow id -> version
    note: Mapped[str] = mapped_column(String(200), default="")
    published_by: Mapped[str] = mapped_column(String(64), default="")
    published_at: Mapped[datetime] = mapped_column(default=utcnow)


class FlowVersion(Base):
    """A flow's text each time it changed; conversations keep the version they started on."""

    __tablename__ = "flow_versions"

    flow_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    digest: Mapped[str] = mapped_column(String(64))
    release_id: Mapped[int] = mapped_column(ForeignKey("flow_releases.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (PrimaryKeyConstraint("flow_id", "version"),)


ACTIVE = "status = 'active'"


class Conversation(Base):
    """A customer's running flow: at most one per customer, enforced by a partial unique index."""

    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    flow_id: Mapped[str] = mapped_column(String(64))
    flow_version: Mapped[int]
    release_id: Mapped[int] = mapped_column(ForeignKey("flow_releases.id"))
    step_id: Mapped[str] = mapped_column(String(64))
    slots: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stack: Mapped[list[Any]] = mapped_column(JSON, default=list)  # sub-flows to return to
    retries: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | ended
    wake_at: Mapped[datetime | None]  # a wait or an ask timeout; the flow's inactivity deadline otherwise
    reply_to: Mapped[dict[str, Any]] = mapped_column(default=dict)  # channel, sender, account of the last event
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str] = mapped_column(String(64), default="")

    __table_args__ = (
        Index("uq_conversations_one_active", "customer_id", unique=True, **_partial(ACTIVE)),
        Index("ix_conversations_wake", "wake_at", **_partial(ACTIVE)),
        Index("ix_conversations_customer", "customer_id"),
    )


# The growth tables reference customers and are referenced by them: one metadata.
from crm_store import allowances as _allowances  # noqa: E402,F401
from crm_store import api_models as _api_models  # noqa: E402,F401
from crm_store import growth_models as _growth_models  # noqa: E402,F401
from crm_store import handoff_models as _handoff_models  # noqa: E402,F401
from crm_store import media_items as _media_items  # noqa: E402,F401
from crm_store import nurture_models as _nurture_models  # noqa: E402,F401
from crm_store import webhook_models as _webhook_models  # noqa: E402,F401
