"""Tag names to WeCom corp tag ids, for `externalcontact/mark_tag`.

The store and the flows speak tag names; WeCom wants the ids of corp tags (企业客户标签).
An id is looked up once and kept on `Tag.wecom_tag_id`. A name with no id yet is first
looked for in the corp's tag library (an admin may have made it in the WeCom console),
and only then created, in its catalog group (or "SCRM" for a tag without one). The
look-up-or-create step runs under a lock shared by every instance, so two senders meeting
the same new tag create it once; should WeCom still say the name is taken (40071), the
library is read again instead of failing.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.wechat_api import ApiError, RetryableApiError, WeChatApi
from core.shared_state import LockNotAcquired
from crm_store.models import Tag

log = logging.getLogger("scrm.corp_tags")

DEFAULT_GROUP = "SCRM"
NAME_TAKEN = 40071
LIBRARY = "externalcontact/get_corp_tag_list"


class CorpTags:
    def __init__(self, api: WeChatApi, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.api = api
        self.sessions = sessions

    async def ids(self, names: Sequence[str], create: bool = True) -> dict[str, str]:
        """name -> corp tag id; without `create`, names WeCom does not know are left out."""
        known = await self._stored(names)
        missing = [name for name in names if name not in known]
        if missing:
            try:
                async with self.api.state.lock("corp_tags", ttl_s=30, wait_s=30):
                    known |= await self._resolve(missing, create)
            except LockNotAcquired:
                raise RetryableApiError(
                    -1, "corp tags are being resolved by another instance", LIBRARY
                ) from None
        return {name: known[name] for name in names if name in known}

    async def _resolve(self, names: Sequence[str], create: bool) -> dict[str, str]:
        """Under the lock: stored ids (another instance may have just stored them), the library, new tags."""
        known = await self._stored(names)
        missing = [name for name in names if name not in known]
        if missing:
            groups = await self._groups(missing)
            found = await self._look_up(groups)
            absent = {name: group for name, group in groups.items() if name not in found}
            if create and absent:
                found |= await self._create(absent)
            await self._store(found)
            known |= found
        return known

    async def prepare_mark_tag(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The outbox payload (tag names) as WeCom's mark_tag body (tag ids); None when nothing is left to do.

        Tags to add are created when missing; a tag to remove that WeCom never had is skipped.
        """
        adding = list(payload.get("add_tag_names") or [])
        removing = list(payload.get("remove_tag_names") or [])
        add_ids = await self.ids(adding) if adding else {}
        remove_ids = await self.ids(removing, create=False) if removing else {}
        if not add_ids and not remove_ids:
            return None
        return {
            "userid": payload["userid"],
            "external_userid": payload["external_userid"],
            "add_tag": [add_ids[name] for name in adding if name in add_ids],
            "remove_tag": [remove_ids[name] for name in removing if name in remove_ids],
        }

    async def _stored(self, names: Sequence[str]) -> dict[str, str]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(Tag.name, Tag.wecom_tag_id).where(Tag.name.in_(names), Tag.wecom_tag_id.is_not(None))
            )
            return {name: str(tag_id) for name, tag_id in rows.tuples()}

    async def _groups(self, names: Sequence[str]) -> dict[str, str]:
        """name -> the WeCom group it belongs in."""
        async with self.sessions() as session:
            rows = await session.execute(select(Tag.name, Tag.group_name).where(Tag.name.in_(names)))
            groups = dict(rows.all())
        return {name: groups.get(name) or DEFAULT_GROUP for name in names}

    async def _look_up(self, groups: dict[str, str]) -> dict[str, str]:
        """Ids of tags already in the corp's library, preferring the tag in the expected group."""
        data = await self.api.post(LIBRARY, {})
        found: dict[str, str] = {}
        for group in data.get("tag_group") or []:
            for tag in group.get("tag") or []:
                name = tag.get("name")
                if name not in groups or tag.get("deleted"):
                    continue
                if name not in found or group.get("group_name") == groups[name]:
                    found[name] = str(tag["id"])
        return found

    async def _create(self, groups: dict[str, str]) -> dict[str, str]:
        """Create the tags, one call per group."""
        by_group: dict[str, list[str]] = defaultdict(list)
        for name, group in groups.items():
            by_group[group].append(name)
        created: dict[str, str] = {}
        for group, names in by_group.items():
            created |= await self._create_in(group, names)
        return created

    async def _create_in(self, group: str, names: list[str], retry: bool = True) -> dict[str, str]:
        """WeCom refuses the whole call when one name is taken (40071): read those back, create the rest."""
        try:
            data = await self.api.post(
                "externalcontact/add_corp_tag", {"group_name": group, "tag": [{"name": n} for n in names]}
            )
        except ApiError as exc:
            if exc.errcode != NAME_TAKEN or not retry:
                raise
            log.info("corp_tags.create.taken group=%s names=%s", group, names)
            found = await self._look_up({name: group for name in names})
            rest = [name for name in names if name not in found]
            return found | (await self._create_in(group, rest, retry=False) if rest else {})
        log.info("corp_tags.create.ok group=%s names=%s", group, names)
        return {str(tag["name"]): str(tag["id"]) for tag in (data.get("tag_group") or {}).get("tag") or []}

    async def _store(self, ids: dict[str, str]) -> None:
        if not ids:
            return
        async with self.sessions() as session, session.begin():
            for name, tag_id in ids.items():
                await session.execute(update(Tag).where(Tag.name == name).values(wecom_tag_id=tag_id))
