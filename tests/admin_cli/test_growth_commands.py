"""`scrm campaigns ...` and `scrm referrals ...` through Click's runner, on data made with the store's functions."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bot.settings import load_settings
from crm_store.campaigns import create_campaign, spec_from_mapping
from crm_store.customers import Profile, resolve_customer
from crm_store.group_buys import expire_due, join_group, open_group
from crm_store.growth_models import Campaign, GroupBuy
from crm_store.models import Customer, as_utc, utcnow
from crm_store.referrals import attribute, mark_converted
from crm_store.rewards import qualify
from crm_store.social import Counter, bump
from crm_store.tags import sync_catalog
from tests.admin_cli.harness import ScrmRunner
from tests.conftest import Backend

T = TypeVar("T")
SETTINGS = load_settings(nlu={"mode": "rules"})
STAGES = [stage.id for stage in SETTINGS.lifecycle.stages]
CATALOG = {"拼团": ("拼团成功",), "意向": ("高意向", "低意向")}


class Scrm(ScrmRunner):
    """`scrm` against one store, and that store for making data with the library functions."""

    def customers(self, *names: str) -> list[int]:
        async def work(session: AsyncSession) -> list[int]:
            made = [await resolve_customer(session, "wecom", f"wm_{name}", Profile(display_name=name))
                    for name in names]
            await session.flush()
            return [customer.id for customer in made]

        return self.run(work)


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> Scrm:
    run = Scrm(backend.store_url)
    run.run(lambda session: sync_catalog(session, CATALOG))
    return run


def running_campaign(run: Scrm, code: str = "tea", size: int = 3, stock: int = 100) -> int:
    async def work(session: AsyncSession) -> int:
        spec = spec_from_mapping(
            {"code": code, "name": "春茶三人团", "price": "59.90", "group_size": size, "group_hours": 24,
             "starts": utcnow() - timedelta(hours=1), "ends": "2099-12-31", "stock": stock},
            STAGES, [], SETTINGS.growth.timezone)
        return (await create_campaign(session, spec)).id

    return run.run(work)


# ---------------------------------------------------------------- campaigns create


def test_create_from_options_prints_and_stores_the_campaign(scrm: Scrm) -> None:
    made = scrm("campaigns", "create", "--code", "spring-tea", "--name", "春茶三人团", "--price", "59.90",
                "--group-size", "3", "--group-hours", "24", "--starts", "2099-12-01T20:00", "--ends", "2099-12-08",
                "--stock", "300", "--limit-per-customer", "2", "--new-customers-only", "--fill-stage", "成交",
                "--fill-tag", "拼团成功", "--fill-tag", "高意向").stdout
    assert "campaign spring-tea: 春茶三人团 (upcoming)" in made
    assert "price: ¥59.90   group: 3 people within 24h" in made
    assert "window: 2099-12-01 20:00 → 2099-12-08 00:00 (Asia/Shanghai)" in made
    assert "stock: 0/300 sold   limit: 2 group(s) per customer   new customers only: yes" in made
    assert "when a group fills: stage customer (成交), tags 拼团成功, 高意向" in made
    shown = scrm.json("campaigns", "show", "spring-tea")
    assert (shown["price_cents"], shown["product"], shown["fill_stage"], shown["fill_tags"]) == (
        5990, "春茶三人团", "customer", ["拼团成功", "高意向"])
    assert shown["starts_at"].startswith("2099-12-01 12:00:00")  # 20:00 in Shanghai is 12:00 UTC
    assert shown["open_groups"] == [] and shown["status"] == "open"
    again = scrm("campaigns", "create", "--code", "spring-tea", "--name", "x", "--price", "1", "--group-size", "2",
                 "--group-hours", "1", "--ends", "2099-12-08", "--stock", "1", ok=False)
    assert "campaign 'spring-tea' already exists" in again.output


def test_create_from_a_file(scrm: Scrm, tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_text("code: duo\nname: 双人团\nproduct: 龙井 250g\nprice: 19.9\ngroup_size: 2\ngroup_hours: 1.5\n"
                    "starts: 2099-01-01\nends: 2099-02-01 12:00\nstock: 10\nfill_stage: 成交\nfill_tags: 拼团成功\n",
                    encoding="utf-8")
    made = scrm.json("campaigns", "create", "--file", str(path))
    assert (made["code"], made["product"], made["price"], made["group_hours"], made["fill_tags"]) == (
        "duo", "龙井 250g", "19.90", 1.5, ["拼团成功"])
    assert made["ends_at"].startswith("2099-02-01 04:00:00") and made["fill_stage"] == "customer"
    both = scrm("campaigns", "create", "--file", str(path), "--code", "x", ok=False)
    assert "give --file or the options, not both" in both.output


def test_bad_options_name_every_problem_and_store_nothing(scrm: Scrm) -> None:
    result = scrm("campaigns", "create", "--code", "bad", "--name", "坏团", "--price", "-5", "--group-size", "0",
                  "--group-hours", "24", "--starts", "2099-12-02", "--ends", "2099-12-01", "--stock", "10",
                  "--fill-stage", "nowhere", "--fill-tag", "不存在", ok=False)
    assert result.exit_code == 1 and "nothing was stored" in result.output
    for problem in ("price: -5 is negative", "group_size: 0 is out of range 2..100", "ends: must be after starts",
                    "fill_stage: unknown stage 'nowhere'", "fill_tags: not in the published tag catalog: 不存在"):
        assert problem in result.output
    no_end = scrm("campaigns", "create", "--code", "bad", "--name", "坏团", "--price", "5", "--group-size", "1",
                  "--group-hours", "24", "--stock", "10", ok=False)
    assert "group_size: 1 is out of range" in no_end.output and "ends: required" in no_end.output
    assert scrm("campaigns", "list").stdout == "no campaigns yet (scrm campaigns create --file campaign.yaml)\n"


def test_bad_files_name_the_file_and_line_and_store_nothing(scrm: Scrm, tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("code: odd\nname: 怪团\nprice: 10\ngroup_size: 2\ngroup_hours: 2\nends: 2099-01-01\n"
                       "stock: 5\ncolour: red\n", encoding="utf-8")
    result = scrm("campaigns", "create", "--file", str(unknown), ok=False)
    assert f"{unknown}:8: unknown field(s) ['colour']" in result.output
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("code: odd\nname: [怪团\nprice: 10\n", encoding="utf-8")
    result = scrm("campaigns", "create", "--file", str(malformed), ok=False)
    assert "not a campaign, nothing was stored" in result.output and f"{malformed}:" in result.output
    assert "not valid YAML" in result.output
    listed = tmp_path / "list.yaml"
    listed.write_text("- code: odd\n", encoding="utf-8")
    assert "must be a mapping" in scrm("campaigns", "create", "--file", str(listed), ok=False).output
    assert scrm.json("campaigns", "list") == []


# ---------------------------------------------------------------- campaigns list, show, close


def groups_of_every_kind(scrm: Scrm) -> tuple[list[int], str]:
    """Campaign `tea` (groups of 3): one group expired, one filled, one open with 2 members. The open one's code."""
    campaign_id = running_campaign(scrm)
    people = scrm.customers("阿甲", "阿乙", "阿丙", "阿丁", "阿戊", "阿己", "阿庚")

    async def work(session: AsyncSession) -> str:
        campaign = await session.get_one(Campaign, campaign_id)
        customers = [await session.get_one(Customer, customer_id) for customer_id in people]
        now = utcnow()
        await open_group(session, campaign, customers[0], now)
        await expire_due(session, now + timedelta(days=2), 10)
        filled = await open_group(session, campaign, customers[1], now)
        for friend in customers[2:4]:
            await join_group(session, filled.code, friend, SETTINGS.growth.purchase_stages, now)
        waiting = await open_group(session, campaign, customers[4], now)
        await join_group(session, waiting.code, customers[5], SETTINGS.growth.purchase_stages, now)
        return waiting.code

    return people, scrm.run(work)


