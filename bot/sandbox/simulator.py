"""The sandbox: a local fake WeCom/OA API plus two pages, one to chat as a WeChat customer, one as a rep.

Messages typed on the pages travel the real path: the simulator plays WeChat (it puts
the message where `kf/sync_msg` will find it, or builds the OA or app callback), signs and
encrypts the callback, and POSTs it to the bot's own callback URL. The bot's answers
arrive at the fake API, and the pages read them back from there. On the rep page
(/sandbox/rep) a person picks a rep's userid, reads the cards and texts the bot sent that
rep in the WeCom app, types commands to the bot (app callbacks), and answers the kf
customers the rep serves as WeCom's kf workspace would (an origin-5 message) or ends
their session.

What an OA customer does is also told to the fake (`FakeWeChat.oa_customer_acted`), which
never sees OA callbacks: it grants the sends the OA allows after a message, a follow, a scan
or a menu click, and takes them back on an unsubscribe.

A customer also joins a group through a group live code and leaves it (GET/POST /sandbox/groups,
`simulator_groups`: the 客户群变更事件 callbacks go to /wecom/contacts/callback).

A customer also sends photos, files, voice notes and places from the page (POST /sandbox/media,
checked in `simulator_media`): the bytes go where WeChat keeps them (`FakeWeChat.add_media`), then
a kf/sync_msg item or an OA callback names their media_id. Both pages show images, whether the
customer sent them or the bot uploaded them for a reply, from GET /sandbox/media/{media_id}.
"""

from __future__ import annotations

import html
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.sandbox import wechat_side
from bot.sandbox.fake_kf import SERVED, SERVICER_PATH, KfSessionError
from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.simulator_groups import GroupSimulator, add_group_routes
from bot.sandbox.simulator_media import (
    MEDIA_PATH,
    PLACEHOLDER_THUMB,
    BadMediaRequest,
    MediaSent,
    PagePlace,
    media_response,
    read_page_send,
    shown,
    voice_format,
)
from bot.settings import CallbackKeys, Settings
from core.content import MediaKind

PAGE = Path(__file__).with_name("page.html")
REP_PAGE = Path(__file__).with_name("rep_page.html")
SANDBOX_KF_ACCOUNT = "wkSandboxKf"
TRANSCRIPT_LINES = 20  # of a kf customer's session, on the rep page
OA_MAP_SCALE = 15  # an OA location's Scale: the zoom of the map the follower picked the place on


def fake_for(settings: Settings) -> FakeWeChat:
    wecom = settings.wecom
    secrets_ = [keys.secret.get_secret_value() for keys in (wecom.kf, wecom.contacts, wecom.app)]
    fake = FakeWeChat(wecom.corp_id, secrets_, settings.oa.app_id, settings.oa.app_secret.get_secret_value())
    fake.add_kf_account(SANDBOX_KF_ACCOUNT, "沙盒客服")  # handed to the API, as a working setup's is
    return fake


