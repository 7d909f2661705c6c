"""The fake API's answers to what `scrm doctor` asks: kf accounts, an app's agent, its reps, untrusted IPs.

Doctor's explanations are only as good as the fake's refusals are WeChat's: kf/account/list
pages and manage_privilege (document 94661), agent/get's 41011 / 40056 / 301002, WeCom's
60020 after a token was still given, and the OA's 40164 on the token request itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bot.sandbox.fake_apps import EGRESS_IP
from bot.sandbox.fake_wechat import FakeWeChat

CORP, KF_SECRET, APP_SECRET, OA_ID, OA_SECRET = "wwFakeCorp", "kf-secret", "app-secret", "wxOa", "oa-secret"


class Api:
    def __init__(self, fake: FakeWeChat, client: TestClient) -> None:
        self.fake, self.client = fake, client

    async def token(self, secret: str) -> str:
        answer = await self.get("gettoken", corpid=CORP, corpsecret=secret)
        assert answer["errcode"] == 0, answer
        return str(answer["access_token"])

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        async with self.client.get(f"/cgi-bin/{path}", params=params) as response:
            answer: dict[str, Any] = await response.json()
            return answer

    async def post(self, path: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.client.post(f"/cgi-bin/{path}", params={"access_token": token}, json=body) as response:
            answer: dict[str, Any] = await response.json()
            return answer


@pytest.fixture
async def api(aiohttp_client) -> Api:  # type: ignore[no-untyped-def]
    fake = FakeWeChat(CORP, [KF_SECRET, APP_SECRET], OA_ID, OA_SECRET)
    return Api(fake, await aiohttp_client(fake.app()))


async def test_kf_account_list_pages_and_says_which_accounts_are_handed_to_the_api(api: Api) -> None:
    api.fake.add_kf_account("wkShop", "店小二")
    api.fake.add_kf_account("wkVip", "VIP 专线", managed=False)
    api.fake.add_kf_account("wkAfter", "售后")
    token = await api.token(KF_SECRET)
    everything = await api.post("kf/account/list", token, {})
    assert [(a["open_kfid"], a["name"], a["manage_privilege"]) for a in everything["account_list"]] == [
        ("wkShop", "店小二", True), ("wkVip", "VIP 专线", False), ("wkAfter", "售后", True)]
    first = await api.post("kf/account/list", token, {"offset": 0, "limit": 2})
    rest = await api.post("kf/account/list", token, {"offset": 2, "limit": 2})
    assert [len(first["account_list"]), len(rest["account_list"])] == [2, 1]  # shorter than limit: the last page
    for body in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "10"}):
        assert (await api.post("kf/account/list", token, body))["errcode"] == 40058


async def test_agent_get_answers_only_the_apps_own_secret_for_an_agent_it_knows(api: Api) -> None:
    api.fake.add_agent(1000005, APP_SECRET, "销售助手")
    app_token, kf_token = await api.token(APP_SECRET), await api.token(KF_SECRET)
    assert (await api.get("agent/get", access_token=app_token))["errcode"] == 41011
    assert (await api.get("agent/get", access_token=app_token, agentid="1000099"))["errcode"] == 40056
    assert (await api.get("agent/get", access_token=app_token, agentid="abc"))["errcode"] == 40056
    assert (await api.get("agent/get", access_token=kf_token, agentid="1000005"))["errcode"] == 301002
    agent = await api.get("agent/get", access_token=app_token, agentid="1000005")
    assert (agent["errcode"], agent["agentid"], agent["name"], agent["close"]) == (0, 1000005, "销售助手", 0)


async def test_an_untrusted_ip_still_gets_a_wecom_token_then_60020_but_the_oa_refuses_the_token(api: Api) -> None:
    api.fake.contact_reps = ["zhang"]
    api.fake.refuse_ip(APP_SECRET)
    app_token, kf_token = await api.token(APP_SECRET), await api.token(KF_SECRET)  # gettoken still answers
    refused = await api.get("externalcontact/get_follow_user_list", access_token=app_token)
    assert refused["errcode"] == 60020 and f"from ip: {EGRESS_IP}" in refused["errmsg"]
    trusted = await api.get("externalcontact/get_follow_user_list", access_token=kf_token)  # another app: trusted
    assert (trusted["errcode"], trusted["follow_user"]) == (0, ["zhang"])

    assert (await api.get("token", grant_type="client_credential", appid=OA_ID, secret=OA_SECRET))["errcode"] == 0
    api.fake.refuse_ip(OA_SECRET, "198.51.100.4")
    oa = await api.get("token", grant_type="client_credential", appid=OA_ID, secret=OA_SECRET)
    assert oa["errcode"] == 40164 and "invalid ip 198.51.100.4" in oa["errmsg"]
