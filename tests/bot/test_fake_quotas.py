"""The fake API's sending quotas and limits, over HTTP, each with the platform's own error code.

A bot tested against a fake that sends everything learns nothing of the rules real WeChat
enforces. These tests pin them (fake_quotas.py cites the page of each): 微信客服 grants 5 sends
for 48 h per customer message (95001 / 95002), event codes live 20 s (95018, 41051), the OA's
2023-06 grants (45015 / 45047), text sizes (45002), reminders of a group message (45009) and the
enterprise's per-API rate (45009). Time is the fake's own clock, moved by the test: no sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.channels.oa import OaCallback
from bot.sandbox.fake_quotas import Refusal
from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.simulator import Simulator
from bot.settings import load_settings
from tests.clock import Clock

CORP, SECRET, OA_ID, OA_SECRET = "wwFakeCorp", "kf-secret", "wxOa", "oa-secret"
KF, ANNA, OLIVER = "wkShop", "wmAnna", "oOliver"
HOUR = 3600.0


@dataclass
class Api:
    fake: FakeWeChat
    client: TestClient
    clock: Clock
    wecom_token: str
    oa_token: str

    async def post(self, path: str, body: dict[str, Any], oa: bool = False) -> dict[str, Any]:
        token = self.oa_token if oa else self.wecom_token
        async with self.client.post(f"/cgi-bin/{path}", params={"access_token": token}, json=body) as response:
            answer: dict[str, Any] = await response.json()
            return answer

    async def kf_send(self, text: str = "您好", user: str = ANNA, **extra: Any) -> int:
        body = {"touser": user, "open_kfid": KF, "msgtype": "text", "text": {"content": text}, **extra}
        return int((await self.post("kf/send_msg", body))["errcode"])

    async def on_event(self, code: str) -> int:
        body = {"code": code, "msgtype": "text", "text": {"content": "欢迎"}}
        return int((await self.post("kf/send_msg_on_event", body))["errcode"])

    async def oa_send(self, openid: str = OLIVER) -> int:
        body = {"touser": openid, "msgtype": "text", "text": {"content": "您好"}}
        return int((await self.post("message/custom/send", body, oa=True))["errcode"])


@pytest.fixture
async def api(aiohttp_client) -> Api:  # type: ignore[no-untyped-def]
    fake = FakeWeChat(CORP, [SECRET], OA_ID, OA_SECRET)
    clock = Clock()
    fake.now = clock
    client = await aiohttp_client(fake.app())
    async with client.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": SECRET}) as response:
        wecom_token = (await response.json())["access_token"]
    async with client.get("/cgi-bin/token", params={"appid": OA_ID, "secret": OA_SECRET}) as response:
        oa_token = (await response.json())["access_token"]
    return Api(fake, client, clock, wecom_token, oa_token)


# --- 微信客服 kf/send_msg: 5 within 48 h of the customer's message ---------------------------
async def test_five_kf_sends_after_a_customer_message_then_95001_and_the_refused_one_is_not_delivered(
    api: Api,
) -> None:
    api.fake.add_kf_text(KF, ANNA, "在吗")
    assert [await api.kf_send(f"第{n}条") for n in range(5)] == [0] * 5
    assert api.fake.allowance("kf", ANNA, KF) == 0
    assert await api.kf_send("第六条") == 95001
    assert [sent.text for sent in api.fake.sent] == [f"第{n}条" for n in range(5)]
    assert api.fake.refused == [Refusal("kf/send_msg", 95001, ANNA, api.clock.at)]


async def test_a_new_customer_message_restarts_the_count(api: Api) -> None:
    api.fake.add_kf_text(KF, ANNA, "在吗")
    assert [await api.kf_send() for _ in range(3)] == [0] * 3
    api.clock.advance(HOUR)
    api.fake.add_kf_text(KF, ANNA, "还有个问题", menu_id="faq")  # a menu click is a customer message too
    assert api.fake.allowance("kf", ANNA, KF) == 5  # not 2 + 5: the count starts again
    assert [await api.kf_send() for _ in range(6)] == [0] * 5 + [95001]


async def test_no_customer_message_or_its_48_hours_over_is_95002(api: Api) -> None:
    assert await api.kf_send() == 95002  # the bot may not write first
    api.fake.add_kf_enter_session(KF, ANNA)
    assert await api.kf_send() == 95002  # entering grants only the welcome code, for send_msg_on_event
    api.fake.add_kf_text(KF, ANNA, "在吗")
    api.clock.advance(48 * HOUR - 1)
    assert await api.kf_send() == 0
    api.clock.advance(1)
    assert await api.kf_send() == 95002
    assert [refusal.errcode for refusal in api.fake.refused] == [95002, 95002, 95002]


async def test_the_session_state_is_checked_before_the_grant(api: Api) -> None:
    api.fake.add_kf_text(KF, ANNA, "转人工")
    assert (await api.post("kf/service_state/trans",
                           {"open_kfid": KF, "external_userid": ANNA, "service_state": 3, "servicer_userid": "amy"}
                           ))["errcode"] == 0
    assert await api.kf_send() == 95018
    assert api.fake.allowance("kf", ANNA, KF) == 5  # refused: nothing used
    assert api.fake.refused == [Refusal("kf/send_msg", 95018, ANNA, api.clock.at)]


async def test_a_resent_msgid_is_acknowledged_without_using_the_grant_again(api: Api) -> None:
    api.fake.add_kf_text(KF, ANNA, "在吗")
    assert [await api.kf_send("同一条", msgid="scrm42") for _ in range(4)] == [0] * 4
    assert api.fake.allowance("kf", ANNA, KF) == 4
    assert [sent.text for sent in api.fake.sent] == ["同一条"]  # delivered once
    assert [await api.kf_send() for _ in range(5)] == [0] * 4 + [95001]
    assert await api.kf_send("同一条", msgid="scrm42") == 0  # still acknowledged with the grant used up


async def test_kf_text_over_2048_bytes_and_a_menu_head_over_1024_bytes_are_45002(api: Api) -> None:
    api.fake.add_kf_text(KF, ANNA, "在吗")
    assert await api.kf_send("中" * 682 + "ab") == 0  # 2048 bytes of UTF-8
    assert await api.kf_send("中" * 682 + "abc") == 45002  # 2049
    menu = {"touser": ANNA, "open_kfid": KF, "msgtype": "msgmenu",
            "msgmenu": {"head_content": "a" * 1025, "list": [{"type": "click", "click": {"id": "1", "content": "是"}}]}}
    assert (await api.post("kf/send_msg", menu))["errcode"] == 45002
    assert api.fake.allowance("kf", ANNA, KF) == 4  # the refused ones used nothing
    assert [refusal.errcode for refusal in api.fake.refused] == [45002, 45002]


# --- event codes: single use, 20 s (48 h for the queue's) -----------------------------------
async def test_a_welcome_code_past_its_20_seconds_is_refused(api: Api) -> None:
    late = api.fake.add_kf_enter_session(KF, ANNA)
    api.clock.advance(20)
    assert await api.on_event(late) == 95018
    fresh = api.fake.add_kf_enter_session(KF, ANNA)
    api.clock.advance(19)
    assert await api.on_event(fresh) == 0
    assert await api.on_event(fresh) == 95018  # single use
    assert [refusal.to for refusal in api.fake.refused] == [late, fresh]


async def test_trans_codes_live_48_hours_and_the_end_code_20_seconds(api: Api) -> None:
    queued = await api.post("kf/service_state/trans", {"open_kfid": KF, "external_userid": ANNA, "service_state": 2})
    api.clock.advance(47 * HOUR)
    assert await api.on_event(queued["msg_code"]) == 0  # 进入接待池: 48 h
    ended = await api.post("kf/service_state/trans", {"open_kfid": KF, "external_userid": ANNA, "service_state": 4})
    api.clock.advance(21)
    assert await api.on_event(ended["msg_code"]) == 95018  # 结束会话: 20 s


async def test_expire_codes_ages_every_code_issued(api: Api) -> None:
    code = api.fake.add_kf_enter_session(KF, ANNA)
    api.fake.expire_codes()
    assert await api.on_event(code) == 95018


async def test_send_welcome_msg_past_20_seconds_is_41051(api: Api) -> None:
    late = api.fake.issue_welcome_code("wmNew")
    api.clock.advance(20)
    body = {"text": {"content": "你好，我是张三"}}
    assert (await api.post("externalcontact/send_welcome_msg", {**body, "welcome_code": late}))["errcode"] == 41051
    fresh = api.fake.issue_welcome_code("wmNew")
    assert (await api.post("externalcontact/send_welcome_msg", {**body, "welcome_code": fresh}))["errcode"] == 0
    assert api.fake.refused == [Refusal("externalcontact/send_welcome_msg", 41051, late, api.clock.at)]


# --- the OA's custom send: the 2023-06 grants ------------------------------------------------
async def test_a_follow_grants_3_within_the_minute_then_45047_and_after_the_minute_45015(api: Api) -> None:
    api.fake.oa_customer_acted(OLIVER, "subscribe")
    assert [await api.oa_send() for _ in range(4)] == [0, 0, 0, 45047]
    api.clock.advance(60)
    assert await api.oa_send() == 45015
    assert len(api.fake.sent) == 3
    assert [(r.path, r.errcode, r.to) for r in api.fake.refused] == [
        ("message/custom/send", 45047, OLIVER), ("message/custom/send", 45015, OLIVER)]


async def test_a_message_grants_5_within_48_hours(api: Api) -> None:
    assert await api.oa_send() == 45015  # nothing yet
    api.fake.oa_customer_acted(OLIVER, "message")
    api.clock.advance(47 * HOUR)
    assert [await api.oa_send() for _ in range(6)] == [0] * 5 + [45047]
    api.fake.oa_customer_acted(OLIVER, "message")  # a new message: 5 again
    api.clock.advance(48 * HOUR)
    assert await api.oa_send() == 45015


async def test_a_menu_click_does_not_give_the_message_quota(api: Api) -> None:
    api.fake.oa_customer_acted(OLIVER, "click")
    assert api.fake.allowance("oa", OLIVER) == 3
    assert [await api.oa_send() for _ in range(4)] == [0, 0, 0, 45047]
    api.clock.advance(61)
    assert await api.oa_send() == 45015


async def test_the_event_grant_is_used_first_then_the_message_grant(api: Api) -> None:
    api.fake.oa_customer_acted(OLIVER, "message")
    api.fake.oa_customer_acted(OLIVER, "scan")
    assert api.fake.allowance("oa", OLIVER) == 8
    assert [await api.oa_send() for _ in range(3)] == [0] * 3
    api.clock.advance(60)  # the scan's minute is over; the message grant is untouched
    assert api.fake.allowance("oa", OLIVER) == 5
    assert [await api.oa_send() for _ in range(6)] == [0] * 5 + [45047]


async def test_unsubscribe_takes_the_grants_back(api: Api) -> None:
    api.fake.oa_customer_acted(OLIVER, "message")
    api.fake.oa_customer_acted(OLIVER, "unsubscribe")
    assert await api.oa_send() == 45015
    assert api.fake.allowance("oa", OLIVER) == 0


# --- the app's message/send truncates instead of refusing ----------------------------------
async def test_an_app_text_over_2048_bytes_is_delivered_cut_not_refused(api: Api) -> None:
    answer = await api.post("message/send", {"touser": "amy", "msgtype": "text", "agentid": 1,
                                             "text": {"content": "中" * 700}})
    assert answer["errcode"] == 0
    assert len(api.fake.sent[0].text.encode()) == 2046  # 682 whole characters: no half of one
    assert api.fake.refused == []


# --- group message reminders and the per-API rate ------------------------------------------
async def test_a_group_message_is_reminded_at_most_3_times_in_24_hours(api: Api) -> None:
    task = await api.post("externalcontact/add_msg_template",
                          {"external_userid": ["wmA"], "sender": "amy", "text": {"content": "上新了"}})
    remind = {"msgid": task["msgid"]}
    answers = [(await api.post("externalcontact/remind_groupmsg_send", remind))["errcode"] for _ in range(4)]
    assert answers == [0, 0, 0, 45009]
    assert api.fake.reminders == [task["msgid"]] * 3
    api.clock.advance(24 * HOUR)
    assert (await api.post("externalcontact/remind_groupmsg_send", remind))["errcode"] == 0


async def test_45009_after_api_per_minute_calls_to_one_api(api: Api) -> None:
    api.fake.api_per_minute = 3
    state = {"open_kfid": KF, "external_userid": ANNA}
    answers = [(await api.post("kf/service_state/get", state))["errcode"] for _ in range(4)]
    assert answers == [0, 0, 0, 45009]
    assert (await api.post("kf/account/list", {}))["errcode"] == 0  # counted per API
    async with api.client.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": SECRET}) as response:
        assert (await response.json())["errcode"] == 0  # tokens are not counted
    api.clock.advance(60)
    assert (await api.post("kf/service_state/get", state))["errcode"] == 0
    assert api.fake.refused == [Refusal("kf/service_state/get", 45009, "", api.clock.at - 60)]


async def test_the_hourly_rate_and_none_for_unlimited(api: Api) -> None:
    api.fake.api_per_minute, api.fake.api_per_hour = None, 2
    state = {"open_kfid": KF, "external_userid": ANNA}
    for expected in (0, 0, 45009):
        assert (await api.post("kf/service_state/get", state))["errcode"] == expected
        api.clock.advance(10 * 60)
    api.clock.advance(HOUR)
    api.fake.api_per_hour = None
    assert [(await api.post("kf/service_state/get", state))["errcode"] for _ in range(50)] == [0] * 50


# --- the simulator tells the fake what the OA customer did ---------------------------------
async def test_the_simulator_posts_clicks_and_scans_and_records_them_with_the_fake() -> None:
    settings = load_settings(sandbox={"enabled": True, "api_port": 0})
    oa = settings.oa
    channel = OaCallback(oa.token.get_secret_value(), oa.encoding_aes_key.get_secret_value(), oa.app_id, oa.mode, 300)
    received: list[tuple[str, str]] = []

    async def callback(request: web.Request) -> web.Response:
        [event] = channel.parse(channel.open(dict(request.query), await request.read()))
        received.append((event.kind, event.menu_id or event.scene))
        return web.Response(text="success")

    bot = web.Application()
    bot.router.add_post("/oa/callback", callback)
    fake = FakeWeChat(settings.wecom.corp_id, [], oa.app_id, oa.app_secret.get_secret_value())
    async with TestServer(bot) as server, aiohttp.ClientSession() as http:
        simulator, url = Simulator(settings, fake, http), str(server.make_url("")).rstrip("/")
        assert await simulator.oa_clicks(url, OLIVER, "menu_price") == 200
        assert fake.allowance("oa", OLIVER) == 3
        assert await simulator.oa_scans(url, OLIVER, "inv_ABC") == 200
        assert await simulator.oa_says(url, OLIVER, "你好") == 200
        assert fake.allowance("oa", OLIVER) == 3 + 5
        assert await simulator.oa_unsubscribes(url, OLIVER) == 200
        assert fake.allowance("oa", OLIVER) == 0
    assert received == [("menu_click", "menu_price"), ("scan", "inv_ABC"), ("message", ""), ("unsubscribe", "")]
