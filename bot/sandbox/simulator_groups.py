"""Customer groups in the sandbox: people join and leave groups, groups are created, renamed, dismissed.

Each action changes the fake WeCom's groups (`FakeGroupActivity`) and posts the 客户群变更事件
callbacks it returns, signed and encrypted, to the bot's /wecom/contacts/callback, in WeCom's
order (a group a join way creates before the customer's add_member). `GroupSimulator` is a base
of `simulator.Simulator`.

The customer page uses two routes (`add_group_routes`):

* GET /sandbox/groups?user=… — the group live codes the fake knows (config_id, state, remark) and
  the groups the customer is in;
* POST /sandbox/groups {"user", "action": "join", "config_id"} or {"user", "action": "leave", "chat_id"}
  — 400 when a field is missing, 409 when WeCom would not let it happen (a full code that creates no
  group, a group the customer is not in), with the reason as `error`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from bot.sandbox.fake_group_activity import GroupChatError
from bot.sandbox.fake_wechat import FakeWeChat
from bot.settings import CallbackKeys, Settings

GROUPS_PATH = "/sandbox/groups"
USER_CHARS = 64


class GroupSimulator:
    """What people do in customer groups, as WeCom tells the bot about it. Needs `_post_wecom` of Simulator."""

    settings: Settings
    fake: FakeWeChat

    async def _post_wecom(self, bot_url: str, channel: str, keys: CallbackKeys, xml: str) -> int:
        raise NotImplementedError

    async def customer_joins_group(self, bot_url: str, user: str, *, config_id: str = "", chat_id: str = "",
                                   scene: int = 3, name: str = "", invitor: str = "") -> int:
        """The customer scans a group live code (`config_id`) or joins `chat_id`; 0 when they were in it already."""
        xmls = self.fake.join_group(user, chat_id=chat_id, config_id=config_id, scene=scene, invitor=invitor,
                                    name=name)
        return await self._post_all(bot_url, xmls)

    async def rep_invites(self, bot_url: str, rep: str, user: str, chat_id: str) -> int:
        """A rep invites the customer directly (join_scene 1 with the rep as invitor; JoinScene 0 in the callback)."""
        return await self.customer_joins_group(bot_url, user, chat_id=chat_id, scene=1, invitor=rep)

    async def customer_leaves_group(self, bot_url: str, user: str, chat_id: str, quit_scene: int = 0) -> int:
        return await self._post_group(bot_url, self.fake.leave_group(chat_id, user, quit_scene))

    async def group_created(self, bot_url: str, owner: str, name: str = "", members: Sequence[str] = ()
                            ) -> tuple[str, int]:
        """A rep creates a group with these members: its chat id and the callback's status."""
        chat_id, xml = self.fake.create_group_chat(owner, name, members)
        return chat_id, await self._post_group(bot_url, xml)

    async def group_renamed(self, bot_url: str, chat_id: str, name: str) -> int:
        return await self._post_group(bot_url, self.fake.rename_group(chat_id, name))

    async def group_notice_changed(self, bot_url: str, chat_id: str, notice: str) -> int:
        return await self._post_group(bot_url, self.fake.change_notice(chat_id, notice))

    async def group_dismissed(self, bot_url: str, chat_id: str) -> int:
        return await self._post_group(bot_url, self.fake.dismiss_group(chat_id))

    async def post_chat_callbacks(self, bot_url: str) -> list[int]:
        """Post the callbacks transfers queued (change_owner, a new owner's add_member), oldest first."""
        xmls, self.fake.chat_callbacks[:] = list(self.fake.chat_callbacks), []
        return [await self._post_group(bot_url, xml) for xml in xmls]

    def group_page(self, user: str) -> dict[str, Any]:
        """What the customer page shows: the live codes to scan and the customer's groups."""
        codes = [{"config_id": way.config_id, "state": way.state, "remark": way.remark,
                  "groups": len(way.chat_id_list)} for way in self.fake.join_ways.values()]
        groups = [{"chat_id": group.chat_id, "name": group.name, "owner": group.owner,
                   "members": len(group.members)} for group in self.fake.groups_of(user)]
        return {"codes": codes, "groups": groups}

    async def _post_all(self, bot_url: str, xmls: list[str]) -> int:
        """Post in order; the highest status (a failure shows), 0 when there was nothing to post."""
        statuses = [await self._post_group(bot_url, xml) for xml in xmls]
        return max(statuses, default=0)

    async def _post_group(self, bot_url: str, xml: str) -> int:
        return await self._post_wecom(bot_url, "contacts", self.settings.wecom.contacts, xml)


def add_group_routes(app: web.Application, simulator_key: web.AppKey[Any]) -> None:
    """The page's group routes; `simulator_key` finds the Simulator in the app (simulator.SIMULATOR)."""

    async def groups(request: web.Request) -> web.Response:
        user = request.query.get("user", "").strip()[:USER_CHARS]
        return web.json_response(request.app[simulator_key].group_page(user))

    async def act(request: web.Request) -> web.Response:
        simulator: GroupSimulator = request.app[simulator_key]
        try:
            data = await request.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return web.json_response({"error": "send a JSON object"}, status=400)
        user = str(data.get("user") or "").strip()[:USER_CHARS]
        action = data.get("action")
        target = data.get("config_id") if action == "join" else data.get("chat_id")
        if not user or action not in ("join", "leave") or not isinstance(target, str) or not target:
            return web.json_response({"error": "need user and action join (with config_id) or leave (with chat_id)"},
                                     status=400)
        bot_url = str(request.url.origin())
        try:
            if action == "join":
                status = await simulator.customer_joins_group(bot_url, user, config_id=target)
            else:
                status = await simulator.customer_leaves_group(bot_url, user, target)
        except GroupChatError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response({"callback_status": status, **simulator.group_page(user)})

    app.router.add_get(GROUPS_PATH, groups)
    app.router.add_post(GROUPS_PATH, act)
