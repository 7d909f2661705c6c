"""The fake WeCom's customer groups: every group endpoint's answers and refusals, and what happens in groups.

The bot's sync, live codes, welcome and transfers are only as honest as these answers are WeCom's:
groupchat/list's pages and cursor (document 92120), groupchat/get (92122), join ways (92229) with their
automatic new group, welcome templates (92366), transfers (92127, 95703), and the 客户群变更事件 XML
(92130) read by the bot's own parser.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from defusedxml.ElementTree import fromstring

from bot.channels.base import parse_xml
from bot.sandbox.fake_group_activity import GroupChatError
from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.wechat_side import external_chat_xml

CORP, SECRET = "wwFakeCorp", "contacts-secret"
AMY, BEN = "amy", "ben"


class Api:
    def __init__(self, fake: FakeWeChat, client: TestClient) -> None:
        self.fake, self.client, self.token = fake, client, ""

    async def post(self, path: str, **body: Any) -> dict[str, Any]:
        if not self.token:
            async with self.client.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": SECRET}) as got:
                self.token = (await got.json())["access_token"]
        async with self.client.post(f"/cgi-bin/externalcontact/{path}", params={"access_token": self.token},
                                    json=body) as response:
            answer: dict[str, Any] = await response.json()
            return answer

    async def errcode(self, path: str, **body: Any) -> int:
        return int((await self.post(path, **body))["errcode"])

    async def listed(self, cursor: str = "", **body: Any) -> list[str]:
        """Every chat id groupchat/list gives, page after page (from `cursor`)."""
        chat_ids: list[str] = []
        while True:
            page = await self.post("groupchat/list", cursor=cursor, **body)
            assert page["errcode"] == 0, page
            chat_ids += [item["chat_id"] for item in page["group_chat_list"]]
            cursor = page["next_cursor"]
            if not cursor:
                return chat_ids


@pytest.fixture
async def api(aiohttp_client) -> Api:  # type: ignore[no-untyped-def]
    fake = FakeWeChat(CORP, [SECRET], "wxOa", "oa-secret")
    return Api(fake, await aiohttp_client(fake.app()))


def fields(xml: str) -> dict[str, Any]:
    return parse_xml(xml)


# --- groupchat/list and groupchat/get --------------------------------------------------------------
async def test_list_pages_with_a_cursor_that_stays_right_while_groups_are_added(api: Api) -> None:
    chat_ids = api.fake.populate_group_chats(25, 3, [AMY, BEN])
    first = await api.post("groupchat/list", limit=10)
    assert [g["chat_id"] for g in first["group_chat_list"]] == chat_ids[:10]
    assert {g["status"] for g in first["group_chat_list"]} == {0} and first["next_cursor"]
    newcomer = api.fake.add_group_chat(AMY, "新群")  # added between two pages: found at the end, nothing twice
    rest = await api.listed(limit=10, cursor=first["next_cursor"])
    assert rest == chat_ids[10:] + [newcomer]
    assert await api.listed(limit=1000) == chat_ids + [newcomer]
    assert await api.listed(limit=7, owner_filter={"userid_list": [BEN]}) == chat_ids[1::2]
    empty = await api.post("groupchat/list", limit=5, owner_filter={"userid_list": ["nobody"]})
    assert (empty["group_chat_list"], empty["next_cursor"]) == ([], "")


async def test_list_leaves_out_dismissed_groups_and_a_departed_owners_unless_asked(api: Api) -> None:
    kept, gone, orphan = (api.fake.add_group_chat(owner) for owner in (AMY, AMY, "leaver"))
    api.fake.dismiss_group(gone)
    assert api.fake.resign_owner("leaver") == [orphan]
    assert await api.listed(limit=10) == [kept]  # "当群主为离职成员时，必须要指定群主过滤"
    asked = await api.post("groupchat/list", limit=10, owner_filter={"userid_list": ["leaver"]})
    assert asked["group_chat_list"] == [{"chat_id": orphan, "status": 1}]
    assert await api.listed(limit=10, status_filter=1, owner_filter={"userid_list": ["leaver", AMY]}) == [orphan]
    assert await api.listed(limit=10, status_filter=3) == []


@pytest.mark.parametrize("body", [
    {}, {"limit": 0}, {"limit": 1001}, {"limit": "10"}, {"limit": True}, {"limit": 10, "cursor": "nonsense"},
    {"limit": 10, "cursor": "gcc99"}, {"limit": 10, "status_filter": 4},
    {"limit": 10, "owner_filter": {"userid_list": [f"rep{n}" for n in range(101)]}},
])
async def test_list_refuses_what_the_page_rules_out(api: Api, body: dict[str, Any]) -> None:
    api.fake.add_group_chat(AMY)
    assert await api.errcode("groupchat/list", **body) == 40058


async def test_get_answers_the_group_as_wecom_does_and_40050_for_unknown_or_dismissed(api: Api) -> None:
    chat_id = api.fake.add_group_chat(AMY, "新品群", ["wmAnna"], notice="每天 9 点上新", admins=[BEN])
    way = await api.post("groupchat/add_join_way", scene=2, chat_id_list=[chat_id], state="gc_new")
    [xml] = api.fake.join_group("wmBob", config_id=way["config_id"], name="Bob")
    api.fake.join_group("wmCat", chat_id=chat_id, scene=1, invitor=AMY, name="Cat")
    group = (await api.post("groupchat/get", chat_id=chat_id))["group_chat"]
    assert (group["name"], group["owner"], group["notice"], group["admin_list"]) == (
        "新品群", AMY, "每天 9 点上新", [{"userid": BEN}])
    members = {m["userid"]: m for m in group["member_list"]}
    assert list(members) == [AMY, "wmAnna", "wmBob", "wmCat"]
    assert (members[AMY]["type"], members["wmBob"]["type"]) == (1, 2)
    assert (members["wmBob"]["join_scene"], members["wmBob"]["state"]) == (3, "gc_new")
    assert (members["wmCat"]["join_scene"], members["wmCat"]["invitor"]) == (1, {"userid": AMY})
    assert "name" not in members["wmBob"]  # need_name "默认不返回"
    named = (await api.post("groupchat/get", chat_id=chat_id, need_name=1))["group_chat"]
    assert [m["name"] for m in named["member_list"]][2:] == ["Bob", "Cat"]
    assert group["member_version"] != fields(xml)["CurMemVer"]  # one more joined since that callback
    assert named["member_version"] == api.fake.group_chats[chat_id].mem_ver()
    assert await api.errcode("groupchat/get", chat_id="wrUnknown") == 40050
    assert await api.errcode("groupchat/get") == 40058
    api.fake.dismiss_group(chat_id)
    assert await api.errcode("groupchat/get", chat_id=chat_id) == 40050


# --- join ways ---------------------------------------------------------------------------------------
async def test_a_join_way_is_added_read_replaced_and_deleted(api: Api) -> None:
    first, second = api.fake.add_group_chat(AMY), api.fake.add_group_chat(AMY)
    added = await api.post("groupchat/add_join_way", scene=2, chat_id_list=[first], state="gc_1",
                           remark="一" * 40, room_base_name="新品群", room_base_id=10)
    config_id = added["config_id"]
    way = (await api.post("groupchat/get_join_way", config_id=config_id))["join_way"]
    assert (way["scene"], way["chat_id_list"], way["state"], way["remark"]) == (2, [first], "gc_1", "一" * 30)
    assert (way["auto_create_room"], way["room_base_name"], way["room_base_id"]) == (1, "新品群", 10)
    assert way["qr_code"].startswith("https://")
    assert await api.errcode("groupchat/update_join_way", config_id=config_id, scene=2,
                             chat_id_list=[first, second], auto_create_room=0) == 0
    replaced = (await api.post("groupchat/get_join_way", config_id=config_id))["join_way"]
    assert (replaced["chat_id_list"], replaced["state"], replaced["auto_create_room"]) == ([first, second], "", 0)
    assert replaced["qr_code"] == way["qr_code"]  # the same code to share, new settings behind it
    mini = await api.post("groupchat/add_join_way", scene=1, chat_id_list=[first])
    assert "qr_code" not in (await api.post("groupchat/get_join_way", config_id=mini["config_id"]))["join_way"]
    assert await api.errcode("groupchat/del_join_way", config_id=config_id) == 0
    assert await api.errcode("groupchat/get_join_way", config_id=config_id) == 41044
    assert await api.errcode("groupchat/get_join_way") == 41043
    assert await api.errcode("groupchat/del_join_way", config_id=config_id) == 41044


@pytest.mark.parametrize(("change", "errcode"), [
    ({"scene": 3}, 40058), ({"scene": None}, 40058), ({"chat_id_list": []}, 40058), ({"chat_id_list": "wr1"}, 40058),
    ({"chat_id_list": "six"}, 40058), ({"state": "s" * 31}, 40058), ({"room_base_name": "群" * 41}, 40058),
    ({"auto_create_room": 2}, 40058), ({"room_base_id": "10"}, 40058), ({"chat_id_list": ["wrUnknown"]}, 40050),
    ({"chat_id_list": "dismissed"}, 40050),
])
async def test_a_bad_join_way_is_refused_and_nothing_kept(api: Api, change: dict[str, Any], errcode: int) -> None:
    chat_ids = [api.fake.add_group_chat(AMY) for _ in range(6)]
    gone = api.fake.add_group_chat(AMY)
    api.fake.dismiss_group(gone)
    body = {"scene": 2, "chat_id_list": chat_ids[:2], "state": "s" * 30, "room_base_name": "群" * 40, **change}
    named = {"six": chat_ids, "dismissed": [chat_ids[0], gone]}
    if isinstance(body["chat_id_list"], str) and body["chat_id_list"] in named:
        body["chat_id_list"] = named[body["chat_id_list"]]
    assert await api.errcode("groupchat/add_join_way", **body) == errcode
    assert api.fake.join_ways == {}
    config_id = (await api.post("groupchat/add_join_way", scene=2, chat_id_list=chat_ids[:1]))["config_id"]
    assert await api.errcode("groupchat/update_join_way", config_id=config_id, **body) == errcode
    assert api.fake.join_ways[config_id].chat_id_list == chat_ids[:1]  # unchanged


async def test_a_live_code_fills_its_groups_in_order_then_creates_the_next(api: Api) -> None:
    api.fake.qr_join_max = 3  # owner + 2 customers make a group full
    first, second = api.fake.add_group_chat(BEN), api.fake.add_group_chat(AMY)
    config_id = (await api.post("groupchat/add_join_way", scene=2, chat_id_list=[first, second], state="gc_x",
                                room_base_name="新品群", room_base_id=7))["config_id"]
    joined = [api.fake.join_group(f"wm{n}", config_id=config_id) for n in range(5)]
    assert [len(xmls) for xmls in joined] == [1, 1, 1, 1, 2]
    assert [fields(xmls[-1])["ChatId"] for xmls in joined[:4]] == [first, first, second, second]
    create, join = (fields(xml) for xml in joined[4])
    created = api.fake.group_chats[create["ChatId"]]
    assert (create["ChangeType"], join["ChatId"], join["UpdateDetail"]) == ("create", created.chat_id, "add_member")
    assert (created.name, created.owner, list(created.members)) == ("新品群7", BEN, [BEN, "wm4"])
    assert created.members["wm4"].state == "gc_x"
    assert api.fake.join_ways[config_id].chat_id_list == [first, second, created.chat_id]
    for n in range(5, 12):  # 2 more groups a code can hold, then the oldest full one makes room
        api.fake.join_group(f"wm{n}", config_id=config_id)
    names = [api.fake.group_chats[c].name for c in api.fake.join_ways[config_id].chat_id_list]
    assert names == ["", "新品群7", "新品群8", "新品群9", "新品群10"]
    assert (await api.post("groupchat/get_join_way", config_id=config_id))["join_way"]["chat_id_list"] == \
        api.fake.join_ways[config_id].chat_id_list


async def test_a_full_code_that_creates_no_group_turns_the_customer_away(api: Api) -> None:
    api.fake.qr_join_max = 1
    chat_id = api.fake.add_group_chat(AMY)
    config_id = (await api.post("groupchat/add_join_way", scene=2, chat_id_list=[chat_id],
                                auto_create_room=0))["config_id"]
    with pytest.raises(GroupChatError, match="full"):
        api.fake.join_group("wmLate", config_id=config_id)
    with pytest.raises(GroupChatError, match="full"):
        api.fake.join_group("wmLate", chat_id=chat_id)  # the group's own QR code too
    assert list(api.fake.group_chats) == [chat_id] and list(api.fake.group_chats[chat_id].members) == [AMY]
    assert api.fake.join_group("wmInvited", chat_id=chat_id, scene=1, invitor=AMY)  # an invite is not a scan


# --- welcome templates --------------------------------------------------------------------------------
async def test_a_welcome_template_is_added_edited_read_and_deleted(api: Api) -> None:
    media_id = api.fake.add_media("image", b"\x89PNG", "cover.png", "image/png")
    added = await api.post("group_welcome_template/add", text={"content": "欢迎 %NICKNAME% 入群"},
                           miniprogram={"title": "商城", "pic_media_id": media_id, "appid": "wxShop",
                                        "page": "/index"}, notify=0)
    template_id = added["template_id"]
    got = await api.post("group_welcome_template/get", template_id=template_id)
    assert (got["text"], got["miniprogram"]["appid"]) == ({"content": "欢迎 %NICKNAME% 入群"}, "wxShop")
    link = {"title": "新品", "url": "https://shop.example/new"}
    assert await api.errcode("group_welcome_template/edit", template_id=template_id, link=link) == 0
    edited = await api.post("group_welcome_template/get", template_id=template_id)
    assert (edited["text"]["content"], edited["link"], "miniprogram" in edited) == ("欢迎 %NICKNAME% 入群", link, False)
    assert await api.errcode("group_welcome_template/del", template_id=template_id) == 0
    assert api.fake.group_welcome_templates == {}
    assert await api.errcode("group_welcome_template/get", template_id=template_id) == 40058


@pytest.mark.parametrize(("body", "errcode"), [
    ({}, 40058), ({"text": {"content": ""}}, 40058), ({"text": {"content": "字" * 1001}}, 45002),
    ({"link": {"title": "no url"}}, 40058), ({"link": {"title": "t" * 129, "url": "https://x"}}, 45002),
    ({"link": {"title": "t", "url": "https://x", "desc": "d" * 513}}, 45002),
    ({"miniprogram": {"title": "t", "appid": "wx", "page": "/"}}, 40058), ({"file": {}}, 40058),
    ({"video": {"media_id": "gone"}}, 40007), ({"image": {}}, 40058), ({"image": "pic"}, 40058),
    ({"image": {"pic_url": "https://p"}, "link": {"title": "t", "url": "https://x"}}, 40058),
])
async def test_a_bad_welcome_template_is_refused(api: Api, body: dict[str, Any], errcode: int) -> None:
    assert await api.errcode("group_welcome_template/add", **body) == errcode
    assert api.fake.group_welcome_templates == {}


async def test_the_welcome_library_holds_100_templates(api: Api) -> None:
    for _ in range(100):
        assert await api.errcode("group_welcome_template/add", text={"content": "hi"}) == 0
    assert await api.errcode("group_welcome_template/add", text={"content": "one more"}) == 40058
    assert await api.errcode("group_welcome_template/edit", template_id="msgTplNone", text={"content": "x"}) == 40058
    assert await api.errcode("group_welcome_template/del", template_id="") == 40058


# --- transfers ----------------------------------------------------------------------------------------
async def test_a_departed_owners_groups_move_and_the_others_say_why_not(api: Api) -> None:
    orphan, kept = api.fake.add_group_chat("leaver", members=["wmA"]), api.fake.add_group_chat(AMY)
    api.fake.resign_owner("leaver")
    answer = await api.post("groupchat/transfer", chat_id_list=[orphan, kept, "wrUnknown"], new_owner=BEN)
    assert [(f["chat_id"], f["errcode"]) for f in answer["failed_chat_list"]] == [(kept, 90500), ("wrUnknown", 40050)]
    group = api.fake.group_chats[orphan]
    assert (group.owner, group.status, BEN in group.members) == (BEN, 3, True)
    assert api.fake.group_transfers == [{"chat_id": orphan, "from": "leaver", "to": BEN, "kind": "resigned"}]
    joined, changed = (fields(xml) for xml in api.fake.chat_callbacks)
    assert (joined["UpdateDetail"], changed["UpdateDetail"], changed["ChatId"]) == ("add_member", "change_owner", orphan)
    assert await api.listed(limit=10) == [orphan, kept]  # no longer needs an owner filter
    assert (await api.post("groupchat/get", chat_id=orphan))["group_chat"]["owner"] == BEN
    assert await api.errcode("groupchat/transfer", chat_id_list=[orphan]) == 40003
    assert await api.errcode("groupchat/transfer", chat_id_list=[], new_owner=BEN) == 40058
    assert await api.errcode("groupchat/transfer", chat_id_list=[orphan] * 101, new_owner=BEN) == 40058


async def test_a_serving_owners_group_moves_at_most_twice_in_90_days(api: Api) -> None:
    clock = [time.time()]
    api.fake.now = lambda: clock[0]
    chat_id = api.fake.add_group_chat(AMY)
    for owner in (BEN, AMY):
        assert (await api.post("groupchat/onjob_transfer", chat_id_list=[chat_id], new_owner=owner))[
            "failed_chat_list"] == []
    third = await api.post("groupchat/onjob_transfer", chat_id_list=[chat_id], new_owner=BEN)
    assert [(f["chat_id"], f["errcode"]) for f in third["failed_chat_list"]] == [(chat_id, 45009)]
    assert api.fake.group_chats[chat_id].owner == AMY
    clock[0] += 90 * 86400 + 1
    assert (await api.post("groupchat/onjob_transfer", chat_id_list=[chat_id], new_owner=BEN))[
        "failed_chat_list"] == []
    assert [t["kind"] for t in api.fake.group_transfers] == ["onjob"] * 3


# --- what happens in groups, as callbacks ---------------------------------------------------------
def test_every_change_type_is_the_xml_wecom_sends(api: Api) -> None:
    fake = api.fake
    chat_id, create = fake.create_group_chat(AMY, "团购群", ["wmA"])
    assert fields(create) == {"ToUserName": CORP, "FromUserName": "sys", "CreateTime": fields(create)["CreateTime"],
                              "MsgType": "event", "Event": "change_external_chat", "ChatId": chat_id,
                              "ChangeType": "create"}
    [invited] = fake.join_group("wmB", chat_id=chat_id, scene=1, invitor=AMY)
    [scanned] = fake.join_group("wmC", chat_id=chat_id)
    left = fake.leave_group(chat_id, "wmB")
    removed = fake.leave_group(chat_id, "wmC", quit_scene=1)
    joins = [fields(invited), fields(scanned)]
    assert [(j["JoinScene"], j["MemChangeCnt"], j["MemChangeList"]) for j in joins] == [
        ("0", "1", {"Item": "wmB"}), ("3", "1", {"Item": "wmC"})]
    assert joins[1]["LastMemVer"] == joins[0]["CurMemVer"]  # versions chain, one change after another
    quits = [fields(left), fields(removed)]
    assert [(q["UpdateDetail"], q["QuitScene"], "JoinScene" in q) for q in quits] == [
        ("del_member", "0", False), ("del_member", "1", False)]
    assert quits[1]["CurMemVer"] == fake.group_chats[chat_id].mem_ver()
    renamed, noticed = fields(fake.rename_group(chat_id, "新名字")), fields(fake.change_notice(chat_id, "公告"))
    assert [(x["UpdateDetail"], "MemChangeCnt" in x) for x in (renamed, noticed)] == [
        ("change_name", False), ("change_notice", False)]
    assert (fake.group_chats[chat_id].name, fake.group_chats[chat_id].notice) == ("新名字", "公告")
    assert fields(fake.dismiss_group(chat_id))["ChangeType"] == "dismiss"


def test_what_cannot_happen_in_a_group_says_why_and_changes_nothing(api: Api) -> None:
    fake = api.fake
    chat_id = fake.add_group_chat(AMY, members=["wmA"])
    assert fake.join_group("wmA", chat_id=chat_id) == []  # in it already: WeCom says nothing
    version = fake.group_chats[chat_id].member_version
    for call, words in [
        (lambda: fake.leave_group(chat_id, "wmNobody"), "not in group"),
        (lambda: fake.leave_group(chat_id, AMY), "owns group"),
        (lambda: fake.leave_group(chat_id, "wmA", quit_scene=2), "quit_scene"),
        (lambda: fake.join_group("wmB"), "chat_id or config_id"),
        (lambda: fake.join_group("wmB", chat_id=chat_id, scene=4), "scene"),
        (lambda: fake.join_group("wmB", chat_id="wrUnknown"), "no group"),
        (lambda: fake.join_group("wmB", config_id="nope"), "no join way"),
        (lambda: fake.create_group_chat("wmCustomer"), "owned by a rep"),
        (lambda: fake.create_group_chat(AMY, members=[f"wm{n}" for n in range(500)]), "at most 500"),
        (lambda: fake.populate_group_chats(1, 501, [AMY]), "members a group"),
    ]:
        with pytest.raises(GroupChatError, match=words):
            call()
    fake.dismiss_group(chat_id)
    with pytest.raises(GroupChatError, match="dismissed"):
        fake.rename_group(chat_id, "x")
    assert fake.group_chats[chat_id].member_version == version


def test_populate_makes_many_full_groups_quickly(api: Api) -> None:
    started = time.perf_counter()
    chat_ids = api.fake.populate_group_chats(500, 200, [AMY, BEN])
    assert time.perf_counter() - started < 2.0  # 100,000 members; the benchmark's 2,000,000 scale from it
    group = api.fake.group_chats[chat_ids[-1]]
    assert (len(chat_ids), len(group.members), group.owner, len(api.fake.groups_of(group.owner))) == (500, 200, BEN, 250)
    assert group.as_api()["member_list"][1]["type"] == 2


def test_a_change_of_several_members_lists_each_as_an_item() -> None:
    xml = external_chat_xml(CORP, "wrGroup", "update", "add_member", join_scene=0, members=["wmA", "wmB", "ben"],
                            last_mem_ver="a" * 32, cur_mem_ver="b" * 32, created=1_700_000_000)
    root = fromstring(xml)
    assert [item.text for item in root.iterfind("MemChangeList/Item")] == ["wmA", "wmB", "ben"]
    assert [child.tag for child in root][-5:] == ["JoinScene", "MemChangeCnt", "MemChangeList", "LastMemVer",
                                                   "CurMemVer"]
    assert (root.findtext("MemChangeCnt"), root.findtext("CreateTime"), root.findtext("QuitScene")) == (
        "3", "1700000000", None)
    assert parse_xml(xml)["ChatId"] == "wrGroup"  # the bot's parser reads it (and every field but the list)