@dataclass
class Simulator(GroupSimulator):
    """Plays WeChat's side for one bot: customers speak, callbacks go to `bot_url`."""

    settings: Settings
    fake: FakeWeChat
    http: aiohttp.ClientSession

    async def kf_says(self, bot_url: str, user: str, text: str, menu_id: str = "") -> int:
        self.fake.add_kf_text(SANDBOX_KF_ACCOUNT, user, text, menu_id)
        return await self._kf_notify(bot_url)

    async def kf_sends_media(self, bot_url: str, user: str, kind: MediaKind, data: bytes, filename: str = "",
                             content_type: str = "") -> MediaSent:
        """A kf customer sends a photo, voice note, video or file: WeChat keeps the bytes under a new media_id
        and kf/sync_msg has an item of that msgtype with {"media_id": …} (读取消息, document 94670)."""
        media_id = self.fake.add_media(kind, data, filename, content_type)
        self.fake.add_kf_media(SANDBOX_KF_ACCOUNT, user, kind, {"media_id": media_id})
        return MediaSent(await self._kf_notify(bot_url), media_id)

    async def kf_sends_location(self, bot_url: str, user: str, latitude: float, longitude: float, name: str = "",
                                address: str = "") -> int:
        body = {"latitude": latitude, "longitude": longitude, "name": name, "address": address}
        self.fake.add_kf_media(SANDBOX_KF_ACCOUNT, user, "location", body)
        return await self._kf_notify(bot_url)

    async def kf_enters(self, bot_url: str, user: str, scene_param: str = "") -> int:
        self.fake.add_kf_enter_session(SANDBOX_KF_ACCOUNT, user, scene_param)
        return await self._kf_notify(bot_url)

    async def oa_says(self, bot_url: str, openid: str, text: str) -> int:
        self.fake.oa_customer_acted(openid, "message")
        xml = wechat_side.oa_text_xml(self.settings.oa.app_id, openid, text)
        return await self._post_oa(bot_url, xml)

    async def oa_sends_media(self, bot_url: str, openid: str, kind: MediaKind, data: bytes, filename: str = "",
                             content_type: str = "", recognition: str = "") -> MediaSent:
        """A follower sends a photo (PicUrl, MediaId), a voice note (MediaId, Format, and Recognition when
        WeChat recognised words) or a video (MediaId, ThumbMediaId); the OA has no file messages."""
        if kind == "file":
            raise ValueError("the OA has no file messages: image, voice or video")
        self.fake.oa_customer_acted(openid, "message")
        media_id = self.fake.add_media(kind, data, filename, content_type)
        fields: dict[str, str | int | float]
        if kind == "image":
            fields = {"PicUrl": f"{bot_url}{MEDIA_PATH}/{media_id}", "MediaId": media_id}
        elif kind == "voice":
            fields = {"MediaId": media_id, "Format": voice_format(self.fake.media[media_id].filename),
                      **({"Recognition": recognition} if recognition else {})}
        else:
            fields = {"MediaId": media_id, "ThumbMediaId": self.fake.add_media("thumb", PLACEHOLDER_THUMB)}
        xml = wechat_side.oa_message_xml(self.settings.oa.app_id, openid, kind, fields)
        return MediaSent(await self._post_oa(bot_url, xml), media_id)

    async def oa_sends_location(self, bot_url: str, openid: str, latitude: float, longitude: float,
                                label: str = "", scale: int = OA_MAP_SCALE) -> int:
        self.fake.oa_customer_acted(openid, "message")
        fields: dict[str, str | int | float] = {"Location_X": latitude, "Location_Y": longitude, "Scale": scale,
                                                "Label": label}
        xml = wechat_side.oa_message_xml(self.settings.oa.app_id, openid, "location", fields)
        return await self._post_oa(bot_url, xml)

    async def oa_subscribes(self, bot_url: str, openid: str, scene: str = "") -> int:
        self.fake.oa_customer_acted(openid, "subscribe")
        xml = wechat_side.oa_event_xml(self.settings.oa.app_id, openid, "subscribe", f"qrscene_{scene}" if scene else "")
        return await self._post_oa(bot_url, xml)

    async def oa_scans(self, bot_url: str, openid: str, scene: str) -> int:
        """A follower scans a parametric QR code (the SCAN event, its scene as EventKey)."""
        self.fake.oa_customer_acted(openid, "scan")
        xml = wechat_side.oa_event_xml(self.settings.oa.app_id, openid, "SCAN", scene)
        return await self._post_oa(bot_url, xml)

    async def oa_clicks(self, bot_url: str, openid: str, key: str) -> int:
        """The customer clicks a custom menu item of type click (the CLICK event, its key as EventKey)."""
        self.fake.oa_customer_acted(openid, "click")
        xml = wechat_side.oa_event_xml(self.settings.oa.app_id, openid, "CLICK", key)
        return await self._post_oa(bot_url, xml)

    async def contact_adds(self, bot_url: str, user: str, rep: str, state: str = "") -> int:
        """The customer adds `rep` as a WeCom contact (through a channel QR with `state`), with a WelcomeCode."""
        xml = wechat_side.contact_event_xml(self.settings.wecom.corp_id, "add_external_contact", rep, user,
                                            state=state, welcome_code=self.fake.issue_welcome_code(user))
        return await self._post_wecom(bot_url, "contacts", self.settings.wecom.contacts, xml)

    async def rep_says(self, bot_url: str, rep: str, text: str) -> int:
        """A rep types in the self-built app: a command to the bot (接 42, 放 42, 列表…)."""
        app = self.settings.wecom.app
        xml = wechat_side.app_text_xml(self.settings.wecom.corp_id, rep, text, app.agent_id)
        return await self._post_wecom(bot_url, "app", app, xml)

    async def rep_answers(self, bot_url: str, rep: str, user: str, text: str, open_kfid: str = SANDBOX_KF_ACCOUNT
                          ) -> int:
        """The rep serving a kf customer answers in WeCom's kf workspace (KfSessionError if they do not serve them)."""
        self.fake.add_kf_servicer_text(open_kfid, user, rep, text)
        return await self._kf_notify(bot_url, open_kfid)

    async def rep_ends(self, bot_url: str, rep: str, user: str, open_kfid: str = SANDBOX_KF_ACCOUNT) -> int:
        """The rep ends the kf session in the workspace: the customer's next message goes to the bot."""
        self.fake.end_kf_session(open_kfid, user, rep)
        return await self._kf_notify(bot_url, open_kfid)

    async def oa_unsubscribes(self, bot_url: str, openid: str) -> int:
        self.fake.oa_customer_acted(openid, "unsubscribe")
        xml = wechat_side.oa_event_xml(self.settings.oa.app_id, openid, "unsubscribe")
        return await self._post_oa(bot_url, xml)

    async def _kf_notify(self, bot_url: str, open_kfid: str = SANDBOX_KF_ACCOUNT) -> int:
        xml = wechat_side.kf_notification_xml(self.settings.wecom.corp_id, open_kfid, secrets.token_hex(8))
        return await self._post_wecom(bot_url, "kf", self.settings.wecom.kf, xml)

    async def _post_wecom(self, bot_url: str, channel: str, keys: CallbackKeys, xml: str) -> int:
        corp_id = self.settings.wecom.corp_id
        signed = wechat_side.sign_wecom(keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(),
                                        corp_id, xml)
        return await self._post(f"{bot_url}/wecom/{channel}/callback", signed)

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
            {"text": sent.text, "via": sent.path, "at": sent.at, "menu": _menu_of(sent.body),
             "rep": str(sent.body.get("servicer_userid", "")) if sent.path == SERVICER_PATH else "",
             **shown(sent.body, self.fake.media)}
            for sent in self.fake.messages_to(user)
        ]

    def rep_inbox(self, rep: str) -> dict[str, Any]:
        """What the rep sees: the bot's app messages to them, and the kf customers they serve."""
        messages = [
            {"at": sent.at, **_app_message(sent.body), **shown(sent.body, self.fake.media)}
            for sent in self.fake.sent
            if sent.path == "message/send" and rep in str(sent.body.get("touser", "")).split("|")
        ]
        sessions = [
            {"open_kfid": open_kfid, "user": user, "transcript": self._transcript(open_kfid, user)}
            for (open_kfid, user), state in self.fake.service_states.items()
            if state == SERVED and self.fake.servicers.get((open_kfid, user)) == rep
        ]
        return {"messages": messages, "sessions": sessions}

    def _transcript(self, open_kfid: str, user: str) -> list[dict[str, Any]]:
        """The customer's and the reps' messages in the session (texts, photos, files, places), as the kf
        workspace shows them."""
        lines = [
            {"who": "rep" if item["origin"] == 5 else "customer",
             "text": str((item.get("text") or {}).get("content", "")), **shown(item, self.fake.media)}
            for item in self.fake.kf_messages.get(open_kfid, [])
            if item.get("external_userid") == user and item.get("origin") in (3, 5)
        ]
        return lines[-TRANSCRIPT_LINES:]


