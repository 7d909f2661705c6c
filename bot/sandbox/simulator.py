"""The sandbox: a local fake WeCom/OA API plus a page where a person chats as a WeChat customer.

Messages typed on the page travel the real path: the simulator plays WeChat (it puts
the message where `kf/sync_msg` will find it, or builds the OA callback), signs and
encrypts the callback, and POSTs it to the bot's own callback URL. The bot's answers
arrive at the fake API, and the page reads them back from there.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.sandbox import wechat_side
from bot.sandbox.fake_wechat import FakeWeChat
from bot.settings import Settings

PAGE = Path(__file__).with_name("page.html")
SANDBOX_KF_ACCOUNT = "wkSandboxKf"


def fake_for(settings: Settings) -> FakeWeChat:
    wecom = settings.wecom
    secrets_ = [keys.secret.get_secret_value() for keys in (wecom.kf, wecom.contacts, wecom.app)]
    return FakeWeChat(wecom.corp_id, secrets_, settings.oa.app_id, settings.oa.app_secret.get_secret_value())


@dataclass
class Simulator:
    """Plays WeChat's side for one bot: customers speak, callbacks go to `bot_url`."""

    settings: Settings
    fake: FakeWeChat
    http: aiohttp.ClientSession

    async def kf_says(self, bot_url: str, user: str, text: str, menu_id: str = "") -> int:
        self.fake.add_kf_text(SANDBOX_KF_ACCOUNT, user, text, menu_id)
        return await self._kf_notify(bot_url)

    async def kf_enters(self, bot_url: str, user: str, scene_param: str = "") -> int:
        self.fake.add_kf_enter_session(SANDBOX_KF_ACCOUNT, user, scene_param)
        return await self._kf_notify(bot_url)

    async def oa_says(self, bot_url: str, openid: str, text: str) -> int:
        xml = wechat_side.oa_text_xml(self.settings.oa.app_id, openid, text)
        return await self._post_oa(bot_url, xml)

    async def oa_subscribes(self, bot_url: str, openid: str, scene: str = "") -> int:
        xml = wechat_side.oa_event_xml(self.settings.oa.app_id, openid, "subscribe", f"qrscene_{scene}" if scene else "")
        return await self._post_oa(bot_url, xml)

    async def contact_adds(self, bot_url: str, user: str, rep: str, state: str = "") -> int:
        """The customer adds `rep` as a WeCom contact (through a channel QR with `state`), with a WelcomeCode."""
        keys = self.settings.wecom.contacts
        corp_id = self.settings.wecom.corp_id
        xml = wechat_side.contact_event_xml(corp_id, "add_external_contact", rep, user, state=state,
                                            welcome_code=self.fake.issue_welcome_code(user))
        signed = wechat_side.sign_wecom(
            keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(), corp_id, xml
        )
        return await self._post(f"{bot_url}/wecom/contacts/callback", signed)

    async def oa_unsubscribes(self, bot_url: str, openid: str) -> int:
        xml = wechat_side.oa_event_xml(self.settings.oa.app_id, openid, "unsubscribe")
        return await self._post_oa(bot_url, xml)

    async def _kf_notify(self, bot_url: str) -> int:
        keys = self.settings.wecom.kf
        xml = wechat_side.kf_notification_xml(self.settings.wecom.corp_id, SANDBOX_KF_ACCOUNT, secrets.token_hex(8))
        signed = wechat_side.sign_wecom(
            keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(), self.settings.wecom.corp_id, xml
        )
        return await self._post(f"{bot_url}/wecom/kf/callback", signed)

    async def _post_oa(self, bot_url: str, xml: str) -> int:
        oa = self.settings.oa
        signed = wechat_side.sign_oa(
            oa.token.get_secret_value(), oa.encoding_aes_key.get_secret_value(), oa.app_id, xml, oa.mode
        )
        return await self._post(f"{bot_url}/oa/callback", signed)

    async def _post(self, url: str, signed: wechat_side.SignedCallback) -> int:
        async with self.http.post(url, params=signed.query, data=signed.body) as response:
            return response.status

    def conversation(self, user: str) -> list[dict[str, Any]]:
        return [
            {"text": sent.text, "via": sent.path, "at": sent.at, "menu": _menu_of(sent.body)}
            for sent in self.fake.messages_to(user)
        ]


def _menu_of(body: dict[str, Any]) -> list[dict[str, str]]:
    """The clickable choices of a kf `msgmenu` message, for the page to show as buttons."""
    items = (body.get("msgmenu") or {}).get("list") or []
    return [{"id": item["click"]["id"], "text": item["click"]["content"]} for item in items if "click" in item]


SIMULATOR = web.AppKey("sandbox_simulator", Simulator)


def add_sandbox_routes(app: web.Application) -> None:
    """The chat page at /sandbox and the two calls it makes."""
    app.router.add_get("/sandbox", _page)
    app.router.add_post("/sandbox/say", _say)
    app.router.add_get("/sandbox/messages", _messages)


async def _page(_request: web.Request) -> web.Response:
    return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")


async def _say(request: web.Request) -> web.Response:
    simulator = request.app[SIMULATOR]
    data = await request.json()
    user = str(data.get("user") or "").strip()[:64]
    text = str(data.get("text") or "")[:2000]
    channel = data.get("channel", "kf")
    if not user or channel not in ("kf", "oa") or (not text and data.get("action") != "enter"):
        return web.json_response({"error": "need user, text and channel kf or oa"}, status=400)
    bot_url = str(request.url.origin())
    if data.get("action") == "enter":
        status = await (simulator.kf_enters(bot_url, user) if channel == "kf" else simulator.oa_subscribes(bot_url, user))
    elif channel == "kf":
        status = await simulator.kf_says(bot_url, user, text, menu_id=str(data.get("menu_id") or "")[:64])
    else:
        status = await simulator.oa_says(bot_url, user, text)
    return web.json_response({"callback_status": status})


async def _messages(request: web.Request) -> web.Response:
    user = request.query.get("user", "")
    return web.json_response({"messages": request.app[SIMULATOR].conversation(user)})
