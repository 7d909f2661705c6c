"""A local stand-in for the WeCom and Official Account APIs, speaking their protocol and error codes.

The sandbox and the tests point `wecom.api_base` / `oa.api_base` at it. It issues and
checks access tokens (42001 once expired, 40014 when unknown), rate-limits on demand
(45009), can be told to fail the next calls (`fail_next`), keeps kf messages for
`kf/sync_msg` with real cursors, refuses used welcome codes, and records every message
the bot sends so a test or the sandbox page can read them back. It keeps a corp tag
library (`externalcontact/get_corp_tag_list`, `add_corp_tag`) and the tags each rep put
on each contact (`mark_tag`), so a test can read a customer's tags on WeCom's side.
Entry points: contact ways (`externalcontact/add_contact_way`, `update_contact_way`,
`del_contact_way`, kept in `contact_ways` by config_id), kf links (`kf/add_contact_way`,
kept in `kf_links`) and OA parametric QR codes (`qrcode/create`, kept in `qr_codes` by ticket).
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN_TTL_S = 7200
CONTACT_WAY_MAX_USERS = 100
KF_SCENE = re.compile(r"[0-9a-zA-Z_-]{0,32}")
QR_ACTIONS = {"QR_SCENE", "QR_STR_SCENE", "QR_LIMIT_SCENE", "QR_LIMIT_STR_SCENE"}


@dataclass
class Failure:
    path: str
    errcode: int = 0
    http_status: int = 200
    remaining: int = 1


@dataclass
class Sent:
    path: str
    body: dict[str, Any]
    at: float = field(default_factory=time.time)

    @property
    def to(self) -> str:
        return str(self.body.get("touser") or self.body.get("code") or self.body.get("welcome_code") or "")

    @property
    def text(self) -> str:
        for key in ("text", "msgmenu", "textcard"):
            part = self.body.get(key)
            if isinstance(part, dict):
                return str(part.get("content") or part.get("head_content") or part.get("title") or "")
        return ""


class FakeWeChat:
    def __init__(self, corp_id: str, wecom_secrets: list[str], oa_app_id: str, oa_secret: str) -> None:
        self.corp_id = corp_id
        self.wecom_secrets = set(wecom_secrets)
        self.oa_app_id = oa_app_id
        self.oa_secret = oa_secret
        self.tokens: dict[str, float] = {}
        self.token_requests = 0
        self.token_requests_by: dict[str, int] = {}  # by secret: which credential asked
        self.calls: list[str] = []
        self.failures: list[Failure] = []
        self.kf_messages: dict[str, list[dict[str, Any]]] = {}
        self.sent: list[Sent] = []
        self.seen_msgids: set[str] = set()
        self.welcome_codes: dict[str, str] = {}  # code -> external_userid, until used
        self.contacts: dict[str, dict[str, str]] = {}
        self.oa_users: dict[str, dict[str, str]] = {}
        self.service_states: dict[tuple[str, str], int] = {}
        self.corp_tag_groups: list[dict[str, Any]] = []  # as get_corp_tag_list answers them
        self.contact_tags: dict[tuple[str, str], set[str]] = {}  # (userid, external_userid) -> tag ids
        self.follow_users: dict[str, set[str]] = {}  # external_userid -> reps who added them, when known
        self.contact_ways: dict[str, dict[str, Any]] = {}  # config_id -> the contact way as last set
        self.kf_links: list[dict[str, Any]] = []  # kf/add_contact_way: open_kfid, scene, url
        self.qr_codes: dict[str, dict[str, Any]] = {}  # ticket -> the qrcode/create body
        self.page_limit = 1000  # kf/sync_msg's largest page; tests lower it to exercise has_more
        self._ids = itertools.count(1)

    # --- what a test or the sandbox page does --------------------------------------------
    def fail_next(self, path: str, errcode: int = 0, http_status: int = 200, times: int = 1) -> None:
        """Make the next `times` calls to `path` fail with `errcode` (or an HTTP status)."""
        self.failures.append(Failure(path, errcode, http_status, times))

    def expire_tokens(self) -> None:
        """Every token issued so far now answers 42001, as after its 7,200 s."""
        self.tokens = {token: 0.0 for token in self.tokens}

    def add_kf_text(self, open_kfid: str, external_userid: str, text: str, menu_id: str = "") -> str:
        content = {"content": text, **({"menu_id": menu_id} if menu_id else {})}
        return self._add_kf(open_kfid, {"origin": 3, "external_userid": external_userid, "msgtype": "text", "text": content})

    def add_kf_enter_session(self, open_kfid: str, external_userid: str, scene_param: str = "") -> str:
        code = self.issue_welcome_code(external_userid)
        event = {
            "event_type": "enter_session",
            "open_kfid": open_kfid,
            "external_userid": external_userid,
            "scene": "sandbox",
            "scene_param": scene_param,
            "welcome_code": code,
        }
        self._add_kf(open_kfid, {"origin": 4, "msgtype": "event", "event": event})
        return code

    def issue_welcome_code(self, external_userid: str) -> str:
        code = secrets.token_urlsafe(16)
        self.welcome_codes[code] = external_userid
        return code

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

    def messages_to(self, user: str) -> list[Sent]:
        return [sent for sent in self.sent if sent.to == user or sent.body.get("_to") == user]

    # --- the HTTP side ---------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        routes = {
            "gettoken": self.wecom_token,
            "token": self.oa_token,
            "kf/sync_msg": self.kf_sync_msg,
            "kf/send_msg": self.kf_send_msg,
            "kf/send_msg_on_event": self.kf_send_msg_on_event,
            "kf/service_state/trans": self.kf_service_state_trans,
            "message/send": self.app_message_send,
            "externalcontact/send_welcome_msg": self.send_welcome_msg,
            "externalcontact/get": self.externalcontact_get,
            "externalcontact/get_corp_tag_list": self.get_corp_tag_list,
            "externalcontact/add_corp_tag": self.add_corp_tag,
            "externalcontact/mark_tag": self.mark_tag,
            "externalcontact/add_contact_way": self.add_contact_way,
            "externalcontact/update_contact_way": self.update_contact_way,
            "externalcontact/del_contact_way": self.del_contact_way,
            "kf/add_contact_way": self.kf_add_contact_way,
            "message/custom/send": self.oa_custom_send,
            "qrcode/create": self.oa_qrcode_create,
            "user/info": self.oa_user_info,
        }
        for path, handler in routes.items():
            app.router.add_route("*", f"/cgi-bin/{path}", self._guarded(path, handler))
        return app

    def _guarded(self, path: str, handler: Any) -> Any:
        async def guarded(request: web.Request) -> web.Response:
            self.calls.append(path)
            failure = next((f for f in self.failures if f.path == path and f.remaining > 0), None)
            if failure is not None:
                failure.remaining -= 1
                if failure.http_status != 200:
                    return web.Response(status=failure.http_status, text="upstream error")
                return _error(failure.errcode)
            if path not in ("gettoken", "token"):
                refusal = self._check_token(request.query.get("access_token", ""))
                if refusal:
                    return _error(refusal)
            body = await request.json() if request.method == "POST" and request.can_read_body else {}
            return await handler(request, body)

        return guarded

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

    async def kf_sync_msg(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        messages = self.kf_messages.get(str(body.get("open_kfid", "")), [])
        start = int(body.get("cursor") or 0)
        limit = min(self.page_limit, int(body.get("limit") or 1000))
        page = messages[start : start + limit]
        end = start + len(page)
        return _ok(next_cursor=str(end), has_more=int(end < len(messages)), msg_list=page)

    async def kf_send_msg(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        if not body.get("touser") or not body.get("open_kfid"):
            return _error(40003)
        return self._deliver("kf/send_msg", body)

    async def kf_send_msg_on_event(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        user = self.welcome_codes.pop(str(body.get("code", "")), None)
        if user is None:
            return _error(95018)  # the code is unknown, expired or already used
        return self._deliver("kf/send_msg_on_event", {**body, "_to": user})

    async def kf_service_state_trans(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        key = (str(body.get("open_kfid")), str(body.get("external_userid")))
        self.service_states[key] = int(body.get("service_state", 0))
        return _ok(msg_code="")

    async def app_message_send(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        if not body.get("touser"):
            return _error(40003)
        return self._deliver("message/send", body)

    async def send_welcome_msg(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        user = self.welcome_codes.pop(str(body.get("welcome_code", "")), None)
        if user is None:
            return _error(41051)  # the welcome code is used or its 20 s are over
        return self._deliver("externalcontact/send_welcome_msg", {**body, "_to": user})

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

    async def kf_add_contact_way(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        """A link to a kf account; `scene` ≤ 32 bytes of [0-9a-zA-Z_-]."""
        open_kfid = str(body.get("open_kfid") or "")
        if not open_kfid:
            return _error(95000)
        scene = str(body.get("scene") or "")
        if not KF_SCENE.fullmatch(scene):
            return _error(40058)
        url = f"https://work.weixin.qq.com/kfid/{open_kfid}?enc_scene={secrets.token_urlsafe(9)}"
        self.kf_links.append({"open_kfid": open_kfid, "scene": scene, "url": url})
        return _ok(url=url)

    async def oa_custom_send(self, _request: web.Request, body: dict[str, Any]) -> web.Response:
        if not body.get("touser"):
            return _error(40003)
        return self._deliver("message/custom/send", body)

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

    def _add_kf(self, open_kfid: str, item: dict[str, Any]) -> str:
        msgid = f"fake{next(self._ids)}"
        self.kf_messages.setdefault(open_kfid, []).append(
            {"msgid": msgid, "open_kfid": open_kfid, "send_time": int(time.time()), **item}
        )
        return msgid

    def _deliver(self, path: str, body: dict[str, Any]) -> web.Response:
        msgid = str(body.get("msgid") or f"auto{next(self._ids)}")
        if msgid not in self.seen_msgids:  # a repeated msgid is acknowledged, not delivered again
            self.seen_msgids.add(msgid)
            self.sent.append(Sent(path, body))
        return _ok(msgid=msgid)


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
    40125: "invalid appsecret",
    41037: "missing contact way type",
    41038: "missing contact way scene",
    41039: "invalid contact way type",
    41040: "invalid contact way scene",
    41041: "contact way user count exceeds the limit",
    41043: "missing contact way config_id",
    41044: "invalid contact way config_id",
    41051: "welcome code expired or used",
    42001: "access_token expired",
    45009: "reach max api daily quota limit",
    45015: "response out of time limit or subscription is canceled",
    84061: "not external contact",
    95000: "invalid open_kfid",
    95018: "send msg code is invalid",
}


def _error(errcode: int) -> web.Response:
    return web.json_response({"errcode": errcode, "errmsg": ERRMSG.get(errcode, "error")})
