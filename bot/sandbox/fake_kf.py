"""微信客服 (kf) on WeCom's side, for the fake API: sessions, their states, and the messages in them.

WeCom keeps one session per (open_kfid, external_userid), in one of five states:

    0 new (未处理)   1 the bot (智能助手)   2 queued (待接入池)   3 a rep (人工接待)   4 ended (已结束/未开始)

`kf/service_state/trans` moves it only 0→1/2/3/4, 1→1/2/3/4, 2→2/3/4, 3→3/4 and never out
of 4 (errcode 95016); state 3 needs a `servicer_userid` (95014). `kf/send_msg` writes only in
states 0 and 1 (95018, "send msg session status invalid", what WeCom answers while a rep
serves). A session this fake has not seen is with the bot (1). A rep answers in WeCom's kf
workspace (`add_kf_servicer_text`: an origin-5 message in `kf/sync_msg`, shown to the
customer) or ends the session there (`end_kf_session`: state 4 and a `session_status_change`
event, change_type 3); the customer's next message opens a new session (0). Every move is
kept in `kf_state_moves`. Handlers answer with the reply's fields or raise `ApiRefusal`.

The sending rules (`fake_quotas.FakeQuotas`, which this class extends): each customer message
grants 5 kf/send_msg within 48 h (95002 / 95001 past them), a text is at most 2048 bytes
(45002), and an event code is single use and lives 20 s or 48 h by its kind (95018 after).

`kf/sync_msg` cursors are opaque, as WeCom's are, and mark a point in time (the message's
arrival, in nanoseconds), not an index into this process's list: a bot that saved a cursor
from an earlier run of the sandbox goes on reading from it after a restart.

`kf/account/list` lists the accounts made with `add_kf_account`, each with `manage_privilege`:
whether the calling app may serve it (WeCom's "可管理的客服账号": an account an admin has not
handed to the API's app is listed with false, and the bot never hears its customers).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bot.sandbox.fake_quotas import CODE_LONG_S, CODE_SHORT_S, ApiRefusal, FakeQuotas

__all__ = ["ApiRefusal", "FakeKf", "KfSessionError", "Sent"]

NEW, BOT, QUEUED, SERVED, ENDED = 0, 1, 2, 3, 4
KF_MOVES: dict[int, frozenset[int]] = {
    NEW: frozenset({BOT, QUEUED, SERVED, ENDED}),
    BOT: frozenset({BOT, QUEUED, SERVED, ENDED}),
    QUEUED: frozenset({QUEUED, SERVED, ENDED}),
    SERVED: frozenset({SERVED, ENDED}),
    ENDED: frozenset(),
}
KF_WRITABLE = frozenset({NEW, BOT})  # kf/send_msg: "新接入待处理" or "由智能助手接待" only
SESSION_ENDED = 3  # session_status_change.change_type: the rep ended the session
SERVICER_PATH = "kf/servicer"  # Sent.path of a rep's message from the kf workspace (not an API call)
KF_SCENE = re.compile(r"[0-9a-zA-Z_-]{0,32}")
KF_ACCOUNT_PAGE_MAX = 100  # kf/account/list: `limit` 1–100, 100 when not given


class KfSessionError(ValueError):
    """A rep acted on a kf session that is not theirs: WeCom's workspace would not let them."""


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


@dataclass(frozen=True)
class KfAccount:
    open_kfid: str
    name: str
    manage_privilege: bool = True  # handed to the API: the app may serve this account's customers


@dataclass(frozen=True)
class KfMove:
    open_kfid: str
    external_userid: str
    from_state: int
    to_state: int
    servicer_userid: str = ""
    by: str = "api"  # api (kf/service_state/trans), servicer (the kf workspace), customer (a new session)