def _app_message(body: dict[str, Any]) -> dict[str, str]:
    """A textcard's title and its description as plain text (WeCom renders its <div> lines), or a text."""
    card = body.get("textcard")
    if isinstance(card, dict):
        description = re.sub(r"</div>\s*|<br\s*/?>", "\n", str(card.get("description", "")))
        return {"title": str(card.get("title", "")), "text": html.unescape(re.sub(r"<[^>]+>", "", description)).strip()}
    return {"title": "", "text": str((body.get("text") or {}).get("content", ""))}


def _menu_of(body: dict[str, Any]) -> list[dict[str, str]]:
    """The clickable choices of a kf `msgmenu` message, for the page to show as buttons."""
    items = (body.get("msgmenu") or {}).get("list") or []
    return [{"id": item["click"]["id"], "text": item["click"]["content"]} for item in items if "click" in item]


SIMULATOR = web.AppKey("sandbox_simulator", Simulator)


def add_sandbox_routes(app: web.Application) -> None:
    """The chat page at /sandbox, the rep page at /sandbox/rep, and the calls they make."""
    app.router.add_get("/sandbox", _page)
    app.router.add_post("/sandbox/say", _say)
    app.router.add_get("/sandbox/messages", _messages)
    app.router.add_post(MEDIA_PATH, _send_media)
    app.router.add_get(MEDIA_PATH + "/{media_id}", _media)
    app.router.add_get("/sandbox/rep", _rep_page)
    app.router.add_get("/sandbox/rep/inbox", _rep_inbox)
    app.router.add_post("/sandbox/rep/say", _rep_say)
    app.router.add_post("/sandbox/rep/kf", _rep_kf)
    add_group_routes(app, SIMULATOR)


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


