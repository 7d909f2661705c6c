"""Creating and changing entry points on WeCom and the OA: the API side of entry channels.

Each kind of channel is one call, on the credential that may make it:

    contact_way  externalcontact/add_contact_way (客户联系 secret): a QR whose `state` is the code,
                 offering the reps of the rota; update_contact_way changes the rota, del_contact_way ends it
    kf_link      kf/add_contact_way (微信客服 secret): a link to the kf account; the code rides on it
                 as `scene_param`, which enter_session hands back
    oa_qr        qrcode/create (OA): a permanent QR with `scene_str` = the code (`qrscene_<code>` on subscribe)

Errors are the client's `ApiError`, unchanged: the caller decides what a refusal means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from bot.wechat_api import ApiError, WeChatApi

CONTACT_SINGLE, CONTACT_MULTI = 1, 2  # the contact way's type: one rep, or several
SCENE_QR = 2  # scene 1 is the mini-program plug-in, which has no QR
OA_SHOW_QR = "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket="


@dataclass(frozen=True)
class EntryPoint:
    config_id: str  # the contact way's id ("" for kf links and OA QRs)
    url: str  # the QR picture or the link to share


async def create_entry_point(
    apis: Mapping[str, WeChatApi], kind: str, code: str, reps: Sequence[str], kf_account: str
) -> EntryPoint:
    """Create the entry point that carries `code`; raises ApiError when WeChat refuses."""
    if kind == "contact_way":
        return await _contact_way(apis["wecom.contacts"], code, reps)
    if kind == "kf_link":
        return await _kf_link(apis["wecom.kf"], code, kf_account)
    if kind == "oa_qr":
        return await _oa_qr(apis["oa"], code)
    raise ValueError(f"unknown channel kind {kind!r}")


async def _contact_way(api: WeChatApi, code: str, reps: Sequence[str]) -> EntryPoint:
    answer = await api.post(
        "externalcontact/add_contact_way",
        {
            "type": CONTACT_SINGLE if len(reps) == 1 else CONTACT_MULTI,
            "scene": SCENE_QR,
            "state": code,
            "user": list(reps),
            "skip_verify": True,
        },
    )
    if not answer.get("config_id"):
        raise ApiError(-4, "add_contact_way answered without a config_id", "externalcontact/add_contact_way")
    return EntryPoint(str(answer["config_id"]), str(answer.get("qr_code") or ""))


async def _kf_link(api: WeChatApi, code: str, kf_account: str) -> EntryPoint:
    answer = await api.post("kf/add_contact_way", {"open_kfid": kf_account, "scene": code})
    url = str(answer.get("url") or "")
    if not url:
        raise ApiError(-4, "kf/add_contact_way answered without a url", "kf/add_contact_way")
    separator = "&" if "?" in url else "?"
    return EntryPoint("", f"{url}{separator}scene_param={quote(code, safe='')}")


async def _oa_qr(api: WeChatApi, code: str) -> EntryPoint:
    answer = await api.post(
        "qrcode/create", {"action_name": "QR_LIMIT_STR_SCENE", "action_info": {"scene": {"scene_str": code}}}
    )
    ticket = str(answer.get("ticket") or "")
    if not ticket:
        raise ApiError(-4, "qrcode/create answered without a ticket", "qrcode/create")
    return EntryPoint("", OA_SHOW_QR + quote(ticket, safe=""))


async def update_rota(api: WeChatApi, config_id: str, users: Sequence[str]) -> None:
    """Offer `users` on the contact way from now on (WeCom refuses an empty list)."""
    await api.post("externalcontact/update_contact_way", {"config_id": config_id, "user": list(users)})


async def delete_entry_point(api: WeChatApi, config_id: str) -> None:
    await api.post("externalcontact/del_contact_way", {"config_id": config_id})
