"""Tables of nurture sequences and segment pushes: what is published, who is enrolled, what is due.

What is due lives here, not in the scheduler: each active enrolment has exactly one pending
send (its next step), claimed with FOR UPDATE SKIP LOCKED by whichever scheduler process gets
to it first. A send row goes pending → sent | skipped (with the reason) | failed, in the same
transaction as the outbox row that carries it, so a crash neither loses nor repeats a send; the
unique keys (enrolment, step) and (push, customer) make a second copy impossible.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, PrimaryKeyConstraint, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from crm_store.models import Base, BigId, utcnow

ENROLLED = ("active", "paused")


class SequenceVersion(Base):
    """A published version of a sequence; enrolments keep the version they started on."""

    __tablename__ = "sequence_versions"

    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)  # the checked sequence, as data
    source: Mapped[str] = mapped_column(Text, default="")
    published_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_by: Mapped[str] = mapped_column(String(64), default="")

    __table_args__ = (PrimaryKeyConstraint("name", "version"),)


class SequenceState(Base):
    """The current version of each sequence, and whether it is paused (nothing sent while paused)."""

    __tablename__ = "sequences"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    current_version: Mapped[int]
    paused: Mapped[bool] = mapped_column(default=False)
    retired: Mapped[bool] = mapped_column(default=False)  # its file was removed: no new enrolments


class Enrolment(Base):
    __tablename__ = "enrolments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    sequence: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | paused | completed | exited
    source: Mapped[str] = mapped_column(String(64), default="")  # flow:<id> | stage:<id> | tag:<name> | admin…
    enrolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    exit_reason: Mapped[str] = mapped_column(String(64), default="")
    converted_at: Mapped[datetime | None]  # first move to a purchase stage while enrolled

    __table_args__ = (
        Index("uq_enrolments_one_running", "customer_id", "sequence", unique=True,
              postgresql_where=text("status IN ('active', 'paused')"),
              sqlite_where=text("status IN ('active', 'paused')")),
        Index("ix_enrolments_sequence", "sequence", "status"),
        CheckConstraint("status IN ('active', 'paused', 'completed', 'exited')", name="ck_enrolments_status"),
    )


class Push(Base):
    """A one-off message to a segment, now or later."""

    __tablename__ = "pushes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    segment: Mapped[dict[str, Any]] = mapped_column(JSON)
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="scheduled")  # scheduled | cancelled | done
    scheduled_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    audience: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[str] = mapped_column(String(64), default="")


class NurtureSend(Base):
    """One message a sequence step or a push owes one customer, and what became of it."""

    __tablename__ = "nurture_sends"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    enrolment_id: Mapped[int | None] = mapped_column(ForeignKey("enrolments.id"))
    push_id: Mapped[int | None] = mapped_column(ForeignKey("pushes.id"))
    step: Mapped[str] = mapped_column(String(64), default="")  # the step id; "" for a push
    step_index: Mapped[int] = mapped_column(default=0)
    due_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | skipped | failed
    reason: Mapped[str] = mapped_column(String(200), default="")  # why skipped or deferred
    via: Mapped[str] = mapped_column(String(32), default="")  # kf | oa | groupmsg
    deferrals: Mapped[int] = mapped_column(default=0)
    sent_at: Mapped[datetime | None]
    replied_at: Mapped[datetime | None]  # the customer wrote back after it

    __table_args__ = (
        Index("uq_nurture_sends_step", "enrolment_id", "step", unique=True),
        Index("uq_nurture_sends_push", "push_id", "customer_id", unique=True),
        Index("ix_nurture_sends_due", "due_at", postgresql_where=text("status = 'pending'"),
              sqlite_where=text("status = 'pending'")),
        Index("ix_nurture_sends_customer", "customer_id", "sent_at"),
        CheckConstraint("status IN ('pending', 'sent', 'skipped', 'failed')", name="ck_nurture_sends_status"),
    )
