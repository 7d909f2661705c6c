"""`scrm groupchats codes …` through Click's runner against the fake WeCom served on a local port, on SQLite and
PostgreSQL: groups synced first, codes created, listed, shown, updated, deactivated, personal codes made once;
bad input refused before WeCom is asked anything."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner

from admin_cli.main import cli
from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.simulator import fake_for
from bot.settings import load_settings
from crm_store.customers import Profile, resolve_customer
from crm_store.group_chat_models import GroupJoinCode
from crm_store.growth_settings import RewardRule
from crm_store.models import Tag
from crm_store.rewards import qualify
from tests.admin_cli.harness import ScrmRunner, served
from tests.conftest import Backend


class Scrm(ScrmRunner):
    command = ("groupchats",)


@dataclass
class World:
    scrm: Scrm
    fake: FakeWeChat
    chats: list[str]


@pytest.fixture
def world(backend: Backend, clean_env: None) -> Iterator[World]:
    """Six groups on the fake WeCom, synced into the store; the catalog has the tag 新品群."""
    fake = fake_for(load_settings(nlu={"mode": "rules"}))
    chats = [fake.add_group_chat("zhangsan", f"新品群{n}", ["wm_old"]) for n in range(1, 7)]
    with served(fake.app()) as (url,):
        api = f"{url}/cgi-bin"
        scrm = Scrm(backend.store_url, SCRM__REDIS__URL=backend.redis_url, SCRM__WECOM__API_BASE=api,
                    SCRM__OA__API_BASE=api)
        scrm("sync")

        async def tag(session):  # type: ignore[no-untyped-def]
            session.add(Tag(name="新品群", group_name="社群"))

        scrm.run(tag)
        yield World(scrm, fake, chats)


def test_create_list_show_a_live_code(world: World) -> None:
    scrm, fake, chats = world.scrm, world.fake, world.chats
    made = scrm.json("codes", "create", "新品群活码", "--group", chats[0], "--group", chats[1], "--room-base-name",
                     "新品群", "--room-base-id", "7", "--welcome", "欢迎 %NICKNAME%", "--welcome-link-title", "新品",
                     "--welcome-link-url", "https://shop.example.com/n", "--tag", "新品群", "--fission")
    assert made["code"].startswith("gc_") and made["chat_ids"] == chats[:2] and made["fission"] is True
    [way] = fake.join_ways.values()
    assert (way.state, way.room_base_id, way.qr_code) == (made["code"], 7, made["qr_code"])
    assert fake.group_welcome_templates[made["welcome_template_id"]]["link"]["title"] == "新品"
    listed = scrm.json("codes", "list")
    assert [(r["code"], r["figures"]["joins"]) for r in listed] == [(made["code"], 0)]
    text = scrm("codes", "show", made["code"].lower()).stdout
    assert f"group live code {made['code']}: 新品群活码 (active, fission)" in text
    assert "welcome: 欢迎 %NICKNAME% [link: 新品]" in text and "joins: 0" in text
    table = scrm("codes", "list").stdout
    assert table.splitlines()[0].split()[:3] == ["code", "name", "groups"] and made["code"] in table


def test_bad_input_is_refused_before_wecom_is_asked(world: World) -> None:
    scrm, fake, chats = world.scrm, world.fake, world.chats
    too_many = [arg for chat in chats for arg in ("--group", chat)]
    result = scrm("codes", "create", "太多", *too_many, ok=False)
    assert result.exit_code == 1 and "at most 5 groups (WeCom's join way limit); 6 given" in result.output
    result = scrm("codes", "create", "不认识", "--group", "wr_nope", "--tag", "没有", ok=False)
    assert "unknown group(s) wr_nope: run scrm groupchats sync first" in result.output
    assert "unknown tag(s) 没有" in result.output
    result = scrm("codes", "create", "欢迎", "--group", chats[0], "--welcome", "欢" * 1001, ok=False)
    assert "welcome text is longer than 3000 bytes" in result.output
    assert "no group live code 'gc_NOPE'" in scrm("codes", "show", "gc_NOPE", ok=False).output
    assert fake.join_ways == {} and fake.group_welcome_templates == {}
    assert scrm.count(GroupJoinCode) == 0


def test_update_deactivate_and_a_personal_code(world: World) -> None:
    scrm, fake, chats = world.scrm, world.fake, world.chats
    made = scrm.json("codes", "create", "活码", "--group", chats[0], "--welcome", "你好", "--fission")
    code = made["code"]
    updated = scrm.json("codes", "update", code, "--group", chats[0], "--group", chats[2], "--no-auto-create",
                        "--welcome", "欢迎新朋友")
    way = fake.join_ways[made["config_id"]]
    assert way.chat_id_list == [chats[0], chats[2]] and way.auto_create_room == 0
    assert updated["welcome"] == {"text": "欢迎新朋友"} and updated["welcome_template_id"] == made["welcome_template_id"]
    assert fake.group_welcome_templates[made["welcome_template_id"]] == {"text": {"content": "欢迎新朋友"}}
    kept = scrm.json("codes", "update", code, "--no-welcome")  # groups left out: as WeCom offers them now
    assert kept["chat_ids"] == [chats[0], chats[2]] and kept["welcome"] == {} and fake.group_welcome_templates == {}

    async def customer(session):  # type: ignore[no-untyped-def]
        return (await resolve_customer(session, "wecom", "wm_fan", Profile("粉丝"))).id

    fan = scrm.run(customer)
    first = scrm.json("codes", "invite", code, "--customer", str(fan))
    assert scrm.json("codes", "invite", code, "--customer", str(fan)) == first  # made once
    assert fake.join_ways[next(c for c, w in fake.join_ways.items() if w.state == first["code"])].chat_id_list == [
        chats[0], chats[2]]
    assert f"qr: {first['qr_code']}" in scrm("codes", "invite", code, "--customer", str(fan)).stdout
    assert "no customer 999" in scrm("codes", "invite", code, "--customer", "999", ok=False).output
    assert scrm.json("codes", "show", code)["personal_codes"] == 1

    assert "deactivated" in scrm("codes", "deactivate", code).stdout
    assert fake.join_ways == {}  # the personal code's join way went too
    assert "inactive" in scrm("codes", "update", code, "--welcome", "x", ok=False).output
    assert [r["active"] for r in scrm.json("codes", "list", "--personal")] == [False, False]


def test_a_group_fission_grant_shows_in_the_referral_ledger_and_is_reversed_there(world: World) -> None:
    scrm = world.scrm
    rule = RewardRule(id="group_1", when="group_joined", tier=1, reward="社群专属券")

    async def granted(session):  # type: ignore[no-untyped-def]
        inviter = await resolve_customer(session, "wecom", "wm_inviter", Profile("邀请人"))
        friend = await resolve_customer(session, "wecom", "wm_friend", Profile("好友"))
        grants = await qualify(session, friend.id, "group_joined", [rule], inviter_id=inviter.id)
        again = await qualify(session, friend.id, "group_joined", [rule], inviter_id=inviter.id)
        assert again == []  # the friend counts once
        return grants[0].entry_id

    entry = scrm.run(granted)
    ledger = _referrals(scrm, "rewards", "--json")
    assert [(e["id"], e["rule_id"], e["reason"], e["customer"]) for e in ledger["entries"]] == [
        (entry, "group_1", "group_joined", "邀请人")]
    reversal = _referrals(scrm, "reverse", str(entry), "--reason", "好友退群", "--json")
    assert (reversal["kind"], reversal["reverses_id"]) == ("reversal", entry)


def _referrals(scrm: Scrm, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["referrals", *args], env=scrm.env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
