"""`scrm demo` through Click's runner, on SQLite and PostgreSQL: a new store seeded once, read back with
the commands an admin would use; a second run refused, and with --force nothing made twice."""

from __future__ import annotations

from typing import Any

import pytest

from crm_store.growth_models import Campaign, EntryChannel
from crm_store.handoff_models import Rep
from crm_store.models import Customer, InboxItem, OutboxItem
from crm_store.office_hours import ALWAYS
from tests.admin_cli.harness import ScrmRunner
from tests.conftest import Backend

KINDS = ["flows", "rep", "rep", "campaign", "sequence", "channel", "customers"]


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> ScrmRunner:
    return ScrmRunner(backend.store_url)


def people(scrm: ScrmRunner) -> dict[str, dict[str, Any]]:
    return {row["display_name"]: row for row in scrm.json("customers", "find")}


def counts(scrm: ScrmRunner) -> dict[str, int]:
    return {model.__name__: scrm.count(model) for model in (Customer, Campaign, Rep, EntryChannel)}


def test_demo_seeds_a_new_store_with_everything_the_tour_needs(scrm: ScrmRunner) -> None:
    seeded = scrm.json("demo")
    assert [(part["kind"], part["made"]) for part in seeded["parts"]] == [(kind, True) for kind in KINDS]
    assert any("参团 <code>" in step for step in seeded["next"])

    campaign = scrm.json("campaigns", "show", "demo-nuts")
    assert (campaign["state"], campaign["group_size"], campaign["groups_filled"]) == ("running", 2, 1)
    assert campaign["fill_tags"] == ["拼团成功"]  # a catalog tag: the flows were published first
    reps = {rep["userid"]: rep for rep in scrm.json("reps", "list")}
    assert {userid: (rep["name"], rep["hours"], rep["on_now"]) for userid, rep in reps.items()} == {
        "zhangsan": ("张三", ALWAYS, True), "lisi": ("李四", ALWAYS, True)}  # a handoff is taken at any hour
    [sequence] = scrm.json("sequences", "list")
    assert (sequence["sequence"], sequence["enrolled"]) == ("new_lead", 1)
    [channel] = scrm.json("channels", "list")
    assert (channel["kind"], channel["adds"], channel["conversions"]) == ("kf_link", 2, 1)


def test_the_demo_customers_have_a_history_made_by_chatting(scrm: ScrmRunner) -> None:
    scrm("demo")
    found = people(scrm)
    assert {name: row["stage"] for name, row in found.items()} == {
        "小美": "customer", "阿杰": "customer", "老王": "interested"}
    assert {"拼团成功", "来自客服"} <= set(found["小美"]["tags"]) and "投诉" in found["老王"]["tags"]
    rewards = scrm.json("referrals", "rewards")["entries"]
    assert sorted((entry["rule_id"], entry["customer"]) for entry in rewards) == [
        ("friend_arrived", "小美"), ("friend_bought", "小美"), ("friend_welcome", "阿杰")]
    [handoff] = scrm.json("handoffs", "list", "--all")
    assert (handoff["customer"], handoff["rep"], handoff["status"], handoff["closed_by"]) == (
        "老王", "lisi", "closed", "wecom")  # so the tour's handoff goes to zhangsan, the rep page's default
    assert handoff["first_response_at"] is not None
    shown = scrm("customers", "show", str(found["老王"]["id"])).output
    assert "handoff.taken" in shown and "flow=price_question" in shown
    assert scrm("outbox", "list", "--status", "failed").output.strip() == "no failed items"
    assert scrm.count(InboxItem) and scrm.count(OutboxItem)  # it went the real path


def test_a_second_demo_is_refused_and_with_force_makes_nothing_twice(scrm: ScrmRunner) -> None:
    scrm("demo")
    before = counts(scrm)
    refused = scrm("demo", ok=False)
    assert refused.exit_code == 1
    assert "holds customers already" in refused.output and "--force" in refused.output
    forced = scrm.json("demo", "--force")
    assert [(part["kind"], part["made"]) for part in forced["parts"]] == [(kind, False) for kind in KINDS]
    assert counts(scrm) == before == {"Customer": 3, "Campaign": 1, "Rep": 2, "EntryChannel": 1}