def test_list_show_and_close(scrm: Scrm) -> None:
    people, waiting = groups_of_every_kind(scrm)
    [row] = scrm.json("campaigns", "list")
    assert (row["groups_opened"], row["groups_open"], row["groups_filled"], row["groups_expired"]) == (3, 1, 1, 1)
    assert (row["sold"], row["stock"], row["fill_rate"], row["state"]) == (5, 100, 0.5, "running")
    listed = scrm("campaigns", "list").stdout.splitlines()
    assert listed[0].split()[:6] == ["code", "name", "price", "size", "window", "(Asia/Shanghai)"]
    assert listed[1].split()[:4] == ["tea", "春茶三人团", "¥59.90", "3"] and "5/100" in listed[1]
    assert listed[1].split()[-6:] == ["3", "1", "1", "1", "50%", "running"]
    shown = scrm("campaigns", "show", "tea").stdout
    assert "groups: 3 opened, 1 open, 1 filled, 1 expired   members: 6   fill rate: 50%" in shown
    assert f"{waiting}  阿戊 #{people[4]}  2/3" in shown
    assert scrm.json("campaigns", "show", "tea")["open_groups"][0]["leader_id"] == people[4]
    assert "no campaign 'nope'" in scrm("campaigns", "show", "nope", ok=False).output
    closed = scrm("campaigns", "close", "tea").stdout
    assert closed.startswith("campaign tea closed: no new groups or joins; 1 open group(s) expire")
    assert scrm.json("campaigns", "show", "tea")["state"] == "closed"
    assert "campaign 'tea' is already closed" in scrm("campaigns", "close", "tea", ok=False).output
    assert "no campaign 'nope'" in scrm("campaigns", "close", "nope", ok=False).output

    async def deadline(session: AsyncSession) -> datetime | None:
        return await session.scalar(select(func.max(GroupBuy.deadline)).where(GroupBuy.status == "open"))

    due = scrm.run(deadline)
    assert due is not None and as_utc(due) <= datetime.now(UTC)  # the scheduler expires it next


