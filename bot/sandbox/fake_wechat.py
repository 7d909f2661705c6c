"""A local stand-in for the WeCom and Official Account APIs, speaking their protocol and error codes.

The sandbox and the tests point `wecom.api_base` / `oa.api_base` at it. It issues and
checks access tokens (42001 once expired, 40014 when unknown), rate-limits on demand
(45009), can be told to fail the next calls (`fail_next`), to fail or answer late for a while
(`fail_for`, `slow_for`: the soak's bursts and slow spells), refuses used welcome codes, and
records every message the bot sends so a test or the sandbox page can read them back. The
微信客服 part (kf/sync_msg with real cursors, sessions and their states, a rep's messages from
the kf workspace) is `fake_kf.FakeKf`, which this class extends. It keeps a corp tag
library (`externalcontact/get_corp_tag_list`, `add_corp_tag`) and the tags each rep put
on each contact (`mark_tag`), so a test can read a customer's tags on WeCom's side.
Entry points: contact ways (`externalcontact/add_contact_way`, `update_contact_way`,
`del_contact_way`, kept in `contact_ways` by config_id), kf links (`kf/add_contact_way`,
kept in `kf_links`) and OA parametric QR codes (`qrcode/create`, kept in `qr_codes` by ticket).
Departed reps: `add_unassigned` fills `externalcontact/get_unassigned_list`, and
`externalcontact/resigned/transfer_customer` records what it moved in `transfers`.
What `scrm doctor` asks of an app (`agent/get`, `get_follow_user_list`, and the refusal of an
untrusted IP: 60020, OA 40164) is `fake_apps.FakeApps`; `kf/account/list` is in `fake_kf`.
Temporary media (`media/upload`, `media/get`, 3 days' life, `add_media`) are `fake_media.FakeMediaStore`.
Customer groups (`externalcontact/groupchat/*`: list, get, join ways, transfers; group welcome templates) and
what happens in them (joins, leaves, the change_external_chat callbacks) are `fake_groupchats.FakeGroupChats`.
The platforms' sending quotas and limits (kf and OA send grants, event codes' 20 s, text sizes,
reminders, 10,000 calls a minute per API: `refused`, `allowance`) are `fake_quotas.FakeQuotas`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.sandbox.fake_apps import FakeApps
from bot.sandbox.fake_groupchats import FakeGroupChats
from bot.sandbox.fake_groupmsg import FakeGroupMessages
from bot.sandbox.fake_kf import FakeKf, Sent
from bot.sandbox.fake_media import FakeMediaStore
from bot.sandbox.fake_quotas import ApiRefusal, FakeQuotas, truncated_app_text

__all__ = ["FakeWeChat", "Sent"]

TOKEN_TTL_S = 7200
CONTACT_WAY_MAX_USERS = 100
UNASSIGNED_PAGE_MAX = 1000  # get_unassigned_list: page_size defaults to and is at most 1000
TRANSFER_MAX = 100  # resigned/transfer_customer: at most 100 customers a call
MEDIA_SENDS = frozenset({"kf/send_msg", "message/custom/send", "message/send"})  # may carry an uploaded media_id
QR_ACTIONS = {"QR_SCENE", "QR_STR_SCENE", "QR_LIMIT_SCENE", "QR_LIMIT_STR_SCENE"}


@dataclass
class Failure:
    """The next `remaining` calls to `path` ("*": any) fail; with `until`, every call until then instead.
    With `delay_s` the call is not refused but answered that much later (after it was carried out)."""

    path: str
    errcode: int = 0
    http_status: int = 200
    remaining: int = 1
    until: float = 0.0  # time.monotonic(): a window, not a count
    delay_s: float = 0.0

    def applies(self, path: str, now: float) -> bool:
        if self.path not in (path, "*"):
            return False
        return now < self.until if self.until else self.remaining > 0


class FakeWeChat(FakeKf, FakeGroupMessages, FakeApps, FakeGroupChats, FakeMediaStore, FakeQuotas):
    def __init__(self, corp_id: str, wecom_secrets: list[str], oa_app_id: str, oa_secret: str) -> None:
        super().__init__()
        self.init_quotas()
        self.corp_id = corp_id
        self.wecom_secrets = set(wecom_secrets)
        self.oa_app_id = oa_app_id
        self.oa_secret = oa_secret
        self.tokens: dict[str, float] = {}
        self.token_requests = 0
        self.token_requests_by: dict[str, int] = {}  # by secret: which credential asked
        self.calls: list[str] = []
        self.failures: list[Failure] = []
        self.contacts: dict[str, dict[str, str]] = {}
        self.oa_users: dict[str, dict[str, str]] = {}
        self.corp_tag_groups: list[dict[str, Any]] = []  # as get_corp_tag_list answers them
        self.contact_tags: dict[tuple[str, str], set[str]] = {}  # (userid, external_userid) -> tag ids
        self.follow_users: dict[str, set[str]] = {}  # external_userid -> reps who added them, when known
        self.contact_ways: dict[str, dict[str, Any]] = {}  # config_id -> the contact way as last set
        self.qr_codes: dict[str, dict[str, Any]] = {}  # ticket -> the qrcode/create body
        self.unassigned: list[dict[str, Any]] = []  # get_unassigned_list: customers of reps who left
        self.unassigned_page_limit = UNASSIGNED_PAGE_MAX  # tests lower it to exercise is_last
        self.transfers: list[dict[str, str]] = []  # resigned/transfer_customer: handover, takeover, customer
        self.init_group_messages()
        self.init_apps()
        self.init_media()
        self.init_group_chats()

    # --- what a test or the sandbox page does --------------------------------------------
    def fail_next(self, path: str, errcode: int = 0, http_status: int = 200, times: int = 1) -> None:
        """Make the next `times` calls to `path` fail with `errcode` (or an HTTP status)."""
        self.failures.append(Failure(path, errcode, http_status, times))

    def fail_for(self, seconds: float, errcode: int = 0, http_status: int = 200, path: str = "*") -> None:
        """Every call to `path` ("*": every API) fails with `errcode` (or an HTTP status) for `seconds`."""
        self.failures.append(Failure(path, errcode, http_status, 0, time.monotonic() + seconds))

    def slow_for(self, seconds: float, delay_s: float, path: str = "*") -> None:
        """For `seconds`, calls are carried out but answered `delay_s` late, as by an API in trouble."""
        self.failures.append(Failure(path, 0, 200, 0, time.monotonic() + seconds, delay_s))

    def expire_tokens(self) -> None:
        """Every token issued so far now answers 42001, as after its 7,200 s."""
        self.tokens = {token: 0.0 for token in self.tokens}

    def add_follow_user(self, external_userid: str, userid: str) -> None:
        """`userid` has the customer as a contact; once any is known, mark_tag checks it (84061)."""
        self.follow_users.setdefault(external_userid, set()).add(userid)

    def create_corp_tag(self, group_name: str, name: str) -> str:
        """A corp tag an admin made in the WeCom console; returns its id."""
        return self._new_tags(self._group(group_name), [{"name": name}])[0]["id"]

    def corp_tag_names(self, external_userid: str, userid: str | None = None) -> set[str]:
        """The names of the corp tags on a contact (by one rep, or by any)."""
        names = {tag["id"]: tag["name"] for group in self.corp_tag_groups for tag in group["tag"]}
        return {
            names[tag_id]
            for (rep, contact), tag_ids in self.contact_tags.items()
            if contact == external_userid and userid in (None, rep)
            for tag_id in tag_ids
        }

    def add_unassigned(self, handover_userid: str, external_userid: str, dimission_time: int = 0) -> None:
        """A customer of a rep who left, as get_unassigned_list will list them until transferred."""
        self.unassigned.append({"handover_userid": handover_userid, "external_userid": external_userid,
                                "dimission_time": dimission_time or int(time.time())})

    # --- the HTTP side ---------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        routes = {
            "gettoken": self.wecom_gettoken,
            "token": self.oa_gettoken,
            **self.app_routes(),
            **self.kf_routes(),
            **self.group_message_routes(),
            **self.media_routes(),
            **self.group_chat_routes(),
            "message/send": self.app_message_send,
            "externalcontact/send_welcome_msg": self.send_welcome_msg,
            "externalcontact/get": self.externalcontact_get,
            "externalcontact/get_corp_tag_list": self.get_corp_tag_list,
            "externalcontact/add_corp_tag": self.add_corp_tag,
            "externalcontact/mark_tag": self.mark_tag,
            "externalcontact/add_contact_way": self.add_contact_way,
            "externalcontact/update_contact_way": self.update_contact_way,
            "externalcontact/del_contact_way": self.del_contact_way,
            "externalcontact/get_unassigned_list": self.get_unassigned_list,
            "externalcontact/resigned/transfer_customer": self.resigned_transfer_customer,
            "message/custom/send": self.oa_custom_send,
            "qrcode/create": self.oa_qrcode_create,
            "user/info": self.oa_user_info,
        }
        for path, handler in routes.items():
            app.router.add_route("*", f"/cgi-bin/{path}", self._guarded(path, self.from_trusted_ip(handler)))
        self.add_media_link_route(app)
        return app

    def _guarded(self, path: str, handler: Any) -> Any:
        async def guarded(request: web.Request) -> web.Response:
            self.calls.append(path)
            if self.over_api_rate(path):  # 10,000 a minute, 150,000 an hour per API (document 90312)
                return _error(45009, "api freq out of limit")  # WeCom's words for it
            now = time.monotonic()
            failure = next((f for f in self.failures if f.applies(path, now)), None)
            if failure is not None and failure.delay_s:
                response = await self._answer(path, handler, request)  # carried out now…
                await asyncio.sleep(failure.delay_s)  # …answered late: a caller that gave up never knows
                return response
            if failure is not None:
                if not failure.until:
                    failure.remaining -= 1
                if failure.http_status != 200:
                    return web.Response(status=failure.http_status, text="upstream error")
                return _error(failure.errcode)
            return await self._answer(path, handler, request)

        return guarded

    async def _answer(self, path: str, handler: Any, request: web.Request) -> web.Response:
        if path not in ("gettoken", "token"):
            refusal = self._check_token(request.query.get("access_token", ""))
            if refusal:
                return _error(refusal)
        form = request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded")
        body = await request.json() if request.method == "POST" and request.can_read_body and not form else {}
        try:
            if path in MEDIA_SENDS:
                self.check_sent_media(body)
            answer = await handler(request, body)
        except ApiRefusal as refused:
            return _error(refused.errcode, refused.errmsg)
        return _ok(**answer) if isinstance(answer, dict) else answer

    def _check_token(self, token: str) -> int:
        if token not in self.tokens:
            return 40014
        if self.tokens[token] < time.time():
            return 42001
        return 0

    def _issue_token(self, secret: str) -> web.Response:
        self.token_requests += 1
        self.token_requests_by[secret] = self.token_requests_by.get(secret, 0) + 1
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + TOKEN_TTL_S
        return _ok(access_token=token, expires_in=TOKEN_TTL_S)

    async def wecom_token(self, request: web.Request, _body: dict[str, Any]) -> web.Response:
        if request.query.get("corpid") != self.corp_id:
            return _error(40013)
        if request.query.get("corpsecret") not in self.wecom_secrets:
            return _error(40001)
        return self._issue_token(request.query["corpsecret"])

    async def oa_token(self, request: web.Request, _body: dict[str, Any]) -> web.Response:
        if request.query.get("appid") != self.oa_app_id or request.query.get("secret") != self.oa_secret:
            return _error(40125 if request.query.get("appid") == self.oa_app_id else 40013)
        return self._issue_token(self.oa_secret)

    async def app_message_send(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        if not body.get("touser"):
            return _error(40003)
        return _ok(msgid=self._deliver("message/send", truncated_app_text(body)))  # text past 2048 bytes: cut

    async def send_welcome_msg(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        code = str(body.get("welcome_code", ""))
        user = self.take_code(code)
        if user is None:  # used, or its 20 s are over (document 92137)
            raise self.refuse("externalcontact/send_welcome_msg", 41051, code)
        return _ok(msgid=self._deliver("externalcontact/send_welcome_msg", {**body, "_to": user}))

    async def externalcontact_get(self, request: web.Request, _body: dict[str, Any]) -> web.Response:
        contact = self.contacts.get(request.query.get("external_userid", ""))
        if contact is None:
            return _error(84061)  # not an external contact of this corp
        return _ok(external_contact={"external_userid": request.query["external_userid"], **contact})

    async def get_corp_tag_list(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        """All groups; or only the tags in `tag_id`; or only the groups in `group_id`."""
        tag_ids, group_ids = set(body.get("tag_id") or []), set(body.get("group_id") or [])
        groups = []
        for group in self.corp_tag_groups:
            if tag_ids:
                tags = [tag for tag in group["tag"] if tag["id"] in tag_ids]
                if tags:
                    groups.append({**group, "tag": tags})
            elif not group_ids or group["group_id"] in group_ids:
                groups.append(group)
        return _ok(tag_group=groups)

    async def add_corp_tag(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        """Into `group_id`, or the group named `group_name` (created when new); 40071 for a name taken."""
        tags = body.get("tag") or []
        if not tags or any(not 0 < len(str(tag.get("name", ""))) <= 30 for tag in tags):
            return _error(40058)
        if body.get("group_id"):
            group = next((g for g in self.corp_tag_groups if g["group_id"] == body["group_id"]), None)
            if group is None:
                return _error(40068)
        elif body.get("group_name"):
            group = self._group(str(body["group_name"]))
        else:
            return _error(40058)
        taken = {tag["name"] for tag in group["tag"]}
        if any(tag["name"] in taken for tag in tags) or len({tag["name"] for tag in tags}) < len(tags):
            return _error(40071)
        return _ok(tag_group={**group, "tag": self._new_tags(group, tags)})

    async def mark_tag(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        userid, contact = str(body.get("userid") or ""), str(body.get("external_userid") or "")
        add, remove = list(body.get("add_tag") or []), list(body.get("remove_tag") or [])
        if not userid or not contact:
            return _error(40003)
        if not add and not remove:
            return _error(40058)  # add_tag and remove_tag cannot both be empty
        known = {tag["id"] for group in self.corp_tag_groups for tag in group["tag"]}
        if any(tag_id not in known for tag_id in add + remove):
            return _error(40068)
        if contact in self.follow_users and userid not in self.follow_users[contact]:
            return _error(84061)
        marked = self.contact_tags.setdefault((userid, contact), set())
        marked.update(add)
        marked.difference_update(remove)
        return _ok()

    async def get_unassigned_list(self, _request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        """Customers of departed reps, `page_size` (≤ 1000) at a time from `cursor`; next_cursor "" at the end."""
        size = int(body.get("page_size") or UNASSIGNED_PAGE_MAX)
        cursor = str(body.get("cursor") or "")
        if size < 0 or (cursor and not (cursor.startswith("uc") and cursor[2:].isdigit())):
            raise ApiRefusal(40058)
        start = int(cursor[2:]) if cursor else 0
        end = start + min(size or UNASSIGNED_PAGE_MAX, UNASSIGNED_PAGE_MAX, self.unassigned_page_limit)
        last = end >= len(self.unassigned)
        return {"info": self.unassigned[start:end], "is_last": last, "next_cursor": "" if last else f"uc{end}"}

    async def resigned_transfer_customer(self, _request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        """Up to 100 of a departed rep's customers to another rep; an errcode per customer (0: started)."""
        handover, takeover = str(body.get("handover_userid") or ""), str(body.get("takeover_userid") or "")
        customers = body.get("external_userid")
        if not handover or not takeover:
            raise ApiRefusal(40003)
        if not isinstance(customers, list) or not customers or len(customers) > TRANSFER_MAX:
            raise ApiRefusal(40058)
        results = [{"external_userid": str(c), "errcode": self._transfer(handover, takeover, str(c))} for c in customers]
        return {"customer": results}

    def _transfer(self, handover: str, takeover: str, contact: str) -> int:
        """WeCom completes a transfer within 24 h, this fake at once: 84061 not the handover's customer, 40096 unknown."""
        entry = next((u for u in self.unassigned if (u["handover_userid"], u["external_userid"]) == (handover, contact)),
                     None)
        if entry is None:
            known = contact in self.follow_users or any(u["external_userid"] == contact for u in self.unassigned)
            return 84061 if known else 40096
        self.unassigned.remove(entry)
        self.transfers.append({"handover_userid": handover, "takeover_userid": takeover, "external_userid": contact})
        if contact in self.follow_users:
            self.follow_users[contact].add(takeover)
        return 0

    def _group(self, group_name: str) -> dict[str, Any]:
        """The group with this name, created when new."""
        for group in self.corp_tag_groups:
            if group["group_name"] == group_name:
                return group
        group = {"group_id": f"etG{next(self._ids)}", "group_name": group_name, "create_time": int(time.time()),
                 "order": 0, "tag": []}
        self.corp_tag_groups.append(group)
        return group

    def _new_tags(self, group: dict[str, Any], tags: list[dict[str, Any]]) -> list[dict[str, Any]]:
        created = [
            {"id": f"etT{next(self._ids)}", "name": str(tag["name"]), "create_time": int(time.time()),
             "order": int(tag.get("order", 0))}
            for tag in tags
        ]
        group["tag"].extend(created)
        return created

    async def add_contact_way(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        """「联系我」: type 1 (one rep) or 2 (several), scene 1 (mini program) or 2 (QR), state ≤ 30 characters."""
        if "type" not in body or "scene" not in body:
            return _error(41037 if "type" not in body else 41038)
        if body["type"] not in (1, 2):
            return _error(41039)
        if body["scene"] not in (1, 2):
            return _error(41040)
        users = body.get("user")
        refusal = _contact_way_users(users, single=body["type"] == 1)
        if refusal:
            return _error(refusal)
        if len(str(body.get("state") or "")) > 30 or len(str(body.get("remark") or "")) > 30:
            return _error(40058)
        config_id = secrets.token_hex(16)
        qr_code = f"https://wework.qpic.cn/wwpic/{secrets.token_hex(8)}/0" if body["scene"] == 2 else ""
        self.contact_ways[config_id] = {**body, "config_id": config_id, "user": list(users or []), "qr_code": qr_code}
        return _ok(config_id=config_id, **({"qr_code": qr_code} if qr_code else {}))

    async def update_contact_way(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        way = self._contact_way(body)
        if isinstance(way, web.Response):
            return way
        if "user" in body:
            refusal = _contact_way_users(body["user"], single=way["type"] == 1)
            if refusal:
                return _error(refusal)
        if len(str(body.get("state", way.get("state", "")))) > 30:
            return _error(40058)
        way.update({key: value for key, value in body.items() if key != "config_id"})
        return _ok()

    async def del_contact_way(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        way = self._contact_way(body)
        if isinstance(way, web.Response):
            return way
        del self.contact_ways[way["config_id"]]
        return _ok()

    def _contact_way(self, body: dict[str, Any]) -> dict[str, Any] | web.Response:
        config_id = str(body.get("config_id") or "")
        if not config_id:
            return _error(41043)
        return self.contact_ways.get(config_id) or _error(41044)

    async def oa_custom_send(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        if not body.get("touser"):
            return _error(40003)
        self.use_oa_grant(str(body["touser"]))  # the customer's 2023-06 grants: 45015 / 45047
        return _ok(msgid=self._deliver("message/custom/send", body))

    async def oa_qrcode_create(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        """Temporary or permanent; the *_STR_SCENE kinds carry `scene_str` (1–64 characters), the others `scene_id`."""
        action = str(body.get("action_name") or "")
        scene = (body.get("action_info") or {}).get("scene") or {}
        if action not in QR_ACTIONS or not scene:
            return _error(40053)
        if action.endswith("STR_SCENE") and not 0 < len(str(scene.get("scene_str") or "")) <= 64:
            return _error(40053)
        if not action.endswith("STR_SCENE") and not isinstance(scene.get("scene_id"), int):
            return _error(40053)
        ticket = secrets.token_urlsafe(12)
        self.qr_codes[ticket] = body
        return web.json_response(
            {"ticket": ticket, "expire_seconds": body.get("expire_seconds", 0), "url": f"http://weixin.qq.com/q/{ticket}"}
        )

    async def oa_user_info(self, request: web.Request, _body: dict[str, Any]) -> web.Response:
        openid = request.query.get("openid", "")
        user = self.oa_users.get(openid)
        if user is None:
            return web.json_response({"subscribe": 0, "openid": openid})
        return web.json_response({"subscribe": 1, "openid": openid, **user})


def _contact_way_users(users: Any, single: bool) -> int:
    """The errcode for a contact way's user list (0: fine): type 1 takes exactly one rep."""
    if not isinstance(users, list) or not users:
        return 40058
    if any(not isinstance(user, str) or not 0 < len(user) <= 64 for user in users):
        return 40003
    if (single and len(users) != 1) or len(users) > CONTACT_WAY_MAX_USERS:
        return 41041 if len(users) > CONTACT_WAY_MAX_USERS else 40058
    return 0


def _ok(**data: Any) -> web.Response:
    return web.json_response({"errcode": 0, "errmsg": "ok", **data})


ERRMSG = {
    -1: "system busy",
    40001: "invalid credential",
    40003: "invalid openid or userid",
    40013: "invalid corpid or appid",
    40014: "invalid access_token",
    40053: "invalid action_info",
    40058: "invalid parameter",
    40068: "invalid tagid",
    40071: "tag name already exists",
    40056: "invalid agentid",
    40125: "invalid appsecret",
    40164: "invalid ip, not in whitelist",
    41011: "missing agentid",
    48002: "api forbidden",
    60020: "not allow to access from your ip",
    301002: "not allow operate another agent with this accesstoken.",
    41037: "missing contact way type",
    41038: "missing contact way scene",
    41039: "invalid contact way type",
    41040: "invalid contact way scene",
    41041: "contact way user count exceeds the limit",
    41043: "missing contact way config_id",
    41044: "invalid contact way config_id",
    41051: "externaluser has started chatting",  # document 92137's words for a used or expired welcome code
    42001: "access_token expired",
    45009: "reach max api daily quota limit",
    45015: "response out of time limit or subscription is canceled",
    40096: "invalid external userid",
    84061: "not external contact",
    95000: "invalid open_kfid",
    95014: "user is not servicer",
    95016: "service state transition not allowed",
    95018: "send msg session status invalid",
}


def _error(errcode: int, errmsg: str = "") -> web.Response:
    return web.json_response({"errcode": errcode, "errmsg": errmsg or ERRMSG.get(errcode, "error")})
