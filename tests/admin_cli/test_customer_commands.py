"""`scrm customers ...` and `scrm tags ...` through Click's runner, on customers made with the store's functions."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from admin_cli.common import when
from admin_cli.main import cli
from bot.settings import load_settings
from core.allowance import MESSAGE_WINDOW_S, Allowance, Grant
from crm_store import allowances
from crm_store.campaigns import create_campaign, spec_from_mapping
from crm_store.customers import Profile, record, resolve_customer
from crm_store.db import create_engine, session_factory
from crm_store.group_buys import open_group
from crm_store.models import Conversation, Customer
from crm_store.referrals import attribute, invite_code_for
from crm_store.rewards import qualify
from crm_store.social import bump
from flows.loader import read_directory
from flows.publishing import publish_flows, validate
from tests.conftest import Backend

VALID = Path(__file__).resolve().parents[1] / "flows" / "fixtures" / "valid"


async def seed(store_url: str) -> list[int]:
    """Three customers (张三 asked the price and is in a running flow), and the valid fixture published."""
    settings = load_settings(nlu={"mode": "rules"})
    flows = validate(read_directory(VALID), settings.lifecycle, settings.nlu)
    engine = create_engine(store_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            published = await publish_flows(session, flows, note="seed")
            ids = []
            for n, name in enumerate(["张三", "李四", "Wang"]):
                customer = await resolve_customer(session, "wecom", f"wm_{n}", Profile(display_name=name))
                await session.flush()
                await record(session, customer.id, "inbound.message", {"text": "多少钱" if n == 0 else "在吗"})
                ids.append(customer.id)
            session.add(Conversation(customer_id=ids[0], flow_id="price_question", flow_version=1,
                                     release_id=published.release_id, step_id="ask_product"))
        return ids
    finally:
        await engine.dispose()


class Scrm:
    def __init__(self, store_url: str) -> None:
        self.env = {"SCRM__STORE__URL": store_url, "SCRM__NLU__MODE": "rules", "SCRM__REDIS__URL": ""}

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = CliRunner().invoke(cli, list(args), env=self.env)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> tuple[Scrm, list[int]]:
    return Scrm(backend.store_url), asyncio.run(seed(backend.store_url))


def test_find_filters_by_tag_stage_and_text(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, li, wang) = scrm
    assert [row["id"] for row in run.json("customers", "find")] == [wang, li, zhang]  # last seen first
    run("customers", "tag", str(zhang), "高意向", "连衣裙")
    run("customers", "tag", str(li), "高意向")
    assert [r["id"] for r in run.json("customers", "find", "--tag", "高意向", "--tag", "连衣裙")] == [zhang]
    assert [r["id"] for r in run.json("customers", "find", "--text", "多少")] == [zhang]
    assert [r["id"] for r in run.json("customers", "find", "--text", "WM_2")] == [wang]
    assert [r["id"] for r in run.json("customers", "find", "--limit", "1", "--offset", "1")] == [li]
    run("customers", "set-stage", str(li), "意向")
    assert [r["id"] for r in run.json("customers", "find", "--stage", "interested")] == [li]
    text = run("customers", "find", "--stage", "意向").stdout
    assert text.splitlines()[0].split() == ["id", "name", "stage", "tags", "last", "seen", "identities"]
    assert "李四  意向" in text and "wecom:wm_1" in text
    assert "unknown stage 'nope'" in run("customers", "find", "--stage", "nope", ok=False).output
    assert run("customers", "find", "--text", "nobody").stdout == "no customers match\n"


def test_tag_adds_and_removes_as_the_admin(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, *_) = scrm
    assert run("customers", "tag", str(zhang), "高意向", "VIP").stdout == f"customer {zhang}: added 高意向, VIP\n"
    assert run.json("customers", "tag", str(zhang), "高意向") == {"customer": zhang, "added": [], "unchanged": ["高意向"]}
    assert run("customers", "tag", str(zhang), "VIP", "--remove").stdout == f"customer {zhang}: removed VIP\n"
    card = run.json("customers", "show", str(zhang))
    assert card["row"]["tags"] == ["高意向"]
    assert [(e["kind"], e["data"]["tag"], e["data"]["cause"]) for e in card["timeline"][:3]] == [
        ("tag.removed", "VIP", "admin"), ("tag.added", "VIP", "admin"), ("tag.added", "高意向", "admin")]
    assert "no customer 999999" in run("customers", "tag", "999999", "x", ok=False).output


def test_set_stage_refuses_a_move_the_lifecycle_does_not_allow(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, *_) = scrm
    refused = run("customers", "set-stage", str(zhang), "loyal", ok=False)
    assert refused.exit_code == 1 and "'lead' -> 'loyal' is not allowed" in refused.output
    assert "interested, customer, churned" in refused.output
    forced = run("customers", "set-stage", str(zhang), "忠诚", "--force", "--reason", "VIP 老客户")
    assert forced.stdout == f"customer {zhang}: lead (潜在) → loyal (忠诚)\n"
    assert run.json("customers", "set-stage", str(zhang), "loyal")["moved"] is False
    history = run.json("customers", "show", str(zhang))["stage_history"]
    assert [(h["from_stage"], h["to_stage"], h["reason"]) for h in history] == [("lead", "loyal", "admin: VIP 老客户")]


def test_show_prints_the_card_with_the_running_flow(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, *_) = scrm
    run("customers", "tag", str(zhang), "高意向")
    run("customers", "set-stage", str(zhang), "interested", "--reason", "asked twice")
    text = run("customers", "show", str(zhang)).stdout
    assert f"customer {zhang} 张三  wecom:wm_0" in text
    assert "stage: interested (意向)   marketing: allowed   owner: -" in text and "tags: 高意向" in text
    assert "running: flow price_question v1 at step ask_product" in text
    assert "lead → interested  admin: asked twice" in text
    assert "inbound.message" in text and "text=多少钱" in text and "tag.added" in text
    card = run.json("customers", "show", str(zhang))
    assert card["conversation"]["flow"] == "price_question" and card["stage_label"] == "意向"
    assert "no customer 424242" in run("customers", "show", "424242", ok=False).output


def test_funnel_counts_stages_with_conversion_and_bars(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, li, _) = scrm
    run("customers", "set-stage", str(zhang), "interested")
    run("customers", "set-stage", str(zhang), "customer")
    run("customers", "set-stage", str(li), "interested")
    rows = {row["stage"]: row for row in run.json("customers", "funnel", "--since", "2000-01-01")}
    assert (rows["lead"]["reached"], rows["interested"]["reached"], rows["customer"]["reached"]) == (3, 2, 1)
    assert rows["interested"]["conversion_from_previous"] == pytest.approx(2 / 3)
    text = run("customers", "funnel").stdout.splitlines()
    assert text[1].startswith("lead") and text[1].endswith("█" * 30)
    assert "67%" in text[2] and "50%" in text[3]


def test_tags_list_and_sync_follow_the_published_catalog(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, *_) = scrm
    run("customers", "tag", str(zhang), "高意向", "临时")
    counts = {(row["group"], row["tag"]): row["customers"] for row in run.json("tags", "list")}
    assert counts == {("意向", "高意向"): 1, ("意向", "低意向"): 0, ("偏好", "连衣裙"): 0, ("偏好", "衬衫"): 0,
                      ("", "临时"): 1}
    assert "(no group)  临时" in run("tags", "list").stdout
    assert run("tags", "sync").stdout == "tag catalog of release 1: 2 groups, 4 tags\n"


def test_tags_sync_without_a_release_says_what_to_do(backend: Backend, clean_env: None, tmp_path: Path) -> None:
    shutil.copytree(VALID, tmp_path / "flows")
    result = Scrm(backend.store_url)("tags", "sync", ok=False)
    assert result.exit_code == 1 and "nothing is published yet" in result.output


async def grow(store_url: str, zhang: int, li: int, wang: int) -> str:
    """李四 brought 张三 (arrival rewards granted), 张三 has an invite code and leads a group; social scores
    张三 6 (friends 1, converted 1), 李四 1 (groups led 1), Wang none. The group's code."""
    settings = load_settings(nlu={"mode": "rules"})
    weights = settings.growth.social_weights
    engine = create_engine(store_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            spec = spec_from_mapping({"code": "tea", "name": "春茶团", "price": 10, "group_size": 2, "group_hours": 24,
                                      "ends": "2099-01-01", "stock": 10}, ["lead"], [], settings.growth.timezone)
            campaign = await create_campaign(session, spec)
            group = await open_group(session, campaign, await session.get_one(Customer, zhang))
            await attribute(session, await session.get_one(Customer, zhang), li, "inv_TEST", "kf", 86_400)
            await qualify(session, zhang, "arrival", settings.growth.rewards)
            code = await invite_code_for(session, zhang)
            await bump(session, [zhang], "friends", weights)
            await bump(session, [zhang], "friends_converted", weights)
            await bump(session, [li], "groups_led", weights)
            return f"{group.code} {code}"
    finally:
        await engine.dispose()


def test_find_sorts_and_filters_by_social_value(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, li, wang) = scrm
    assert "social" not in run("customers", "find").stdout.splitlines()[0]  # nobody has any yet
    asyncio.run(grow(run.env["SCRM__STORE__URL"], zhang, li, wang))
    assert [(r["id"], r["social"]) for r in run.json("customers", "find", "--sort", "social")] == [
        (zhang, 6.0), (li, 1.0), (wang, 0.0)]  # no social_stats row counts as 0
    assert [r["id"] for r in run.json("customers", "find", "--min-social", "1")] == [li, zhang]  # last seen first
    assert [r["id"] for r in run.json("customers", "find", "--min-social", "2", "--sort", "social")] == [zhang]
    assert [r["id"] for r in run.json("customers", "find", "--min-social", "0", "--text", "wm_2")] == [wang]
    lines = run("customers", "find", "--sort", "social").stdout.splitlines()
    assert lines[0].split() == ["id", "name", "stage", "tags", "social", "last", "seen", "identities"]
    assert lines[1].split()[:4] == [str(zhang), "张三", "潜在", "6"]
    assert "--min-social" in run("customers", "find", "--min-social", "-1", ok=False).output


def test_show_has_social_value_inviter_invite_code_groups_and_rewards(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, li, wang) = scrm
    group, code = asyncio.run(grow(run.env["SCRM__STORE__URL"], zhang, li, wang)).split()
    text = run("customers", "show", str(zhang)).stdout
    assert ("social: 6   friends 1, converted 1, groups led 0, filled 0, downstream conversions 0") in text
    assert f"invited by: 李四 #{li}   invite code: {code}" in text
    assert f"groups: {group} tea open 1/2 (leader)" in text
    assert "rewards received:" in text and "grant  friend_welcome: 新人券5元  friend 张三" in text
    growth = run.json("customers", "show", str(zhang))["growth"]
    assert (growth["score"], growth["counters"]["friends_converted"], growth["inviter_id"]) == (6.0, 1, li)
    assert growth["groups"] == [{"code": group, "campaign": "tea", "status": "open", "members": 1, "size": 2,
                                 "leader": True}]
    assert [(r["kind"], r["rule_id"], r["friend_id"]) for r in growth["rewards"]] == [
        ("grant", "friend_welcome", zhang)]
    bare = run("customers", "show", str(wang)).stdout
    assert "social: 0   friends 0" in bare and "invited by: -   invite code: -" in bare
    assert "groups: -" in bare and "rewards received: none" in bare
    assert run.json("customers", "show", str(li))["growth"]["rewards"][0]["rule_id"] == "friend_arrived"


async def allow(store_url: str, zhang: int, li: int, wang: int, now: int) -> None:
    """张三: kf 2 of 5 used (with the bot), an OA grant run out; 李四: kf with a rep, one held message, last
    chatted on the OA (no allowance there yet); Wang: nothing."""
    kf_grant = Grant("message", now - 3600, 5, now - 3600 + MESSAGE_WINDOW_S)
    engine = create_engine(store_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            await allowances.save_many(session, {zhang: Allowance("kf", replace(kf_grant, used=2), session=1),
                                                 li: Allowance("kf", kf_grant, session=3)})
            await allowances.save_many(session, {zhang: Allowance("oa", Grant("message", now - 50 * 3600, 5,
                                                                             now - 2 * 3600, used=1))})
            await allowances.hold(session, li, "notify:group:1", "您的团已满", "group_filled")
            (await session.get_one(Customer, li)).reach = {"channel": "oa", "sender": "oLi", "at": now}
    finally:
        await engine.dispose()


def test_show_has_each_channels_quota_and_the_held_messages(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, li, wang) = scrm
    now = int(time.time())
    asyncio.run(allow(run.env["SCRM__STORE__URL"], zhang, li, wang, now))
    at, until = datetime.fromtimestamp(now - 3600, UTC), datetime.fromtimestamp(now - 3600 + MESSAGE_WINDOW_S, UTC)
    text = run("customers", "show", str(zhang)).stdout
    assert (f"quota kf: 3 of 5 left until {when(until)} (earned by message at {when(at)}); session: with the bot"
            in text)
    assert "quota oa: none left — resets when the customer writes again (earned by message at " in text
    assert "held messages: none" in text
    card = run.json("customers", "show", str(zhang))
    assert card["quota"]["kf"] | {"resets_at": None, "earned_at": None} == {
        "left": 3, "allowed": 5, "resets_at": None, "earned_by": "message", "earned_at": None,
        "session": "with the bot"}
    assert datetime.fromisoformat(card["quota"]["kf"]["resets_at"]) == until
    assert card["quota"]["oa"] | {"earned_at": None} == {"left": 0, "allowed": 0, "resets_at": None,
                                                         "earned_by": "message", "earned_at": None, "session": None}
    assert card["held_messages"] == 0
    text = run("customers", "show", str(li)).stdout
    assert f"quota kf: none left while the session is with a rep (earned by message at {when(at)})" in text
    assert "quota oa: none left — resets when the customer writes again\n" in text  # where they last chatted
    assert "held messages: 1 (sent after the customer's next message)" in text
    assert run.json("customers", "show", str(li))["held_messages"] == 1
    assert "quota: none on kf or the OA yet" in run("customers", "show", str(wang)).stdout
    assert run.json("customers", "show", str(wang))["quota"] == {}
