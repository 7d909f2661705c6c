"""An app as WeCom and the OA see it, for the fake API: its agent, its trusted IPs, its reps.

`scrm doctor` asks these. WeCom refuses an app's calls from a server outside the app's
企业可信IP list with 60020 ("not allow to access from your ip, …, from ip: X") while its
`gettoken` still answers; the OA refuses the token request itself from outside its IP
whitelist (基本配置 → IP白名单) with 40164. `refuse_ip(secret)` plays either for the app
with that secret, so each `gettoken` is remembered with the secret that bought it.
`agent/get` answers for the agents added with `add_agent`: 40056 for an agent id WeCom does
not know, 301002 when the token is another app's. `externalcontact/get_follow_user_list`
lists `contact_reps`, the reps with customer contact (客户联系) on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.sandbox.fake_kf import ApiRefusal

EGRESS_IP = "203.0.113.7"  # TEST-NET-3: where WeChat sees the refused calls come from

Handler = Callable[[web.Request, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Agent:
    agent_id: int
    secret: str  # the app's Secret: only its tokens may read it
    name: str
    closed: bool = False  # 停用 in the admin console


class FakeApps:
    oa_app_id: str
    oa_secret: str
    wecom_token: Handler
    oa_token: Handler

    def init_apps(self) -> None:
        self.agents: dict[int, Agent] = {}
        self.contact_reps: list[str] = []  # get_follow_user_list: reps with customer contact on
        self.untrusted: dict[str, str] = {}  # secret -> the egress IP its app does not trust
        self.token_owner: dict[str, str] = {}  # WeCom access token -> the secret that bought it

    # --- what a test or the sandbox page does --------------------------------------------
    def add_agent(self, agent_id: int, secret: str, name: str = "SCRM 助手", closed: bool = False) -> None:
        """A self-built app (its AgentId and Secret), as 应用管理 shows it."""
        self.agents[agent_id] = Agent(agent_id, secret, name, closed)

    def refuse_ip(self, secret: str, ip: str = EGRESS_IP) -> None:
        """From now on the app with `secret` refuses us as from an IP it does not trust (60020; OA: 40164)."""
        self.untrusted[secret] = ip

    # --- the HTTP side -------------------------------------------------------------------
    def app_routes(self) -> dict[str, Any]:
        return {"agent/get": self.agent_get, "externalcontact/get_follow_user_list": self.get_follow_user_list}

    def from_trusted_ip(self, handler: Handler) -> Handler:
        """`handler`, refused with 60020 when the WeCom token's app does not trust our IP."""

        async def checked(request: web.Request, body: dict[str, Any]) -> Any:
            ip = self.untrusted.get(self.token_owner.get(request.query.get("access_token", ""), ""))
            if ip:
                raise ApiRefusal(60020, f"not allow to access from your ip, hint: [fake], from ip: {ip}, "
                                        "more info at https://open.work.weixin.qq.com/devtool/query?e=60020")
            return await handler(request, body)

        return checked

    async def wecom_gettoken(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        """`gettoken`, remembering which secret bought the token (for 60020 and 301002)."""
        response: web.Response = await self.wecom_token(request, body)
        token = json.loads(response.text or "{}").get("access_token")
        if token:
            self.token_owner[token] = request.query["corpsecret"]
        return response

    async def oa_gettoken(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        """The OA `token`: 40164 from an IP outside the OA's whitelist, whatever the secret."""
        ip = self.untrusted.get(self.oa_secret)
        if ip and request.query.get("appid") == self.oa_app_id:
            raise ApiRefusal(40164, f"invalid ip {ip} ipv6 ::ffff:{ip}, not in whitelist rid: fake")
        response: web.Response = await self.oa_token(request, body)
        return response

    async def agent_get(self, request: web.Request, _body: dict[str, Any]) -> dict[str, Any]:
        raw = request.query.get("agentid", "")
        if not raw:
            raise ApiRefusal(41011, "missing agentid")
        agent = self.agents.get(int(raw)) if raw.isdigit() else None
        if agent is None:
            raise ApiRefusal(40056, "invalid agentid")
        if self.token_owner.get(request.query.get("access_token", "")) != agent.secret:
            raise ApiRefusal(301002, "not allow operate another agent with this accesstoken.")
        return {"agentid": agent.agent_id, "name": agent.name, "square_logo_url": "", "description": "",
                "allow_userinfos": {"user": [{"userid": rep} for rep in self.contact_reps]},
                "allow_partys": {"partyid": []}, "allow_tags": {"tagid": []}, "close": int(agent.closed),
                "redirect_domain": "", "report_location_flag": 0, "isreportenter": 0, "home_url": ""}

    async def get_follow_user_list(self, _request: web.Request, _body: dict[str, Any]) -> dict[str, Any]:
        return {"follow_user": list(self.contact_reps)}
