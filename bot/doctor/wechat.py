"""Each WeChat credential asked as the bot asks: an access token, then one read only that app may make.

    wecom.kf        gettoken, then kf/account/list: the kf accounts, and whether each is handed
                    to this app's API (`manage_privilege`; an account that is not never reaches the bot)
    wecom.contacts  gettoken, then externalcontact/get_follow_user_list: reps with customer contact on
    wecom.app       gettoken, then agent/get with wecom.app.agent_id: the agent is this secret's app
    oa              token

A self-built app called from outside its 企业可信IP list still gets a token, then 60020 on
the read. Tokens are bought afresh (in-process state, never the bot's shared one), so a
wrong secret shows even while the bot holds a good token. On the OA a new token retires the
bot's after five minutes (WeChat keeps both valid that long); the bot then refreshes once (40001).

The errcodes explained, and where each comes from: WeCom's global error codes (documented at
developer.work.weixin.qq.com/document/path/90313): 40001 invalid secret, 40013 invalid corp id,
40056 invalid agentid, 48002 API not allowed to this app, 60020 IP not trusted ("not allow to
access from your ip … from ip: X"), 301002 "not allow operate another agent with this
accesstoken", 45009 call limit, -1 busy. The OA's global return codes: 40001 / 40125 invalid
AppSecret, 40013 invalid AppID, 40164 "invalid ip X …, not in whitelist". kf/account/list and its
manage_privilege: developer.work.weixin.qq.com/document/path/94661; get_follow_user_list: …/92571.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.doctor.config import env_name
from bot.doctor.report import Check, fail, ok, warn
from bot.runtime import build_apis
from bot.settings import Settings
from bot.wechat_api import ApiError, WeChatApi
from core.shared_state import MemoryState

KF_PAGE = 100  # kf/account/list: at most 100 a page
KF_PAGES_MAX = 50  # a corp has at most 5,000 kf accounts
KF_HAND_OVER = ("hand them to this app: 企业微信管理后台 → 微信客服 → 通过API管理会话消息 → 企业内部开发 → "
                "this app → 可管理的客服账号")
IP = re.compile(r"(?:from ip:|invalid ip)\s*([0-9A-Fa-f.:]+[0-9A-Fa-f])")


@dataclass(frozen=True)
class App:
    """One credential: its client's name in `build_apis`, the keys it needs, and where the consoles show them."""

    name: str
    keys: tuple[str, ...]
    console: str  # where its Secret is shown
    may_call: str = ""  # how an admin lets this app call the API doctor reads with (48002)


APPS = (
    App("wecom.kf", ("wecom.corp_id", "wecom.kf.secret"),
        "应用管理 → the self-built app set in 微信客服 → 可调用接口的应用 → Secret",
        "add this app to 微信客服 → 可调用接口的应用"),
    App("wecom.contacts", ("wecom.corp_id", "wecom.contacts.secret"),
        "应用管理 → the self-built app set in 客户联系 → 可调用接口的应用 → Secret",
        "add this app to 客户与上下游 → 客户联系 → 可调用接口的应用"),
    App("wecom.app", ("wecom.corp_id", "wecom.app.secret"), "应用管理 → the reps' app → Secret"),
    App("oa", ("oa.app_id", "oa.app_secret"), "公众平台 → 设置与开发 → 基本配置 → AppSecret"),
)

# errcode -> (what it means here, what to do); the {names} are filled in by `explain`.
WECOM_CODES = {
    40001: ("{secret} is not the Secret of its app (or the Secret was reset)", "copy it from {console} into {env}"),
    40013: ("wecom.corp_id {corp_id} is not a corp WeCom knows",
            "set SCRM__WECOM__CORP_ID to the 企业ID in 我的企业 → 企业信息"),
    40056: ("wecom.app.agent_id {agent_id} is not an app of this corp",
            "set SCRM__WECOM__APP__AGENT_ID to the AgentId on the app's page in 应用管理"),
    48002: ("this app may not call that API", "{may_call}"),
    60020: ("WeCom refuses this app's calls from this server's IP {ip}: it is not in the app's 企业可信IP list",
            "add {ip} (this server's egress IP) to the 企业可信IP of the app whose Secret is {secret}: 应用管理 → "
            "the app → 企业可信IP (WeCom asks for its 可信域名 or 接收消息服务器 first)"),
    301002: ("agent {agent_id} is another app than the one whose Secret is wecom.app.secret",
             "take the AgentId and the Secret from the same app (应用管理 → the reps' app)"),
    45009: ("WeCom's call limit for this minute is reached", "run scrm doctor again in a minute"),
    -1: ("WeCom is busy", "run scrm doctor again in a moment"),
}
OA_CODES = {
    40001: ("oa.app_secret is not the OA's AppSecret (or it was reset)", "copy it from {console} into {env}"),
    40125: ("oa.app_secret is not the OA's AppSecret (or it was reset)", "copy it from {console} into {env}"),
    40013: ("oa.app_id {app_id} is not an AppID WeChat knows",
            "set SCRM__OA__APP_ID to the AppID in 公众平台 → 设置与开发 → 基本配置"),
    40164: ("the OA refuses token requests from this server's IP {ip}: it is not in the OA's IP whitelist",
            "add {ip} (this server's egress IP) to 公众平台 → 设置与开发 → 基本配置 → IP白名单"),
    45009: ("the OA's daily limit of token requests is reached", "wait, or reset the quota in 公众平台"),
    -1: ("WeChat is busy", "run scrm doctor again in a moment"),
}


