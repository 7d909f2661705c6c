"""What the group live code tests share: groups made through callbacks, joins and leaves posted as WeCom
posts them (signed and encrypted), the store read back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import func, select

from bot.sandbox import wechat_side
from crm_store.customers import find_identity
from crm_store.group_chat_models import GroupJoinCode
from crm_store.models import InboxItem, Tag
from tests.bot.conftest import Bot


async def post_chat(bot: Bot, xml: str) -> int:
    """WeCom posts a 客户群变更事件, signed and encrypted, to the contacts callback."""
    keys = bot.settings.wecom.contacts
    signed = wechat_side.sign_wecom(keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(),
                                    bot.settings.wecom.corp_id, xml)
    response = await bot.client.post("/wecom/contacts/callback", params=signed.query, data=signed.body)
    return response.status


async def settle(bot: Bot, rounds: int = 60) -> None:
    """Drain while retried items wait out their (short) back-off."""
    for _ in range(rounds):
        await bot.drain()
        async with bot.runtime.sessions() as session:
            pending = await session.scalar(select(func.count()).select_from(InboxItem)
                                           .where(InboxItem.status != "done", InboxItem.status != "failed"))
        if not pending:
            return
        await asyncio.sleep(0.05)


async def deliver(bot: Bot, xmls: Sequence[str], times: int = 1) -> None:
    """Post each callback (`times` times: WeCom retries), then let the worker apply them."""
    for xml in xmls:
        for _ in range(times):
            assert await post_chat(bot, xml) == 200
    await settle(bot)


async def new_group(bot: Bot, name: str, owner: str = "zhangsan") -> str:
    """A rep creates a group; the store learns it from the create callback."""
    chat_id, status = await bot.simulator.group_created(bot.url, owner, name)
    assert status == 200
    await settle(bot)
    return chat_id


async def join(bot: Bot, user: str, config_id: str, times: int = 1) -> None:
    await deliver(bot, bot.fake.join_group(user, config_id=config_id, name=user), times)


async def customer_id(bot: Bot, external_id: str) -> int:
    async with bot.runtime.sessions() as session:
        identity = await find_identity(session, "wecom", external_id)
        assert identity is not None, external_id
        return identity.customer_id


async def catalog_tag(bot: Bot, name: str) -> None:
    async with bot.runtime.sessions() as session, session.begin():
        if await session.scalar(select(Tag.id).where(Tag.name == name)) is None:
            session.add(Tag(name=name, group_name="社群"))


async def stored_codes(bot: Bot) -> list[GroupJoinCode]:
    async with bot.runtime.sessions() as session:
        return list(await session.scalars(select(GroupJoinCode).order_by(GroupJoinCode.id)))