class FakeKf(FakeQuotas):
    """The kf part of the fake API, and the record of what the bot sent (`sent`, `messages_to`)."""

    def __init__(self) -> None:
        self.kf_messages: dict[str, list[dict[str, Any]]] = {}  # open_kfid -> what kf/sync_msg returns
        self._kf_positions: dict[str, list[int]] = {}  # open_kfid -> each message's point in time (ns)
        self._last_position = 0
        self.sent: list[Sent] = []  # what the bot sent, in order
        self.servicer_sent: list[Sent] = []  # what reps wrote to kf customers in the workspace
        self.seen_msgids: set[str] = set()
        self.welcome_codes: dict[str, str] = {}  # code -> external_userid, until used (its time: code_times)
        self.kf_links: list[dict[str, Any]] = []  # kf/add_contact_way: open_kfid, scene, url
        self.service_states: dict[tuple[str, str], int] = {}  # (open_kfid, external_userid) -> state
        self.servicers: dict[tuple[str, str], str] = {}  # the rep of a session in state 3
        self.kf_state_moves: list[KfMove] = []
        self.kf_accounts: dict[str, KfAccount] = {}  # open_kfid -> the account, as kf/account/list shows it
        self.page_limit = 1000  # kf/sync_msg's largest page; tests lower it to exercise has_more
        self._ids = itertools.count(1)
        self._run = secrets.token_hex(3)  # this run of the fake: its msgids never repeat an earlier run's

    # --- what a test or the sandbox page does --------------------------------------------
    def add_kf_text(self, open_kfid: str, external_userid: str, text: str, menu_id: str = "") -> str:
        """The customer writes (or clicks a menu item); after an ended session this opens a new one (state 0).
        Either way the bot may send them 5 messages in the next 48 h."""
        if self.kf_state(open_kfid, external_userid)[0] == ENDED:
            self._move(open_kfid, external_userid, NEW, by="customer")
        self.grant_kf(open_kfid, external_userid)
        content = {"content": text, **({"menu_id": menu_id} if menu_id else {})}
        return self._add_kf(open_kfid, {"origin": 3, "external_userid": external_userid, "msgtype": "text", "text": content})

    def add_kf_media(self, open_kfid: str, external_userid: str, msgtype: str, body: dict[str, Any]) -> str:
        """The customer sends anything but text (an origin-3 item of `msgtype`, `body` under that key, as
        kf/sync_msg returns it): like a text, it opens a new session after an ended one and grants 5 sends."""
        if self.kf_state(open_kfid, external_userid)[0] == ENDED:
            self._move(open_kfid, external_userid, NEW, by="customer")
        self.grant_kf(open_kfid, external_userid)
        return self._add_kf(open_kfid, {"origin": 3, "external_userid": external_userid, "msgtype": msgtype,
                                        msgtype: body})

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

    def add_kf_servicer_text(self, open_kfid: str, external_userid: str, servicer_userid: str, text: str) -> str:
        """The rep serving the session answers in the kf workspace: origin 5 in sync_msg, and the customer sees it."""
        self._check_servicer(open_kfid, external_userid, servicer_userid)
        item = {"origin": 5, "external_userid": external_userid, "servicer_userid": servicer_userid,
                "msgtype": "text", "text": {"content": text}}
        msgid = self._add_kf(open_kfid, item)
        body = {"touser": external_userid, "open_kfid": open_kfid, "msgid": msgid, **item}
        self.servicer_sent.append(Sent(SERVICER_PATH, body))
        return msgid

    def add_kf_servicer_media(self, open_kfid: str, external_userid: str, servicer_userid: str, msgtype: str,
                              body: dict[str, Any]) -> str:
        """The serving rep sends a photo, a file… in the kf workspace (origin 5, `body` under `msgtype`)."""
        self._check_servicer(open_kfid, external_userid, servicer_userid)
        item = {"origin": 5, "external_userid": external_userid, "servicer_userid": servicer_userid,
                "msgtype": msgtype, msgtype: body}
        msgid = self._add_kf(open_kfid, item)
        self.servicer_sent.append(Sent(SERVICER_PATH, {"touser": external_userid, "open_kfid": open_kfid,
                                                       "msgid": msgid, **item}))
        return msgid

    def end_kf_session(self, open_kfid: str, external_userid: str, servicer_userid: str) -> str:
        """The rep ends the session in the workspace: state 4, and sync_msg carries session_status_change 3."""
        self._check_servicer(open_kfid, external_userid, servicer_userid)
        self._move(open_kfid, external_userid, ENDED, by="servicer")
        event = {
            "event_type": "session_status_change",
            "open_kfid": open_kfid,
            "external_userid": external_userid,
            "change_type": SESSION_ENDED,
            "old_servicer_userid": servicer_userid,
            "msg_code": self.issue_welcome_code(external_userid),  # for an end message by kf/send_msg_on_event
        }
        return self._add_kf(open_kfid, {"origin": 4, "msgtype": "event", "event": event})

    def add_kf_account(self, open_kfid: str, name: str = "", managed: bool = True) -> None:
        """A kf account made in the admin console; `managed=False`: not handed to the API (manage_privilege false)."""
        self.kf_accounts[open_kfid] = KfAccount(open_kfid, name or open_kfid, managed)

    def kf_state(self, open_kfid: str, external_userid: str) -> tuple[int, str]:
        """The session's state and, in state 3, its rep."""
        key = (open_kfid, external_userid)
        state = self.service_states.get(key, BOT)
        return state, self.servicers.get(key, "") if state == SERVED else ""

    def issue_welcome_code(self, external_userid: str, valid_s: float = CODE_SHORT_S) -> str:
        """A single-use event code (welcome_code, msg_code), usable for `valid_s` from now."""
        code = secrets.token_urlsafe(16)
        self.welcome_codes[code] = external_userid
        self.stamp_code(code, valid_s)
        return code

    def take_code(self, code: str) -> str | None:
        """The customer a live code was issued for, using it up; None when unknown, used or past its time."""
        user = self.welcome_codes.pop(code, None)
        alive = self.code_alive(code)
        return user if alive else None

    def messages_to(self, user: str) -> list[Sent]:
        """What `user` received: from the bot, and in kf from a rep in the workspace, oldest first."""
        received = [sent for sent in self.sent if sent.to == user or sent.body.get("_to") == user]
        from_reps = [sent for sent in self.servicer_sent if sent.to == user]
        return sorted(received + from_reps, key=lambda sent: sent.at) if from_reps else received

    # --- the HTTP side -------------------------------------------------------------------
    def kf_routes(self) -> dict[str, Any]:
        return {
            "kf/sync_msg": self.kf_sync_msg,
            "kf/send_msg": self.kf_send_msg,
            "kf/send_msg_on_event": self.kf_send_msg_on_event,
            "kf/service_state/get": self.kf_service_state_get,
            "kf/service_state/trans": self.kf_service_state_trans,
            "kf/add_contact_way": self.kf_add_contact_way,
            "kf/account/list": self.kf_account_list,
        }

    async def kf_sync_msg(self, _request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        open_kfid = str(body.get("open_kfid", ""))
        messages, positions = self.kf_messages.get(open_kfid, []), self._kf_positions.get(open_kfid, [])
        after = _position(str(body.get("cursor") or ""))
        start = bisect.bisect_right(positions, after)
        limit = min(self.page_limit, int(body.get("limit") or 1000))
        page = messages[start : start + limit]
        end = start + len(page)
        cursor = _cursor(positions[end - 1]) if page else str(body.get("cursor") or "")
        return {"next_cursor": cursor, "has_more": int(end < len(messages)), "msg_list": page}

    async def kf_send_msg(self, _request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        """The session state first (95018), then the size (45002), then the customer's grant (95002 / 95001);
        a resend of a delivered msgid is acknowledged without using the grant again."""
        open_kfid, user = _session_of(body, "touser")
        if self.kf_state(open_kfid, user)[0] not in KF_WRITABLE:
            raise self.refuse("kf/send_msg", 95018, user)  # a rep serves, the session waits in the queue, or it ended
        self.check_kf_sizes(body, user)
        if str(body.get("msgid") or "") not in self.seen_msgids:
            self.use_kf_grant(open_kfid, user)
        return {"msgid": self._deliver("kf/send_msg", body)}

    async def kf_send_msg_on_event(self, _request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        code = str(body.get("code", ""))
        user = self.take_code(code)
        if user is None:  # unknown, past its time or already used
            raise self.refuse("kf/send_msg_on_event", 95018, code, "send msg code is invalid")
        return {"msgid": self._deliver("kf/send_msg_on_event", {**body, "_to": user})}

    async def kf_service_state_get(self, _request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        state, servicer = self.kf_state(*_session_of(body, "external_userid"))
        return {"service_state": state, "servicer_userid": servicer}

    async def kf_service_state_trans(self, _request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        """A move WeCom allows, recorded in `kf_state_moves` (and `sent`); msg_code for the reply or end message."""
        open_kfid, user = _session_of(body, "external_userid")
        target, servicer = body.get("service_state"), str(body.get("servicer_userid") or "")
        if not isinstance(target, int) or target not in KF_MOVES:
            raise ApiRefusal(40058)
        current = self.kf_state(open_kfid, user)[0]
        if target not in KF_MOVES[current]:
            raise ApiRefusal(95016)
        if target == SERVED and not servicer:
            raise ApiRefusal(95014)
        self._move(open_kfid, user, target, servicer if target == SERVED else "")
        first = target == ENDED or (target in (QUEUED, SERVED) and current not in (QUEUED, SERVED))
        self._deliver("kf/service_state/trans", body)
        valid_s = CODE_SHORT_S if target == ENDED else CODE_LONG_S  # 结束会话 20 s; into the queue or a rep 48 h
        return {"msg_code": self.issue_welcome_code(user, valid_s) if first else ""}

    async def kf_add_contact_way(self, _request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        """A link to a kf account; `scene` ≤ 32 bytes of [0-9a-zA-Z_-]."""
        open_kfid = str(body.get("open_kfid") or "")
        if not open_kfid:
            raise ApiRefusal(95000)
        scene = str(body.get("scene") or "")
        if not KF_SCENE.fullmatch(scene):
            raise ApiRefusal(40058)
        url = f"https://work.weixin.qq.com/kfid/{open_kfid}?enc_scene={secrets.token_urlsafe(9)}"
        self.kf_links.append({"open_kfid": open_kfid, "scene": scene, "url": url})
        return {"url": url}

    async def kf_account_list(self, _request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        """`limit` (1–100) accounts from `offset`; a page shorter than `limit` is the last."""
        offset, limit = body.get("offset", 0), body.get("limit", KF_ACCOUNT_PAGE_MAX)
        if not isinstance(offset, int) or not isinstance(limit, int) or offset < 0 \
                or not 1 <= limit <= KF_ACCOUNT_PAGE_MAX:
            raise ApiRefusal(40058)
        page = list(self.kf_accounts.values())[offset : offset + limit]
        return {"account_list": [
            {"open_kfid": account.open_kfid, "name": account.name,
             "avatar": f"https://wework.qpic.cn/wwhead/{account.open_kfid}/0",
             "manage_privilege": account.manage_privilege}
            for account in page
        ]}

    # --- inside --------------------------------------------------------------------------
    def _check_servicer(self, open_kfid: str, external_userid: str, servicer_userid: str) -> None:
        state, servicer = self.kf_state(open_kfid, external_userid)
        if state != SERVED or servicer != servicer_userid:
            serving = f"state {state}" + (f", served by {servicer}" if servicer else "")
            raise KfSessionError(f"{servicer_userid} does not serve {external_userid} in {open_kfid} ({serving})")

    def _move(self, open_kfid: str, external_userid: str, to: int, servicer: str = "", by: str = "api") -> None:
        key = (open_kfid, external_userid)
        self.kf_state_moves.append(KfMove(open_kfid, external_userid, self.kf_state(*key)[0], to, servicer, by))
        self.service_states[key] = to
        if to == SERVED:
            self.servicers[key] = servicer
        else:
            self.servicers.pop(key, None)

    def _add_kf(self, open_kfid: str, item: dict[str, Any]) -> str:
        msgid = f"fake{self._run}{next(self._ids)}"  # unique across runs, as WeCom's msgids are
        self.kf_messages.setdefault(open_kfid, []).append(
            {"msgid": msgid, "open_kfid": open_kfid, "send_time": int(time.time()), **item}
        )
        self._last_position = max(self._last_position + 1, time.time_ns())
        self._kf_positions.setdefault(open_kfid, []).append(self._last_position)
        return msgid

    def _deliver(self, path: str, body: dict[str, Any]) -> str:
        """Record what the bot sent; a repeated msgid is acknowledged, not delivered again."""
        msgid = str(body.get("msgid") or f"auto{next(self._ids)}")
        if msgid not in self.seen_msgids:
            self.seen_msgids.add(msgid)
            self.sent.append(Sent(path, body))
        return msgid


def _cursor(position: int) -> str:
    return base64.urlsafe_b64encode(position.to_bytes(8, "big")).decode().rstrip("=")


def _position(cursor: str) -> int:
    """The point in time a cursor marks (0: from the start); 40058 for one this fake never gave out."""
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 8:
        raise ApiRefusal(40058, "invalid cursor")  # WeCom's global code for a parameter it cannot read
    return int.from_bytes(raw, "big")


def _session_of(body: dict[str, Any], user_key: str) -> tuple[str, str]:
    """The (open_kfid, external_userid) a kf call names: 95000 without the account, 40003 without the customer."""
    open_kfid, user = str(body.get("open_kfid") or ""), str(body.get(user_key) or "")
    if not open_kfid:
        raise ApiRefusal(95000)
    if not user:
        raise ApiRefusal(40003)
    return open_kfid, user
