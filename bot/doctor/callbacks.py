"""The public callback URLs, checked as WeChat checks them when an admin saves one.

WeCom sends GET ?msg_signature&timestamp&nonce&echostr with `echostr` encrypted under the
callback's EncodingAESKey and the corp id, and wants the decrypted text back; the OA sends
?signature&timestamp&nonce&echostr and wants `echostr` back as it came. The requests are
signed with this configuration's keys (by the sandbox's `wechat_side`, as the tests sign),
so a bot behind the URL that runs with other keys refuses them: that is the finding.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import aiohttp

from bot.callbacks import CALLBACK_PATHS
from bot.channels.base import parse_xml
from bot.doctor.config import env_name
from bot.doctor.report import Check, fail, ok
from bot.sandbox import wechat_side
from bot.settings import CallbackKeys, Settings

TIMEOUT_S = 10.0
# Where each callback's Token and EncodingAESKey are set, and the key that holds them here.
CONSOLES = {
    "/wecom/kf/callback": ("wecom.kf", "微信客服 → 可调用接口的应用 → the app's 接收事件服务器"),
    "/wecom/contacts/callback": ("wecom.contacts", "客户联系 → 可调用接口的应用 → the app's 接收事件服务器"),
    "/wecom/app/callback": ("wecom.app", "应用管理 → the reps' app → 接收消息 → 设置API接收"),
    "/oa/callback": ("oa", "公众平台 → 设置与开发 → 基本配置 → 服务器配置"),
}


async def callback_checks(settings: Settings, public_url: str, http: aiohttp.ClientSession) -> list[Check]:
    base = public_url.rstrip("/")
    return list(await asyncio.gather(*(_round_trip(settings, base + path, path, http) for path in CALLBACK_PATHS)))


def signed_check(settings: Settings, path: str) -> tuple[dict[str, str], str]:
    """The query of WeChat's URL check for `path`, and the answer a bot with these keys must give."""
    echo = secrets.token_hex(12)
    if path == "/oa/callback":
        oa = settings.oa
        signed = wechat_side.sign_oa(oa.token.get_secret_value(), oa.encoding_aes_key.get_secret_value(),
                                     oa.app_id, echo, mode="plain")
        return {**signed.query, "echostr": echo}, echo
    keys: CallbackKeys = getattr(settings.wecom, CONSOLES[path][0].split(".")[1])
    signed = wechat_side.sign_wecom(keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(),
                                    settings.wecom.corp_id, echo)
    encrypted = str(parse_xml(signed.body)["Encrypt"])  # msg_signature was made over exactly this
    return {**signed.query, "echostr": encrypted}, echo


async def _round_trip(settings: Settings, url: str, path: str, http: aiohttp.ClientSession) -> Check:
    name = f"callback {path}"
    key, console = CONSOLES[path]
    query, expected = signed_check(settings, path)
    started = time.perf_counter()
    try:
        async with http.get(url, params=query, allow_redirects=False,
                            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as response:
            status, text = response.status, (await response.text())[:200]
            moved = response.headers.get("Location", "")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return fail(name, f"{url} cannot be reached: {type(exc).__name__}: {exc}",
                    "check DNS, the TLS certificate and the firewall: WeChat must reach this URL from the internet")
    took = round((time.perf_counter() - started) * 1000)
    if status == 200 and text.strip() == expected:
        return ok(name, f"{url} answers WeChat's signed check ({took} ms); enter it in {console}")
    keys = (f"{key}.token and {key}.encoding_aes_key ({env_name(key + '.token')}, "
            f"{env_name(key + '.encoding_aes_key')})")
    if status == 403:
        if "timestamp" in text:
            return fail(name, f"{url} refuses the check's timestamp: {text}",
                        "set the clock of the bot's server right (NTP), or widen security.timestamp_tolerance_s")
        return fail(name, f"{url} refuses the check ({text}): the bot there runs with other keys than these",
                    f"set {keys} to the Token and EncodingAESKey shown in {console}, here and in the bot's "
                    "configuration" + (", and the same wecom.corp_id" if key != "oa" else ""))
    if status in (301, 302, 303, 307, 308):
        return fail(name, f"{url} redirects to {moved}: WeChat does not follow redirects",
                    "enter the final URL in the console (scheme, host and path exactly), or stop the redirect")
    if status == 404:
        return fail(name, f"nothing answers {path} at {url} (HTTP 404)",
                    f"forward {path} to the bot (scrm serve, server.host:server.port) in the reverse proxy")
    if status >= 500:
        return fail(name, f"{url} answers HTTP {status}: {text}",
                    "the bot behind the proxy is down or unreachable: start scrm serve, check the proxy's upstream")
    return fail(name, f"{url} answers HTTP {status} without the echo ({text!r}): not the bot's callback",
                f"forward {path} to the bot (scrm serve) in the reverse proxy")
