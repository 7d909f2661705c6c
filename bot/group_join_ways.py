"""Group live codes on WeCom: the join way (群活码) and the group welcome template behind each code.

Calls, on the contacts credential (客户联系):

    externalcontact/groupchat/add_join_way | get_join_way | update_join_way | del_join_way
        https://developer.work.weixin.qq.com/document/path/92229 — scene 2 is the group QR (its
        `qr_code` comes from get_join_way), `state` our code, at most 5 groups
    externalcontact/group_welcome_template/add | edit | del
        https://developer.work.weixin.qq.com/document/path/92366 — text, plus a link or a
        mini-program card; WeCom sends it when someone joins a group whose owner applied it

Nothing half-written: the spec and the store (groups, tags) are checked before WeCom is asked
anything, and what WeCom made is deleted again when storing it fails. Changes go to WeCom first
and are stored after; a failure between the two leaves WeCom ahead, and the same update again
puts both in step (update_join_way replaces the whole configuration).

A personal fission code is a join way over the campaign's groups whose state is the customer's
own code; the unique index (parent_id, inviter_id) settles two askers making one at once: the
loser deletes its join way and uses the winner's. It is made in the asking turn's transaction (on
SQLite a second connection would wait for the turn's own write lock); should that turn roll back,
its join way stays on WeCom unstored, and the retried turn makes another.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.wechat_api import ApiError, WeChatApi
from crm_store.group_chat_models import GroupJoinCode
from crm_store.group_join_codes import (
    MAX_GROUPS,
    GroupCodeError,
    GroupCodeSpec,
    add_code,
    add_personal,
    apply_spec,
    check_names,
    code_by_code,
    deactivate,
    new_group_code,
    personal_code_of,
    personal_codes,
    validate,
)
from flows.group_fission import GroupInviteUnavailable

log = logging.getLogger("scrm.groupchat.codes")

ADD, GET, UPDATE, DELETE = (f"externalcontact/groupchat/{verb}_join_way" for verb in ("add", "get", "update", "del"))
TEMPLATE = "externalcontact/group_welcome_template"
SCENE_QR = 2  # scene 1 is the mini-program plug-in, which has no QR
Sessions = async_sessionmaker[AsyncSession]


def join_way_body(spec: GroupCodeSpec, state: str, chat_ids: list[str] | None = None) -> dict[str, Any]:
    """add_join_way's (and update_join_way's: it replaces everything) configuration of the code."""
    return {"scene": SCENE_QR, "remark": spec.name[:30], "auto_create_room": int(spec.auto_create_room),
            "room_base_name": spec.room_base_name, "room_base_id": spec.room_base_id,
            "chat_id_list": chat_ids if chat_ids is not None else list(spec.chat_ids), "state": state,
            "mark_source": True}


def template_body(spec: GroupCodeSpec) -> dict[str, Any]:
    """The welcome template: text (%NICKNAME% is the joiner's name), and a link or a mini-program card."""
    body: dict[str, Any] = {}
    if spec.welcome_text.strip():
        body["text"] = {"content": spec.welcome_text}
    welcome = spec.welcome()
    for kind in ("link", "miniprogram"):
        if kind in welcome:
            body[kind] = welcome[kind]
    return body


async def _join_way(api: WeChatApi, body: dict[str, Any]) -> tuple[str, str]:
    """A new join way: its config_id and QR picture."""
    answer = await api.post(ADD, body)
    config_id = str(answer.get("config_id") or "")
    if not config_id:
        raise ApiError(-4, "add_join_way answered without a config_id", ADD)
    try:
        way = (await api.post(GET, {"config_id": config_id})).get("join_way") or {}
    except BaseException:
        await _quietly(api, DELETE, {"config_id": config_id})
        raise
    return config_id, str(way.get("qr_code") or "")


async def _quietly(api: WeChatApi, path: str, body: dict[str, Any]) -> None:
    """Take back what WeCom made for a code that is not stored; a failure is logged (the console can)."""
    try:
        await api.post(path, body)
    except ApiError as exc:
        log.error("groupchat.code.left_on_wecom path=%s body=%s %s: delete it in the WeCom admin console",
                  path, body, exc)


async def create_code(sessions: Sessions, api: WeChatApi, spec: GroupCodeSpec) -> GroupJoinCode:
    """Check, create the join way (and the welcome template), store the code; raises GroupCodeError or ApiError."""
    validate(spec)
    async with sessions() as session:
        await check_names(session, spec)
    code = new_group_code()
    config_id, qr_code = await _join_way(api, join_way_body(spec, code))
    template_id = ""
    try:
        if spec.has_welcome:
            template_id = str((await api.post(f"{TEMPLATE}/add", template_body(spec))).get("template_id") or "")
        async with sessions() as session, session.begin():
            row = await add_code(session, spec, code, config_id, qr_code, template_id)
    except BaseException:
        await _quietly(api, DELETE, {"config_id": config_id})
        if template_id:
            await _quietly(api, f"{TEMPLATE}/del", {"template_id": template_id})
        raise
    log.info("groupchat.code.created code=%s config_id=%s groups=%s", code, config_id, len(spec.chat_ids))
    return row


async def current_groups(api: WeChatApi, config_id: str) -> list[str]:
    """The groups the join way offers now (it adds those it creates when the last is full)."""
    way = (await api.post(GET, {"config_id": config_id})).get("join_way") or {}
    return [str(chat) for chat in way.get("chat_id_list") or []]


async def update_code(sessions: Sessions, api: WeChatApi, code: str, spec: GroupCodeSpec) -> GroupJoinCode:
    """Make the code `spec`: the join way updated, the welcome template edited, added or deleted, then stored."""
    validate(spec)
    async with sessions() as session:
        row = await _live_code(session, code)
        await check_names(session, spec)
    await api.post(UPDATE, {"config_id": row.config_id, **join_way_body(spec, row.code)})
    template_id = await _keep_template(api, row, spec)
    async with sessions() as session, session.begin():
        stored = await _live_code(session, row.code)
        apply_spec(stored, spec, template_id)
    await _update_personal(sessions, api, stored)
    log.info("groupchat.code.updated code=%s groups=%s welcome=%s", row.code, len(spec.chat_ids), bool(template_id))
    return stored


async def _keep_template(api: WeChatApi, row: GroupJoinCode, spec: GroupCodeSpec) -> str:
    """The welcome template in step with the spec: its id ("" without a welcome).

    `edit` replaces only the kinds it is given, so a welcome that drops its card is made anew."""
    template_id = row.welcome_template_id
    dropped = {"link", "miniprogram"} & set(row.welcome or {}) - set(spec.welcome())
    if template_id and (dropped or not spec.has_welcome):
        await _quietly(api, f"{TEMPLATE}/del", {"template_id": template_id})
        template_id = ""
    if not spec.has_welcome:
        return ""
    if template_id:
        await api.post(f"{TEMPLATE}/edit", {"template_id": template_id, "text": {"content": spec.welcome_text},
                                            **template_body(spec)})
        return template_id
    return str((await api.post(f"{TEMPLATE}/add", template_body(spec))).get("template_id") or "")


async def _update_personal(sessions: Sessions, api: WeChatApi, parent: GroupJoinCode) -> None:
    """Members' personal codes offer the campaign's groups too (a failure is logged: the next update retries)."""
    async with sessions() as session:
        children = await personal_codes(session, parent.id)
    spec = _offered(parent)
    for child in children:
        if not child.active:
            continue
        try:
            await api.post(UPDATE, {"config_id": child.config_id, **join_way_body(spec, child.code)})
        except ApiError as exc:
            log.warning("groupchat.code.personal_not_updated code=%s %s", child.code, exc)
            continue
        async with sessions() as session, session.begin():
            stored = await session.get_one(GroupJoinCode, child.id)
            stored.chat_ids = list(spec.chat_ids)


def _offered(parent: GroupJoinCode) -> GroupCodeSpec:
    """What a personal code offers: the campaign's latest groups (a join way takes 5), its room naming."""
    return GroupCodeSpec(parent.name, tuple(parent.chat_ids[-MAX_GROUPS:]), parent.auto_create_room,
                         parent.room_base_name, parent.room_base_id)


async def deactivate_code(sessions: Sessions, api: WeChatApi, code: str) -> GroupJoinCode:
    """Delete the join way (its QR stops working) and its personal codes', keep the code's history."""
    async with sessions() as session:
        row = await _live_code(session, code)
        ways = [row, *[child for child in await personal_codes(session, row.id) if child.active]]
    for way in ways:
        try:
            await api.post(DELETE, {"config_id": way.config_id})
        except ApiError as exc:
            if exc.errcode != 41044:  # already gone (deleted in the console): nothing to take back
                raise
        async with sessions() as session, session.begin():
            await deactivate(session, await session.get_one(GroupJoinCode, way.id))
    log.info("groupchat.code.deactivated code=%s personal=%s", row.code, len(ways) - 1)
    return await _reread(sessions, row.id)


async def _reread(sessions: Sessions, code_id: int) -> GroupJoinCode:
    async with sessions() as session:
        return await session.get_one(GroupJoinCode, code_id)


async def _live_code(session: AsyncSession, code: str) -> GroupJoinCode:
    row = await code_by_code(session, code)
    if row is None:
        raise GroupCodeError([f"no group live code {code!r} (list them with: scrm groupchats codes list)"])
    if not row.active:
        raise GroupCodeError([f"group live code {row.code} is inactive"])
    if row.parent_id is not None:
        raise GroupCodeError([f"{row.code} is a customer's personal code: change its campaign's code instead"])
    return row


async def personal_code(session: AsyncSession, api: WeChatApi, parent: GroupJoinCode, customer_id: int
                        ) -> GroupJoinCode:
    """The customer's personal code under the fission code `parent`: the stored one, or a new join way."""
    if not parent.fission or not parent.active or parent.parent_id is not None:
        raise GroupCodeError([f"{parent.code} is not an active fission code (scrm groupchats codes create --fission)"])
    existing = await personal_code_of(session, parent.id, customer_id)
    if existing is not None:
        return existing
    code = new_group_code()
    config_id, qr_code = await _join_way(api, join_way_body(_offered(parent), code))
    try:
        row, won = await add_personal(session, parent, customer_id, code, config_id, qr_code)
    except BaseException:
        await _quietly(api, DELETE, {"config_id": config_id})
        raise
    if not won:  # another turn stored the customer's code first: ours is not needed
        await _quietly(api, DELETE, {"config_id": config_id})
    log.info("groupchat.fission.personal_code parent=%s customer=%s code=%s new=%s", parent.code, customer_id,
             row.code, won)
    return row


class PersonalJoinWays:
    """The flows' `PersonalGroupCodes` port: a customer's personal group QR, made on WeCom when first asked."""

    def __init__(self, api: WeChatApi) -> None:
        self.api = api

    async def code_for(self, session: AsyncSession, parent_code: str, customer_id: int) -> str:
        parent = await code_by_code(session, parent_code)
        if parent is None:
            raise GroupInviteUnavailable(f"no group live code {parent_code!r}")
        try:
            row = await personal_code(session, self.api, parent, customer_id)
        except (ApiError, GroupCodeError) as exc:
            raise GroupInviteUnavailable(str(exc)) from exc
        return row.qr_code
