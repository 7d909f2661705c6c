"""The fake WeCom API as the bot meets it over HTTP: kf session states, a rep's kf workspace, departed reps.

The fake is only worth its keep if it refuses what WeCom refuses: these tests pin its
state machine (kf/service_state/trans), the refusal to write while a rep serves
(kf/send_msg, 95018), what a rep's answer and a session's end look like in kf/sync_msg,
and the paging and per-customer results of the departed-rep APIs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bot.channels.wecom import events_from_kf_messages
from bot.sandbox.fake_kf import SERVICER_PATH, KfMove, KfSessionError
from bot.sandbox.fake_wechat import FakeWeChat

CORP, SECRET = "wwFakeCorp", "kf-secret"
KF, ANNA = "wkShop", "wmAnna"
# WeCom's allowed moves (分配客服会话, 概述): from 0 and 1 anywhere but 0, from 2 to 2/3/4, from 3 to 3/4, none from 4.
ALLOWED = {(0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (1, 2), (1, 3), (1, 4), (2, 2), (2, 3), (2, 4), (3, 3), (3, 4)}


@dataclass
class Wecom:
    fake: FakeWeChat
    client: TestClient
    token: str

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.client.post(f"/cgi-bin/{path}", params={"access_token": self.token}, json=body) as response:
            assert response.status == 200
            answer: dict[str, Any] = await response.json()
            return answer

    async def trans(self, state: int, servicer: str = "", user: str = ANNA) -> dict[str, Any]:
        body: dict[str, Any] = {"open_kfid": KF, "external_userid": user, "service_state": state}
        return await self.post("kf/service_state/trans", {**body, **({"servicer_userid": servicer} if servicer else {})})

    async def state(self, user: str = ANNA) -> tuple[int, str]:
        answer = await self.post("kf/service_state/get", {"open_kfid": KF, "external_userid": user})
        return answer["service_state"], answer["servicer_userid"]

    async def send(self, text: str, user: str = ANNA) -> dict[str, Any]:
        return await self.post("kf/send_msg", {"touser": user, "open_kfid": KF, "msgtype": "text",
                                               "text": {"content": text}})

    async def sync(self) -> list[dict[str, Any]]:
        answer = await self.post("kf/sync_msg", {"token": "t", "open_kfid": KF})
        messages: list[dict[str, Any]] = answer["msg_list"]
        return messages

    async def unassigned(self, **body: Any) -> dict[str, Any]:
        return await self.post("externalcontact/get_unassigned_list", body)

    async def transfer(self, customers: list[str], handover: str = "leaver", takeover: str = "amy") -> dict[str, Any]:
        return await self.post("externalcontact/resigned/transfer_customer",
                               {"handover_userid": handover, "takeover_userid": takeover, "external_userid": customers})


@pytest.fixture
async def wecom(aiohttp_client) -> Wecom:  # type: ignore[no-untyped-def]
    fake = FakeWeChat(CORP, [SECRET], "wxOa", "oa-secret")
    client = await aiohttp_client(fake.app())
    async with client.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": SECRET}) as response:
        token = (await response.json())["access_token"]
    return Wecom(fake, client, token)


@pytest.mark.parametrize("start", range(5))
@pytest.mark.parametrize("target", range(5))
async def test_service_state_trans_allows_exactly_wecoms_moves(wecom: Wecom, start: int, target: int) -> None:
    wecom.fake.service_states[(KF, ANNA)] = start
    if start == 3:
        wecom.fake.servicers[(KF, ANNA)] = "amy"
    answer = await wecom.trans(target, servicer="bob")
    if (start, target) in ALLOWED:
        assert answer["errcode"] == 0
        assert await wecom.state() == (target, "bob" if target == 3 else "")
        assert wecom.fake.kf_state_moves == [KfMove(KF, ANNA, start, target, "bob" if target == 3 else "")]
    else:
        assert answer["errcode"] == 95016
        assert await wecom.state() == (start, "amy" if start == 3 else "")
        assert wecom.fake.kf_state_moves == []


async def test_a_session_is_the_bots_until_moved_and_a_rep_needs_naming(wecom: Wecom) -> None:
    assert await wecom.state() == (1, "")
    assert (await wecom.trans(3))["errcode"] == 95014  # state 3 without servicer_userid
    assert (await wecom.trans(9, "amy"))["errcode"] == 40058
    assert (await wecom.post("kf/service_state/get", {"external_userid": ANNA}))["errcode"] == 95000
    first = await wecom.trans(3, "amy")
    assert first["errcode"] == 0 and first["msg_code"]  # the first hand to a person returns a reply code
    assert (await wecom.trans(3, "bob"))["msg_code"] == ""  # 3 → 3 is a transfer, no new code
    ended = await wecom.trans(4)
    assert ended["msg_code"] in wecom.fake.welcome_codes  # the end-message code, for kf/send_msg_on_event
    assert [(m.from_state, m.to_state, m.servicer_userid) for m in wecom.fake.kf_state_moves] == [
        (1, 3, "amy"), (3, 3, "bob"), (3, 4, "")]
    assert [sent.body["service_state"] for sent in wecom.fake.sent] == [3, 3, 4]  # accepted calls, as sent


async def test_the_api_cannot_write_while_a_rep_serves_and_the_reps_answer_reaches_the_customer(
    wecom: Wecom,
) -> None:
    fake = wecom.fake
    fake.add_kf_text(KF, ANNA, "在吗")  # the API may write for 48 h after a customer message
    assert (await wecom.send("您好，请问有什么可以帮您"))["errcode"] == 0
    await wecom.trans(3, "amy")
    refused = await wecom.send("机器人还想说话")
    assert (refused["errcode"], refused["errmsg"]) == (95018, "send msg session status invalid")

    fake.add_kf_text(KF, ANNA, "还在吗？")
    assert fake.kf_state(KF, ANNA) == (3, "amy")  # the customer's message does not move the session
    with pytest.raises(KfSessionError, match="bob does not serve wmAnna"):
        fake.add_kf_servicer_text(KF, ANNA, "bob", "我是 bob")
    msgid = fake.add_kf_servicer_text(KF, ANNA, "amy", "在的，我是 Amy")

    synced = await wecom.sync()
    rep_item = next(item for item in synced if item["msgid"] == msgid)
    assert (rep_item["origin"], rep_item["servicer_userid"], rep_item["text"]["content"]) == (5, "amy", "在的，我是 Amy")
    seen = fake.messages_to(ANNA)
    assert [(sent.path, sent.text) for sent in seen] == [
        ("kf/send_msg", "您好，请问有什么可以帮您"), (SERVICER_PATH, "在的，我是 Amy")]
    [event] = [e for e in events_from_kf_messages(synced) if e.kind == "rep_message"]  # as the bot reads it
    assert (event.sender, event.text, event.extra["servicer"]) == (ANNA, "在的，我是 Amy", "amy")


async def test_a_rep_ends_the_session_and_the_customers_next_message_opens_a_new_one(wecom: Wecom) -> None:
    fake = wecom.fake
    await wecom.trans(3, "amy")
    with pytest.raises(KfSessionError):
        fake.end_kf_session(KF, ANNA, "bob")
    fake.end_kf_session(KF, ANNA, "amy")
    assert await wecom.state() == (4, "")
    synced = await wecom.sync()
    event = synced[-1]["event"]
    assert (event["event_type"], event["change_type"], event["old_servicer_userid"]) == (
        "session_status_change", 3, "amy")
    [ended] = events_from_kf_messages(synced)
    assert (ended.kind, ended.sender, ended.extra["servicer"]) == ("session_ended", ANNA, "amy")
    assert (await wecom.send("还能发吗"))["errcode"] == 95018  # an ended session takes no API messages
    assert (await wecom.trans(1))["errcode"] == 95016  # nor moves
    goodbye = await wecom.post("kf/send_msg_on_event", {"code": event["msg_code"], "msgtype": "text",
                                                        "text": {"content": "感谢咨询"}})
    assert goodbye["errcode"] == 0  # the end event's msg_code carries one closing message

    fake.add_kf_text(KF, ANNA, "我又来了")
    assert await wecom.state() == (0, "")
    assert (await wecom.send("欢迎回来"))["errcode"] == 0
    assert [(m.from_state, m.to_state, m.by) for m in fake.kf_state_moves] == [
        (1, 3, "api"), (3, 4, "servicer"), (4, 0, "customer")]


async def test_unassigned_customers_come_in_pages_until_is_last(wecom: Wecom) -> None:
    for index in range(5):
        wecom.fake.add_unassigned("leaver" if index % 2 == 0 else "gone", f"wmLeft{index}", dimission_time=1700000000)
    seen, cursor, pages = [], "", 0
    while True:
        page = await wecom.unassigned(cursor=cursor, page_size=2)
        assert page["errcode"] == 0
        seen += [(item["handover_userid"], item["external_userid"], item["dimission_time"]) for item in page["info"]]
        pages += 1
        if page["is_last"]:
            assert page["next_cursor"] == ""
            break
        cursor = page["next_cursor"]
    assert pages == 3
    assert [customer for _, customer, _ in seen] == [f"wmLeft{index}" for index in range(5)]
    assert seen[0] == ("leaver", "wmLeft0", 1700000000)
    wecom.fake.unassigned_page_limit = 4
    first = await wecom.unassigned()
    assert (len(first["info"]), first["is_last"]) == (4, False)
    assert (await wecom.unassigned(cursor="not-a-cursor"))["errcode"] == 40058


async def test_transfer_answers_per_customer_and_records_what_moved(wecom: Wecom) -> None:
    fake = wecom.fake
    fake.add_unassigned("leaver", "wmMine")
    fake.add_unassigned("gone", "wmTheirs")
    fake.add_follow_user("wmMine", "leaver")
    answer = await wecom.transfer(["wmMine", "wmTheirs", "wmNobody"])
    assert answer["errcode"] == 0
    assert answer["customer"] == [{"external_userid": "wmMine", "errcode": 0},
                                  {"external_userid": "wmTheirs", "errcode": 84061},  # not the leaver's customer
                                  {"external_userid": "wmNobody", "errcode": 40096}]  # unknown
    assert fake.transfers == [{"handover_userid": "leaver", "takeover_userid": "amy", "external_userid": "wmMine"}]
    assert [item["external_userid"] for item in (await wecom.unassigned())["info"]] == ["wmTheirs"]
    assert fake.follow_users["wmMine"] == {"leaver", "amy"}
    assert (await wecom.transfer(["wmMine"]))["customer"][0]["errcode"] == 84061  # already moved

    assert (await wecom.transfer([f"wm{index}" for index in range(101)]))["errcode"] == 40058  # ≤ 100 a call
    assert (await wecom.transfer([]))["errcode"] == 40058
    assert (await wecom.transfer(["wmTheirs"], takeover=""))["errcode"] == 40003
    assert len(fake.transfers) == 1
