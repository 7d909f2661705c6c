"""Tables of customer groups (客户群): the groups, who is in them, how they came, and what is sent to them.

A group is WeCom's external group chat (`chat_id`). Membership is kept as WeCom last
reported it (`groupchat/get`), one row per group and member, with `left_at` set when they
leave; every join and leave is also a row of `group_chat_changes`, which the reports count
(a member who leaves and comes back is two joins and a leave). Group live codes
(`group_join_codes`) are WeCom join ways (`groupchat/add_join_way`) whose `state` is our code;
a personal fission code belongs to one inviting customer. Group pushes are owner-confirmed
group-message tasks (`add_msg_template`, `chat_type: group`): one target row per group, so a
group is sent a push once, whatever retries or restarts happen.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, PrimaryKeyConstraint, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from crm_store.models import Base, BigId, utcnow

GROUP_STATUSES = ("active", "dismissed")
MEMBER_KINDS = ("customer", "rep")
CHANGES = ("join", "leave")
PUSH_STATUSES = ("scheduled", "sending", "sent", "cancelled", "done")
TARGET_STATUSES = ("pending", "created", "sent", "unsent", "failed", "limited", "cancelled")


class GroupJoinCode(Base):
    """A group live code (群活码): a WeCom join way over up to 5 groups, its welcome, its tags."""

    __tablename__ = "group_join_codes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(30), unique=True)  # gc_…: the join way's `state`
    name: Mapped[str] = mapped_column(String(128))
    config_id: Mapped[str] = mapped_column(String(64), default="")  # WeCom's join way id
    qr_code: Mapped[str] = mapped_column(String(512), default="")  # the QR picture to share
    chat_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the groups it offers, in order
    auto_create_room: Mapped[bool] = mapped_column(default=True)
    room_base_name: Mapped[str] = mapped_column(String(40), default="")
    room_base_id: Mapped[int] = mapped_column(default=1)
    welcome: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {text, link?, miniprogram?}
    welcome_template_id: Mapped[str] = mapped_column(String(64), default="")  # group_welcome_template's
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)  # given to customers who join through it
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("group_join_codes.id"))  # a personal fission code's
    inviter_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))  # whose personal code it is
    fission: Mapped[bool] = mapped_column(default=False)  # members may ask for a personal code of their own
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("uq_group_join_codes_inviter", "parent_id", "inviter_id", unique=True,
              postgresql_where=text("inviter_id IS NOT NULL"), sqlite_where=text("inviter_id IS NOT NULL")),
    )


class GroupChat(Base):
    """One customer group as WeCom last described it."""

    __tablename__ = "group_chats"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    owner_userid: Mapped[str] = mapped_column(String(64), default="", index=True)
    notice: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | dismissed
    members: Mapped[int] = mapped_column(default=0)  # in the group now, customers and reps
    code_id: Mapped[int | None] = mapped_column(ForeignKey("group_join_codes.id"))  # the live code offering it
    member_version: Mapped[str] = mapped_column(String(64), default="")  # CurMemVer of the last change applied
    platform_created_at: Mapped[datetime | None]  # WeCom's create_time
    synced_at: Mapped[datetime | None]  # last read in full (groupchat/get)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint("status IN ('active', 'dismissed')", name="ck_group_chats_status"),)


class GroupChatTag(Base):
    """Our tags on a group (from the catalog's groups), for finding groups and pushing to them."""

    __tablename__ = "group_chat_tags"

    group_id: Mapped[int] = mapped_column(ForeignKey("group_chats.id"))
    tag: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (PrimaryKeyConstraint("group_id", "tag"), Index("ix_group_chat_tags_tag", "tag"))


class GroupChatMember(Base):
    """A member of a group: a customer (external userid) or a rep (userid); `left_at` once gone."""

    __tablename__ = "group_chat_members"

    group_id: Mapped[int] = mapped_column(ForeignKey("group_chats.id"))
    userid: Mapped[str] = mapped_column(String(64))  # external_userid for customers, userid for reps
    kind: Mapped[str] = mapped_column(String(8))  # customer | rep
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    name: Mapped[str] = mapped_column(String(128), default="")  # the name shown in the group
    joined_at: Mapped[datetime | None]
    join_scene: Mapped[int] = mapped_column(default=0)  # 1 invited, 2 invite link, 3 QR code (WeCom's)
    invitor_userid: Mapped[str] = mapped_column(String(64), default="")  # the rep who invited them
    state: Mapped[str] = mapped_column(String(32), default="")  # the join way's state they came through
    code_id: Mapped[int | None] = mapped_column(ForeignKey("group_join_codes.id"))
    inviter_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))  # the customer whose code it was
    left_at: Mapped[datetime | None]
    quit_scene: Mapped[int | None]  # 0 left, 1 removed by the owner or an admin (WeCom's)

    __table_args__ = (
        PrimaryKeyConstraint("group_id", "userid"),
        Index("ix_group_chat_members_customer", "customer_id"),
        CheckConstraint("kind IN ('customer', 'rep')", name="ck_group_chat_members_kind"),
    )


