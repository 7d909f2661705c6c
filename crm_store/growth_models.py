"""Tables of the growth mechanics: entry channels, group-buys, invites, the reward ledger, social value.

The invariants that money depends on are the database's job, not the code's:
a group never holds more members than its size and a campaign never sells more than
its stock (CHECK constraints, updated with a guarded UPDATE under the row lock);
nobody joins a group twice (primary key); a customer is attributed once, first touch
wins (primary key); a reward is granted once per rule and friend (unique grant key);
a reversal is a new ledger row that points at the grant, at most once (unique).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, PrimaryKeyConstraint, String, text
from sqlalchemy.orm import Mapped, mapped_column

from crm_store.models import Base, BigId, utcnow


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": text(where), "sqlite_where": text(where)}


class EntryChannel(Base):
    """An entry point that carries a code (渠道活码): a contact-way QR, a kf link or an OA parametric QR."""

    __tablename__ = "entry_channels"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(30), unique=True)  # ch_…: the contact way's `state`, scene_param, qrscene
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # contact_way | kf_link | oa_qr
    welcome_flow: Mapped[str] = mapped_column(String(64), default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    reps: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the rota (contact_way)
    daily_cap: Mapped[int] = mapped_column(default=0)  # adds per rep per day; 0: no cap
    cost_cents: Mapped[int] = mapped_column(default=0)  # what the channel cost (posters, ads…)
    config_id: Mapped[str] = mapped_column(String(64), default="")  # WeCom's contact way id
    url: Mapped[str] = mapped_column(String(512), default="")  # QR picture or link to share
    rota: Mapped[list[Any]] = mapped_column(JSON, default=list)  # reps WeCom currently offers
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint("daily_cap >= 0 AND cost_cents >= 0", name="ck_entry_channels_amounts"),)


class ChannelRepDay(Base):
    """Adds through one channel to one rep on one day (the brand's date): what the daily cap counts."""

    __tablename__ = "channel_rep_days"

    channel_id: Mapped[int] = mapped_column(ForeignKey("entry_channels.id"))
    userid: Mapped[str] = mapped_column(String(64))
    day: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD
    adds: Mapped[int] = mapped_column(default=0)

    __table_args__ = (PrimaryKeyConstraint("channel_id", "userid", "day"),)


class Campaign(Base):
    """A group-buy campaign: product, price, group size and time limit, window, stock, limits."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)  # the admin's name for it
    name: Mapped[str] = mapped_column(String(128))
    product: Mapped[str] = mapped_column(String(128))
    price_cents: Mapped[int]
    group_size: Mapped[int]
    group_ttl_s: Mapped[int]
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    stock: Mapped[int]
    sold: Mapped[int] = mapped_column(default=0)  # seats held by open and filled groups
    limit_per_customer: Mapped[int] = mapped_column(default=1)
    new_customers_only: Mapped[bool] = mapped_column(default=False)
    fill_stage: Mapped[str] = mapped_column(String(32), default="")
    fill_tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | closed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("price_cents >= 0", name="ck_campaigns_price"),
        CheckConstraint("group_size >= 2", name="ck_campaigns_group_size"),
        CheckConstraint("group_ttl_s > 0", name="ck_campaigns_ttl"),
        CheckConstraint("sold >= 0 AND sold <= stock", name="ck_campaigns_stock"),
        CheckConstraint("limit_per_customer >= 1", name="ck_campaigns_limit"),
        CheckConstraint("ends_at > starts_at", name="ck_campaigns_window"),
    )


class GroupBuy(Base):
    """One group (团) of a campaign, opened by its leader: open → filled, or expired at its deadline."""

    __tablename__ = "group_buys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    leader_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    size: Mapped[int]
    members: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | filled | expired
    deadline: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("members >= 0 AND members <= size", name="ck_group_buys_members"),
        Index("ix_group_buys_open_deadline", "deadline", **_partial("status = 'open'")),
    )


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(ForeignKey("group_buys.id"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    joined_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        PrimaryKeyConstraint("group_id", "customer_id"),
        Index("ix_group_members_customer_campaign", "customer_id", "campaign_id"),
    )


class InviteCode(Base):
    """A customer's personal invite code: short, random, upper case, no look-alike characters."""

    __tablename__ = "invite_codes"

    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Referral(Base):
    """Who brought whom: one row per friend (first touch wins), pointing at the inviter."""

    __tablename__ = "referrals"

    friend_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    inviter_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    via: Mapped[str] = mapped_column(String(32))  # the code: inv_…, gb_…, or a typed invite code
    channel: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    converted_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("friend_id <> inviter_id", name="ck_referrals_not_self"),)


class ReferralMilestone(Base):
    """A friend reached a qualifying event (arrival, a stage, a filled group): once each."""

    __tablename__ = "referral_milestones"

    friend_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    milestone: Mapped[str] = mapped_column(String(48))  # arrival | stage:<id> | group_filled
    inviter_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        PrimaryKeyConstraint("friend_id", "milestone"),
        Index("ix_referral_milestones_inviter", "inviter_id", "milestone"),
    )


class RewardEntry(Base):
    """The reward ledger: grants, and reversals that point at a grant. Nothing is ever deleted."""

    __tablename__ = "reward_ledger"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # grant | reversal
    rule_id: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)  # who receives it
    friend_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))  # whose action earned it
    reward: Mapped[str] = mapped_column(String(128))
    grant_key: Mapped[str | None] = mapped_column(String(200), unique=True)  # rule:customer:friend|tier
    reverses_id: Mapped[int | None] = mapped_column(ForeignKey("reward_ledger.id"), unique=True)
    reason: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SocialStats(Base):
    """What a customer brought, kept current as it happens, and the score made of it."""

    __tablename__ = "social_stats"

    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    friends: Mapped[int] = mapped_column(default=0)
    friends_converted: Mapped[int] = mapped_column(default=0)
    groups_led: Mapped[int] = mapped_column(default=0)
    groups_filled: Mapped[int] = mapped_column(default=0)
    downstream_converted: Mapped[int] = mapped_column(default=0)  # conversions at depth 2 and deeper
    score: Mapped[float] = mapped_column(default=0.0, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