def explain(exc: ApiError, app: App, settings: Settings) -> tuple[str, str]:
    """(detail, fix) for a refusal, in the words of the console that fixes it."""
    base_key = "oa.api_base" if app.name == "oa" else "wecom.api_base"
    if exc.errcode < -1:  # our codes: no usable answer at all
        base = settings.oa.api_base if app.name == "oa" else settings.wecom.api_base
        return (f"{base} does not answer usably: {exc.errmsg}",
                f"check {base_key} ({env_name(base_key)}) and that this machine reaches it over HTTPS "
                "(DNS, firewall, proxy)")
    codes = OA_CODES if app.name == "oa" else WECOM_CODES
    said = f"errcode {exc.errcode} ({exc.errmsg.split(', hint')[0].split(' rid:')[0]})"
    if exc.errcode not in codes:
        where = ("https://developers.weixin.qq.com/doc/offiaccount/Getting_Started/Global_Return_Code.html"
                 if app.name == "oa" else f"https://open.work.weixin.qq.com/devtool/query?e={exc.errcode}")
        return said, f"look the code up: {where}"
    found = IP.search(exc.errmsg)
    facts = {"secret": app.keys[-1], "env": env_name(app.keys[-1]), "console": app.console, "may_call": app.may_call,
             "corp_id": settings.wecom.corp_id, "app_id": settings.oa.app_id,
             "agent_id": settings.wecom.app.agent_id, "ip": found.group(1) if found else "this server's egress IP"}
    meaning, fix = codes[exc.errcode]
    return f"{said}: {meaning.format(**facts)}", fix.format(**facts)


Probe = Callable[[WeChatApi, App, Settings, dict[str, str]], Awaitable[Check]]


async def wechat_checks(settings: Settings, problems: dict[str, str], http: aiohttp.ClientSession) -> list[Check]:
    """Every credential at once; `problems` (from the config check) says which keys are unusable."""
    apis = build_apis(settings, http, MemoryState())
    probes: dict[str, Probe] = {"wecom.kf": kf_accounts, "wecom.contacts": contact_reps, "wecom.app": app_agent}
    groups = await asyncio.gather(*(_app_checks(app, apis[app.name], settings, problems, probes.get(app.name))
                                    for app in APPS))
    return [check for group in groups for check in group]


async def _app_checks(
    app: App, api: WeChatApi, settings: Settings, problems: dict[str, str], probe: Probe | None
) -> list[Check]:
    name = f"{app.name}.token"
    unusable = [f"{key} is {problems[key]}" for key in app.keys if key in problems]
    if unusable:
        return [warn(name, "not checked: " + ", ".join(unusable), "fix the configuration first (see config)")]
    try:
        await api.access_token()
    except ApiError as exc:
        return [fail(name, *explain(exc, app, settings))]
    token = ok(name, f"{app.keys[-1]} buys an access token")
    return [token] if probe is None else [token, await probe(api, app, settings, problems)]


async def kf_accounts(api: WeChatApi, app: App, settings: Settings, _problems: dict[str, str]) -> Check:
    name = "wecom.kf.accounts"
    accounts: list[dict[str, Any]] = []
    try:
        for page in range(KF_PAGES_MAX):
            data = await api.post("kf/account/list", {"offset": page * KF_PAGE, "limit": KF_PAGE})
            accounts += data.get("account_list") or []
            if len(data.get("account_list") or []) < KF_PAGE:
                break
    except ApiError as exc:
        return fail(name, *explain(exc, app, settings))
    if not accounts:
        return fail(name, "no kf account is visible to this app",
                    "create one in 微信客服 → 账号管理, and add this app to 微信客服 → 可调用接口的应用")
    handed = [a for a in accounts if a.get("manage_privilege")]
    kept = ", ".join(f"{a.get('name')} ({a.get('open_kfid')})" for a in accounts if not a.get("manage_privilege"))
    if not handed:
        return fail(name, f"no account is handed to this app's API, so no kf customer reaches the bot: {kept}",
                    KF_HAND_OVER)
    names = ", ".join(f"{a.get('name')} ({a.get('open_kfid')})" for a in handed)
    if kept:
        return warn(name, f"handed to the API: {names}; not handed, so their customers never reach the bot: {kept}",
                    f"if the bot should answer those too, {KF_HAND_OVER}")
    return ok(name, f"handed to the API: {names}")


async def contact_reps(api: WeChatApi, app: App, settings: Settings, _problems: dict[str, str]) -> Check:
    name = "wecom.contacts.reps"
    try:
        reps = (await api.get("externalcontact/get_follow_user_list", {})).get("follow_user") or []
    except ApiError as exc:
        return fail(name, *explain(exc, app, settings))
    if not reps:
        return warn(name, "no rep this app can see has customer contact (客户联系) on: no customer can add one",
                    "客户与上下游 → 客户联系 → 权限配置: give the reps customer contact, and put them in the app's "
                    "可见范围")
    return ok(name, f"{len(reps)} rep(s) with customer contact on")


async def app_agent(api: WeChatApi, app: App, settings: Settings, problems: dict[str, str]) -> Check:
    name = "wecom.app.agent"
    agent_id = settings.wecom.app.agent_id
    if "wecom.app.agent_id" in problems:
        return warn(name, f"not checked: wecom.app.agent_id is {problems['wecom.app.agent_id']}",
                    "fix the configuration first (see config)")
    try:
        agent = await api.get("agent/get", {"agentid": str(agent_id)})
    except ApiError as exc:
        return fail(name, *explain(exc, app, settings))
    if agent.get("close"):
        return fail(name, f"agent {agent_id} ({agent.get('name')}) is disabled: reps get no cards",
                    "enable it: 应用管理 → the app → 启用")
    return ok(name, f"agent {agent_id} is {agent.get('name')}, the app of wecom.app.secret")
