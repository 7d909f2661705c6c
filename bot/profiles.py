"""Looking up a new identity's name and unionid, so one person on WeCom and the OA is one customer.

Asked once per new identity, before the worker's transaction. A failed lookup never
holds a message back: the customer is created without a profile and merged later,
when another event brings the unionid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bot.wechat_api import ApiError, WeChatApi
from core.events import InboundEvent
from crm_store.customers import Profile

log = logging.getLogger("scrm.profiles")


class ProfileLookup:
    def __init__(self, apis: Mapping[str, WeChatApi]) -> None:
        self.apis = apis

    async def lookup(self, event: InboundEvent) -> Profile | None:
        try:
            if event.channel == "oa":
                if event.kind == "unsubscribe":
                    return None
                data = await self.apis["oa"].get("user/info", {"openid": event.sender, "lang": "zh_CN"})
                return Profile(display_name=str(data.get("nickname", "")), unionid=str(data.get("unionid", "")))
            if event.channel in ("kf", "contacts"):
                data = await self.apis["wecom.contacts"].get(
                    "externalcontact/get", {"external_userid": event.sender}
                )
                contact = data.get("external_contact") or {}
                return Profile(display_name=str(contact.get("name", "")), unionid=str(contact.get("unionid", "")))
        except ApiError as exc:
            log.info("profiles.lookup.failed channel=%s errcode=%s", event.channel, exc.errcode)
        return None