class GroupChatChange(Base):
    """A join or a leave, as it happened: what the reports count."""

    __tablename__ = "group_chat_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("group_chats.id"))
    userid: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))  # customer | rep
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    change: Mapped[str] = mapped_column(String(8))  # join | leave
    scene: Mapped[int] = mapped_column(default=0)  # join_scene or quit_scene
    code_id: Mapped[int | None] = mapped_column(ForeignKey("group_join_codes.id"))
    inviter_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("uq_group_chat_changes", "group_id", "userid", "change", "at", unique=True),
        Index("ix_group_chat_changes_at", "at"),
        Index("ix_group_chat_changes_code", "code_id", "at"),
        CheckConstraint("change IN ('join', 'leave')", name="ck_group_chat_changes_change"),
    )


class GroupChatSync(Base):
    """A full sync from `groupchat/list`: where it got to, so an interrupted one resumes."""

    __tablename__ = "group_chat_syncs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed
    cursor: Mapped[str] = mapped_column(Text, default="")  # the next page's cursor
    groups: Mapped[int] = mapped_column(default=0)  # groups read in full so far
    calls: Mapped[int] = mapped_column(default=0)  # API calls made
    error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # The process running it (host:pid:token) and when it last said so: a second sync is refused while
    # the lease is fresh; a sync whose process died is taken over once it is stale.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None]

    # One sync running at a time, whoever starts it: a second insert of a running row is refused.
    __table_args__ = (
        Index("uq_group_chat_syncs_running", "status", unique=True, postgresql_where=text("status = 'running'"),
              sqlite_where=text("status = 'running'")),
    )


class GroupPush(Base):
    """A message to a segment of groups, sent as owner-confirmed group-message tasks.

    `source_key` makes a group SOP's occurrence (sop id and day) one push however often the
    scheduler looks."""

    __tablename__ = "group_pushes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    segment: Mapped[dict[str, Any]] = mapped_column(JSON)  # {tags, owner, name, code}
    message: Mapped[dict[str, Any]] = mapped_column(JSON)  # {text, link?, miniprogram?}
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    scheduled_at: Mapped[datetime] = mapped_column(default=utcnow)
    source_key: Mapped[str | None] = mapped_column(String(128), unique=True)  # sop:<id>:<day>
    audience: Mapped[int] = mapped_column(default=0)  # groups targeted
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    results_at: Mapped[datetime | None]  # results last read back

    __table_args__ = (
        Index("ix_group_pushes_due", "scheduled_at", postgresql_where=text("status IN ('scheduled', 'sending')"),
              sqlite_where=text("status IN ('scheduled', 'sending')")),
    )


class GroupPushTarget(Base):
    """One group of a push: the owner's task it went in, and what WeCom says became of it."""

    __tablename__ = "group_push_targets"

    push_id: Mapped[int] = mapped_column(ForeignKey("group_pushes.id"))
    group_id: Mapped[int] = mapped_column(ForeignKey("group_chats.id"))
    owner_userid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    msgid: Mapped[str] = mapped_column(String(64), default="")  # the task (add_msg_template's msgid)
    reason: Mapped[str] = mapped_column(String(200), default="")
    reminders: Mapped[int] = mapped_column(default=0)
    reminded_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    # when it was put in a task (status `created`): a claim without a msgid after a crash is looked up
    # in WeCom's task list before anything is sent again; also what the per-group monthly limit counts
    claimed_at: Mapped[datetime | None]

    __table_args__ = (
        PrimaryKeyConstraint("push_id", "group_id"),
        Index("ix_group_push_targets_task", "msgid"),
        Index("ix_group_push_targets_group", "group_id", "claimed_at"),
    )
