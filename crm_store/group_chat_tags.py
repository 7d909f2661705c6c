"""Our tags on customer groups (客户群), for finding groups and pushing to segments of them.

Group tags are the tag catalog's tags (tags.yaml, `scrm tags list`), the same names customers
carry: the catalog has no separate notion of group tags, and one vocabulary keeps "新品群" one
word whether it is said of a group or of a person. Unlike an admin's customer tag, a group tag
must already be in the catalog: a typo would silently leave a group out of every push.

Tagging is all or nothing: every unknown chat id and tag is named before anything is written.
It is idempotent under retries and concurrent admins: the primary key (group_id, tag) decides
through INSERT .. ON CONFLICT DO NOTHING, and only rows really inserted or deleted are reported.
WeCom has no tags on external groups, so nothing is mirrored there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.spelling import did_you_mean
from crm_store.dialect_insert import dialect_insert
from crm_store.group_chat_models import GroupChat, GroupChatTag
from crm_store.models import Tag, utcnow


class GroupTagError(ValueError):
    """Unknown chat ids or tags; every problem is listed and nothing was written."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _clean(names: Iterable[str]) -> list[str]:
    """Stripped, without blanks and repeats, in the caller's order."""
    return list(dict.fromkeys(name.strip() for name in names if name.strip()))


async def groups_by_chat_id(session: AsyncSession, chat_ids: Sequence[str]) -> dict[str, int]:
    """chat_id -> group id for the chat ids the store knows (one query; unknown ones left out)."""
    if not chat_ids:
        return {}
    rows = await session.execute(select(GroupChat.chat_id, GroupChat.id).where(GroupChat.chat_id.in_(chat_ids)))
    return dict(rows.tuples().all())


async def _unknown_tags(session: AsyncSession, names: list[str], remove: bool) -> list[str]:
    """Problems for names not in the catalog (for removal, a name groups still carry is fine)."""
    catalog = list(await session.scalars(select(Tag.name).order_by(Tag.name)))
    known = set(catalog)
    if remove:
        known |= set(await session.scalars(select(GroupChatTag.tag).where(GroupChatTag.tag.in_(names)).distinct()))
    return [f"tag {name!r} is not in the tag catalog{did_you_mean(name, catalog)} (see: scrm tags list)"
            for name in names if name not in known]


async def tag_groups(session: AsyncSession, chat_ids: Iterable[str], tags: Iterable[str],
                     remove: bool = False) -> dict[str, list[str]]:
    """Add `tags` to every group (or remove them); chat_id -> the tags that really changed on it.

    GroupTagError names every unknown chat id and tag, and nothing is written."""
    wanted_ids, names = _clean(chat_ids), _clean(tags)
    problems = [] if wanted_ids else ["no chat id given"]
    problems += [] if names else ["no tag given"]
    problems += [f"tag name longer than 64 characters: {name!r}" for name in names if len(name) > 64]
    groups = await groups_by_chat_id(session, wanted_ids)
    problems += [f"no group {chat_id!r} (list them with: scrm groupchats list; new groups arrive with: "
                 "scrm groupchats sync)" for chat_id in wanted_ids if chat_id not in groups]
    if names:
        problems += await _unknown_tags(session, names, remove)
    if problems:
        raise GroupTagError(problems)
    changed = await (_untag(session, groups, names) if remove else _tag(session, groups, names))
    by_chat = {group_id: chat_id for chat_id, group_id in groups.items()}
    result: dict[str, list[str]] = {chat_id: [] for chat_id in wanted_ids}
    for group_id, tag in changed:
        result[by_chat[group_id]].append(tag)
    return {chat_id: [name for name in names if name in found] for chat_id, found in result.items()}


async def _tag(session: AsyncSession, groups: dict[str, int], names: list[str]) -> list[tuple[int, str]]:
    now = utcnow()
    values = [{"group_id": group_id, "tag": name, "created_at": now}
              for group_id in sorted(groups.values()) for name in sorted(names)]  # one lock order: no deadlock
    inserted = await session.execute(
        dialect_insert(session, GroupChatTag).values(values)
        .on_conflict_do_nothing(index_elements=["group_id", "tag"])
        .returning(GroupChatTag.group_id, GroupChatTag.tag))
    return list(inserted.tuples())


async def _untag(session: AsyncSession, groups: dict[str, int], names: list[str]) -> list[tuple[int, str]]:
    deleted = await session.execute(
        delete(GroupChatTag)
        .where(GroupChatTag.group_id.in_(groups.values()), GroupChatTag.tag.in_(names))
        .returning(GroupChatTag.group_id, GroupChatTag.tag)
        .execution_options(synchronize_session=False))
    return list(deleted.tuples())


async def tags_of(session: AsyncSession, group_id: int) -> list[str]:
    """The group's tags, oldest first."""
    return (await tags_of_groups(session, [group_id])).get(group_id, [])


async def tags_of_groups(session: AsyncSession, group_ids: Iterable[int]) -> dict[int, list[str]]:
    """group id -> its tags (oldest first) for a page of groups, in one query."""
    wanted = sorted(set(group_ids))
    found: dict[int, list[str]] = defaultdict(list)
    if wanted:
        rows = await session.execute(
            select(GroupChatTag.group_id, GroupChatTag.tag).where(GroupChatTag.group_id.in_(wanted))
            .order_by(GroupChatTag.created_at, GroupChatTag.tag))
        for group_id, tag in rows.tuples():
            found[group_id].append(tag)
    return dict(found)