async def _send_media(request: web.Request) -> web.Response:
    """A photo, file, voice note or place from the customer page (simulator_media says what it takes)."""
    simulator = request.app[SIMULATOR]
    try:
        sent = await read_page_send(request)
    except BadMediaRequest as exc:
        return web.json_response({"error": str(exc)}, status=400)
    bot_url = str(request.url.origin())
    if isinstance(sent, PagePlace):
        if sent.channel == "kf":
            status = await simulator.kf_sends_location(bot_url, sent.user, sent.latitude, sent.longitude, sent.label,
                                                       sent.address)
        else:
            status = await simulator.oa_sends_location(bot_url, sent.user, sent.latitude, sent.longitude, sent.label)
        return web.json_response({"callback_status": status, "kind": "location"})
    if sent.channel == "kf":
        media = await simulator.kf_sends_media(bot_url, sent.user, sent.kind, sent.data, sent.filename,
                                               sent.content_type)
    else:
        media = await simulator.oa_sends_media(bot_url, sent.user, sent.kind, sent.data, sent.filename,
                                               sent.content_type, sent.recognition)
    return web.json_response({"callback_status": media.callback_status, "kind": sent.kind,
                              "media_id": media.media_id, "filename": simulator.fake.media[media.media_id].filename})


async def _media(request: web.Request) -> web.Response:
    return media_response(request.app[SIMULATOR].fake.media, request.match_info["media_id"])


async def _messages(request: web.Request) -> web.Response:
    user = request.query.get("user", "")
    return web.json_response({"messages": request.app[SIMULATOR].conversation(user)})


async def _rep_page(_request: web.Request) -> web.Response:
    return web.Response(text=REP_PAGE.read_text(encoding="utf-8"), content_type="text/html")


async def _rep_inbox(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIMULATOR].rep_inbox(request.query.get("rep", "")))


async def _rep_say(request: web.Request) -> web.Response:
    data = await request.json()
    rep, text = str(data.get("rep") or "").strip()[:64], str(data.get("text") or "").strip()[:2000]
    if not rep or not text:
        return web.json_response({"error": "need rep and text"}, status=400)
    status = await request.app[SIMULATOR].rep_says(str(request.url.origin()), rep, text)
    return web.json_response({"callback_status": status})


async def _rep_kf(request: web.Request) -> web.Response:
    """The rep answers a kf customer they serve (action "answer", with text) or ends the session ("end")."""
    simulator, data = request.app[SIMULATOR], await request.json()
    rep, user = str(data.get("rep") or "").strip()[:64], str(data.get("user") or "").strip()[:64]
    text, action = str(data.get("text") or "").strip()[:2000], data.get("action")
    open_kfid = str(data.get("open_kfid") or SANDBOX_KF_ACCOUNT)[:64]
    if not rep or not user or action not in ("answer", "end") or (action == "answer" and not text):
        return web.json_response({"error": "need rep, user and action answer (with text) or end"}, status=400)
    bot_url = str(request.url.origin())
    try:
        if action == "answer":
            status = await simulator.rep_answers(bot_url, rep, user, text, open_kfid)
        else:
            status = await simulator.rep_ends(bot_url, rep, user, open_kfid)
    except KfSessionError as exc:
        return web.json_response({"error": str(exc)}, status=409)
    return web.json_response({"callback_status": status})
