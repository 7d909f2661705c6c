"""Segments of customer groups: which groups a group push or a group SOP reaches, as data and as one query.

A segment is a conjunction over active groups (dismissed groups receive nothing):

    tags_all (every one of these group tags)   tags_any (at least one)   owner (the owner's userid)
    name_contains (part of the group's name)   code (a group live code's groups, gc_…)

Tags are rows of group_chat_tags; tag filters are EXISTS subqueries, so nothing but the
matching ids leaves the database. A segment with no filter at all is refused: "every group"
must be said on purpose (`--name-contains ""` is not a way to say it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.group_chat_models import GroupChat, GroupChatTag, GroupJoinCode

MAX_TAG = 64  # group_chat_tags.tag
MAX_USERID = 64
MAX_NAME_PART = 128
KEYS = ("tags_all", "tags_any", "owner", "name_contains", "code")


class GroupSegmentError(ValueError):
    """A segment of groups that cannot be used; every problem listed."""


@dataclass(frozen=True)
class GroupSegment:
    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    owner: str = ""
    name_contains: str = ""
    code: str = ""  # gc_…: the groups a group live code offers

    def validate(self) -> list[str]:
        """Every problem with the segment (empty when it can be used)."""
        problems: list[str] = []
        if not (self.tags_all or self.tags_any or self.owner or self.name_contains or self.code):
            problems.append("groups: give at least one of tags, any_tags, owner, name_contains, code "
                            "(an empty segment would mean every group)")
        for key, tags in (("tags", self.tags_all), ("any_tags", self.tags_any)):
            problems += [f"{key}: a tag may not be empty" for tag in tags if not tag.strip()]
            problems += [f"{key}: {tag[:20]!r}… is longer than {MAX_TAG} characters" for tag in tags
                         if len(tag) > MAX_TAG]
        if len(self.owner) > MAX_USERID:
            problems.append(f"owner: {len(self.owner)} characters; a userid has at most {MAX_USERID}")
        if len(self.name_contains) > MAX_NAME_PART:
            problems.append(f"name_contains: at most {MAX_NAME_PART} characters")
        if self.code and not self.code.startswith("gc_"):
            problems.append(f"code: {self.code!r} is not a group live code (gc_…; see: scrm groupchats codes list)")
        return problems

    def checked(self) -> GroupSegment:
        """This segment, or GroupSegmentError listing every problem."""
        problems = self.validate()
        if problems:
            raise GroupSegmentError("the groups cannot be chosen:\n  " + "\n  ".join(problems))
        return self

    def to_data(self) -> dict[str, Any]:
        data = {"tags_all": list(self.tags_all), "tags_any": list(self.tags_any), "owner": self.owner,
                "name_contains": self.name_contains, "code": self.code}
        return {key: value for key, value in data.items() if value}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> GroupSegment:
        return cls(tuple(str(t) for t in data.get("tags_all") or ()), tuple(str(t) for t in data.get("tags_any") or ()),
                   str(data.get("owner") or ""), str(data.get("name_contains") or ""), str(data.get("code") or ""))

    def describe(self) -> str:
        parts = [f"tags {'+'.join(self.tags_all)}" if self.tags_all else "",
                 f"any of {'/'.join(self.tags_any)}" if self.tags_any else "",
                 f"owner {self.owner}" if self.owner else "",
                 f"name contains {self.name_contains!r}" if self.name_contains else "",
                 f"code {self.code}" if self.code else ""]
        return ", ".join(part for part in parts if part) or "no filter"


def _tagged(tag: str) -> ColumnElement[bool]:
    return exists().where(GroupChatTag.group_id == GroupChat.id, GroupChatTag.tag == tag)


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def groups_in(segment: GroupSegment) -> Select[int, str]:
    """SELECT id, owner_userid of the active groups in the segment (checked first), ordered by id."""
    segment.checked()
    query = select(GroupChat.id, GroupChat.owner_userid).where(GroupChat.status == "active")
    for tag in segment.tags_all:
        query = query.where(_tagged(tag))
    if segment.tags_any:
        query = query.where(exists().where(GroupChatTag.group_id == GroupChat.id,
                                           GroupChatTag.tag.in_(segment.tags_any)))
    if segment.owner:
        query = query.where(GroupChat.owner_userid == segment.owner)
    if segment.name_contains:
        query = query.where(GroupChat.name.like(f"%{_escaped(segment.name_contains)}%", escape="\\"))
    if segment.code:
        query = query.where(GroupChat.code_id.in_(select(GroupJoinCode.id).where(GroupJoinCode.code == segment.code)))
    return query.order_by(GroupChat.id)


async def count_groups(session: AsyncSession, segment: GroupSegment) -> int:
    """How many active groups the segment reaches now."""
    inner = groups_in(segment).order_by(None).subquery()
    return int(await session.scalar(select(func.count()).select_from(inner)) or 0)


async def check_code(session: AsyncSession, segment: GroupSegment) -> None:
    """GroupSegmentError when the segment names a live code that does not exist (a typo must not mean nobody)."""
    if segment.code and await session.scalar(select(GroupJoinCode.id).where(GroupJoinCode.code == segment.code)) \
            is None:
        raise GroupSegmentError(f"code: no group live code {segment.code} (see: scrm groupchats codes list)")