# ---------------------------------------------------------------- referrals


def bumped(scrm: Scrm, counts: dict[int, dict[Counter, int]]) -> None:
    async def work(session: AsyncSession) -> None:
        for customer_id, counters in counts.items():
            for counter, times in counters.items():
                for _ in range(times):
                    await bump(session, [customer_id], counter, SETTINGS.growth.social_weights)

    scrm.run(work)


def test_leaderboard_orders_by_score_friends_or_converted(scrm: Scrm) -> None:
    a, b, c, _ = scrm.customers("Ann", "Bob", "Cy", "Dee")
    bumped(scrm, {a: {"friends": 4}, b: {"friends": 2, "friends_converted": 1}, c: {"groups_filled": 1}})
    assert [(r["customer_id"], r["score"]) for r in scrm.json("referrals", "leaderboard")] == [
        (b, 7.0), (a, 4.0), (c, 3.0)]  # weights: friends 1, converted 5, filled 3
    assert [r["customer_id"] for r in scrm.json("referrals", "leaderboard", "--by", "friends")] == [a, b]
    assert [r["customer_id"] for r in scrm.json("referrals", "leaderboard", "--by", "converted")] == [b]
    assert [r["customer_id"] for r in scrm.json("referrals", "leaderboard", "--limit", "1")] == [b]
    lines = scrm("referrals", "leaderboard").stdout.splitlines()
    assert lines[0].split() == ["#", "name", "id", "friends", "converted", "groups", "led", "filled", "downstream",
                                "score"]
    assert lines[1].split() == ["1", "Bob", str(b), "2", "1", "0", "0", "0", "7"]


def referral_tree(scrm: Scrm) -> list[int]:
    """root → A (bought), B; A → C; C → D."""
    people = scrm.customers("Root", "A", "B", "C", "D")
    root, a, b, c, d = people

    async def work(session: AsyncSession) -> None:
        for friend, inviter in ((a, root), (b, root), (c, a), (d, c)):
            customer = await session.get_one(Customer, friend)
            assert (await attribute(session, customer, inviter, "inv_TEST", "kf", 86_400)).referral is not None
        await mark_converted(session, a)
        (await session.get_one(Customer, a)).stage = "customer"

    scrm.run(work)
    return people


def test_tree_shows_who_brought_whom_with_depth_and_truncation(scrm: Scrm) -> None:
    root, a, b, c, d = referral_tree(scrm)
    assert scrm("referrals", "tree", str(root)).stdout == (
        f"Root #{root} (潜在)\n"
        f"├─ A #{a} (成交) ✓\n"
        f"│  └─ C #{c} (潜在)\n"
        f"│     └─ D #{d} (潜在)\n"
        f"└─ B #{b} (潜在)\n"
        "level 1: 2   level 2: 1   level 3: 1   total: 4\n")
    shallow = scrm("referrals", "tree", str(root), "--depth", "1").stdout
    assert f"C #{c}" not in shallow and shallow.endswith("level 1: 2   total: 2\n")
    cut = scrm("referrals", "tree", str(root), "--limit", "2").stdout
    assert f"B #{b}" in cut and f"C #{c}" not in cut
    assert cut.endswith("… 2 more (showing 2 of 4: raise --limit or lower --depth)\n")
    data = scrm.json("referrals", "tree", str(a))
    assert (data["levels"], data["total"], [row["customer_id"] for row in data["rows"]]) == (
        {"1": 1, "2": 1}, 2, [c, d])
    assert scrm("referrals", "tree", str(d)).stdout.endswith("brought nobody yet\n")
    assert "no customer 999999" in scrm("referrals", "tree", "999999", ok=False).output


