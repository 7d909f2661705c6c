"""Tables of the handoff to reps: the reps, their teams, and each handoff.

One customer has at most one open handoff: a partial unique index, so two messages
arriving at once cannot hand the same customer over twice. A rep's load is the number
of handoffs offered to or taken by them; assignment locks the rep's row, so capacity
holds under concurrency.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, PrimaryKeyConstraint, String, text
from sqlalchemy.orm import Mapped, mapped_column

from crm_store.models import Base, BigId, utcnow

OPEN_STATUSES = ("queued", "offered", "taken")
# queued: nobody assigned yet (out of hours, all busy); offered: a rep has the card, not yet taken;
# taken: a rep is talking to the customer; closed: the bot has the customer again.


class Rep(Base):
    """A sales rep: a WeCom member who can take customers over."""

    __tablename__ = "reps"

    userid: Mapped[str] = mapped_column(String(64), primary_key=True)  # the WeCom member's userid
    name: Mapped[str] = mapped_column(String(64), default="")
    on_duty: Mapped[bool] = mapped_column(default=True)
    capacity: Mapped[int] = mapped_column(default=5)  # open handoffs at once
    hours: Mapped[str] = mapped_column(String(200), default="")  # "mon-fri 09:00-18:00"; empty: office hours
    active: Mapped[bool] = mapped_column(default=True)  # False once the rep left the company
    last_assigned_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    left_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("capacity >= 1", name="ck_reps_capacity"),)


class Team(Base):
    """Reps who handle customers with certain tags or asking about certain products."""

    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    products: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TeamMember(Base):
    __tablename__ = "team_members"

    team_name: Mapped[str] = mapped_column(ForeignKey("teams.name", ondelete="CASCADE"))
    rep_userid: Mapped[str] = mapped_column(ForeignKey("reps.userid"))

    __table_args__ = (PrimaryKeyConstraint("team_name", "rep_userid"),)


class Handoff(Base):
    """One hand-over of a customer to a person, from the request until the bot has them back."""

    __tablename__ = "handoffs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))  # flow | want_human | complain | low_confidence | high_value…
    detail: Mapped[str] = mapped_column(String(200), default="")  # the flow's reason, the keyword, the stage…
    intent: Mapped[str] = mapped_column(String(64), default="")
    team: Mapped[str] = mapped_column(String(64), default="")
    rep_userid: Mapped[str | None] = mapped_column(ForeignKey("reps.userid"), index=True)
    tried: Mapped[list[Any]] = mapped_column(JSON, default=list)  # reps offered it before, in order
    channel: Mapped[str] = mapped_column(String(16), default="")  # kf | oa | contacts
    kf_account: Mapped[str] = mapped_column(String(64), default="")  # open_kfid, for kf/service_state/trans
    kf_customer: Mapped[str] = mapped_column(String(128), default="")  # external_userid in that kf
    stage_at_start: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    offered_at: Mapped[datetime | None]
    taken_at: Mapped[datetime | None]
    first_response_at: Mapped[datetime | None]
    last_activity_at: Mapped[datetime | None]
    due_at: Mapped[datetime | None]  # the next thing to do: retry the queue, escalate, or time out
    closed_at: Mapped[datetime | None]
    closed_by: Mapped[str] = mapped_column(String(32), default="")  # rep | admin | timeout | wecom | customer_left…
    outcome_stage: Mapped[str] = mapped_column(String(32), default="")  # the customer's stage when it closed

    __table_args__ = (
        Index("uq_handoffs_open_customer", "customer_id", unique=True,
              postgresql_where=text("status <> 'closed'"), sqlite_where=text("status <> 'closed'")),
        Index("ix_handoffs_due", "status", "due_at"),
        CheckConstraint("status IN ('queued', 'offered', 'taken', 'closed')", name="ck_handoffs_status"),
    )