def test_tree_of_a_root_with_100000_descendants_loads_only_the_limit(scrm: Scrm) -> None:
    [root] = scrm.customers("Star")

    async def work(session: AsyncSession) -> None:
        await session.execute(text(
            "INSERT INTO customers (display_name) WITH RECURSIVE n(i) AS "
            "(SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) SELECT 'f' || i FROM n"))
        await session.execute(text(
            "INSERT INTO referrals (friend_id, inviter_id, via, channel, created_at) "
            "SELECT id, :root, 'inv_TEST', '', CURRENT_TIMESTAMP FROM customers WHERE id <> :root"), {"root": root})

    scrm.run(work)
    started = time.monotonic()
    data = scrm.json("referrals", "tree", str(root))
    printed = scrm("referrals", "tree", str(root), "--limit", "50").stdout
    assert time.monotonic() - started < 10, "two trees of 100,000 should take a second or two"
    assert (data["total"], data["shown"], len(data["rows"])) == (100_000, 200, 200)
    assert printed.endswith("level 1: 100000   total: 100000\n… 99950 more (showing 50 of 100000: "
                            "raise --limit or lower --depth)\n")


def test_rewards_ledger_and_reverse(scrm: Scrm) -> None:
    inviter, friend, other = scrm.customers("邀请人", "好友", "路人")

    async def work(session: AsyncSession) -> None:
        await attribute(session, await session.get_one(Customer, friend), inviter, "inv_TEST", "kf", 86_400)
        await qualify(session, friend, "arrival", SETTINGS.growth.rewards)

    scrm.run(work)
    ledger = scrm.json("referrals", "rewards")
    grants = {entry["rule_id"]: entry for entry in ledger["entries"]}
    assert {rule: (e["kind"], e["customer_id"], e["friend_id"]) for rule, e in grants.items()} == {
        "friend_arrived": ("grant", inviter, friend), "friend_welcome": ("grant", friend, friend)}
    assert ledger["totals"] == {"friend_arrived": {"grant": 1, "reversal": 0},
                                "friend_welcome": {"grant": 1, "reversal": 0}}
    mine = scrm.json("referrals", "rewards", "--customer", str(inviter))["entries"]
    assert [(e["rule_id"], e["reward"], e["friend"]) for e in mine] == [("friend_arrived", "积分10", "好友")]
    assert scrm.json("referrals", "rewards", "--customer", str(other))["entries"] == []
    assert "no customer 424242" in scrm("referrals", "rewards", "--customer", "424242", ok=False).output
    grant = grants["friend_arrived"]["id"]
    reversed_ = scrm("referrals", "reverse", str(grant), "--reason", "fake account").stdout
    assert reversed_.startswith("reversal #") and f"of grant #{grant}: friend_arrived (积分10) to 邀请人" in reversed_
    again = scrm("referrals", "reverse", str(grant), "--reason", "twice", ok=False)
    assert again.exit_code == 1 and f"grant #{grant} is already reversed" in again.output
    assert "no grant #424242" in scrm("referrals", "reverse", "424242", "--reason", "x", ok=False).output
    assert "--reason" in scrm("referrals", "reverse", str(grant), ok=False).output
    listed = scrm("referrals", "rewards").stdout
    [reversal] = [line.split() for line in listed.splitlines() if "reversal " in line]
    assert reversal[3:] == ["reversal", "friend_arrived", "邀请人", f"#{inviter}", "好友", f"#{friend}", "积分10",
                            f"#{grant}", "fake", "account"]
    assert listed.splitlines()[-3:] == ["rule            grants  reversals  net",
                                        "friend_arrived  1       1          0",
                                        "friend_welcome  1       0          1"]


def test_rescore_applies_the_configured_weights(scrm: Scrm) -> None:
    a, b = scrm.customers("Ann", "Bob")
    bumped(scrm, {a: {"friends": 2}, b: {"friends_converted": 1}})
    result = scrm("referrals", "rescore", env={"SCRM__GROWTH__SOCIAL_WEIGHTS__FRIENDS": "10"})
    assert result.stdout.startswith("rescored 2 customer(s) with weights friends=10, friends_converted=5")
    assert [(r["customer_id"], r["score"]) for r in scrm.json("referrals", "leaderboard")] == [(a, 20.0), (b, 5.0)]
    assert scrm.json("referrals", "rescore")["rescored"] == 2
    assert [r["score"] for r in scrm.json("referrals", "leaderboard")] == [5.0, 2.0]
