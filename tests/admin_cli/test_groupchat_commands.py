"""`scrm groupchats …`, `scrm customers find --in-group` and `scrm report group-chats|group-buys|groups` through
Click's runner, on SQLite and PostgreSQL, on the known groups of tests/crm_store/test_group_chat_queries.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.simulator import fake_for
from bot.settings import load_settings
from crm_store.group_chat_models import GroupChatTag
from tests.admin_cli.harness import served
from tests.admin_cli.test_growth_commands import Scrm as GrowthScrm
from tests.admin_cli.test_growth_commands import groups_of_every_kind
from tests.conftest import Backend
from tests.crm_store.test_group_chat_queries import Known, known_groups


class Scrm(GrowthScrm):
    failure_exit = None  # each test says which status it expects


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> Scrm:
    return Scrm(backend.store_url, SCRM__GROWTH__TIMEZONE="Asia/Shanghai")


@pytest.fixture
def known(scrm: Scrm) -> Known:
    return scrm.run(known_groups)


# ---------------------------------------------------------------- list, show


def test_list_shows_groups_with_members_now(scrm: Scrm, known: Known) -> None:
    text = scrm("groupchats", "list").stdout
    assert text.splitlines()[0].split()[:6] == ["chat", "id", "name", "owner", "members", "customers"]
    assert any(line.split()[:5] == ["wrA", "新品首发1群", "zhang", "3", "2"] for line in text.splitlines())
    rows = scrm.json("groupchats", "list", "--owner", "li")
    assert [(r["chat_id"], r["name"], r["members"], r["customers"], r["tags"]) for r in rows] == [
        ("wrB", "老客群", 2, 1, [])]
    assert [r["chat_id"] for r in scrm.json("groupchats", "list", "--code", "gc_SPRING")] == ["wrA"]
    assert [r["chat_id"] for r in scrm.json("groupchats", "list", "--name", "首发")] == ["wrA"]
    assert scrm.json("groupchats", "list", "--status", "dismissed") == []
    assert "no groups match" in scrm("groupchats", "list", "--tag", "新品群").stdout


def test_show_lists_members_and_changes(scrm: Scrm, known: Known) -> None:
    text = scrm("groupchats", "show", "wrA").stdout
    assert "group wrA: 新品首发1群 (active)   owner: zhang" in text
    assert "members now: 3 (2 customers)" in text and "live code: gc_SPRING" in text
    assert f"join  customer {known.bing} 丙  扫码 code gc_P1 inviter {known.jia}" in text
    assert f"leave customer {known.yi} 乙  退群" in text
    detail = scrm.json("groupchats", "show", "wrA", "--changes", "2")
    assert [m["userid"] for m in detail["members_now"]] == ["wmA", "wmC", "zhang"]
    assert [(c["change"], c["userid"]) for c in detail["recent"]] == [("leave", "wmB"), ("join", "wmC")]


def test_show_of_an_unknown_group_is_a_clear_error(scrm: Scrm, known: Known) -> None:
    result = scrm("groupchats", "show", "wrNope", ok=False)
    assert result.exit_code == 1 and "no group 'wrNope'" in result.output and "scrm groupchats sync" in result.output


# ---------------------------------------------------------------- tag


def test_tag_adds_once_removes_and_lists(scrm: Scrm, known: Known) -> None:
    assert scrm("groupchats", "tag", "wrA", "wrB", "--tag", "新品群").stdout.splitlines() == [
        "group wrA: added 新品群", "group wrB: added 新品群"]
    assert "already tagged" in scrm("groupchats", "tag", "wrA", "--tag", "新品群").stdout
    assert scrm.json("groupchats", "tag", "wrB", "--tag", "新品群", "--remove") == {
        "changed": {"wrB": ["新品群"]}, "action": "removed"}
    assert [r["chat_id"] for r in scrm.json("groupchats", "list", "--tag", "新品群")] == ["wrA"]


@pytest.mark.parametrize(("args", "message"), [
    (("wrA", "wrNope", "--tag", "新品群"), "no group 'wrNope'"),
    (("wrA", "--tag", "新品裙"), "tag '新品裙' is not in the tag catalog (did you mean 新品群?)"),
])
def test_tag_with_bad_input_changes_nothing(scrm: Scrm, known: Known, args: tuple[str, ...], message: str) -> None:
    result = scrm("groupchats", "tag", *args, ok=False)
    assert result.exit_code == 1 and "nothing changed" in result.output and message in result.output
    assert scrm.count(GroupChatTag) == 0


# ---------------------------------------------------------------- customers find --in-group


def test_find_customers_in_groups(scrm: Scrm, known: Known) -> None:
    assert {r["display_name"] for r in scrm.json("customers", "find", "--in-group", "wrA")} == {"甲", "丙"}
    both = scrm.json("customers", "find", "--in-group", "新品首发1群", "--in-group", "老客群")
    assert [r["id"] for r in both] == [known.jia]
    assert "甲" in scrm("customers", "find", "--in-group", "老客群").stdout
    result = scrm("customers", "find", "--in-group", "wrNope", ok=False)
    assert result.exit_code == 2 and "--in-group" in result.output and "no group 'wrNope'" in result.output


# ---------------------------------------------------------------- reports


def test_group_chats_report(scrm: Scrm, known: Known) -> None:
    report = scrm.json("report", "group-chats")
    assert [(d["day"], d["joins"], d["leaves"]) for d in report["days"]] == [
        ("2026-12-01", 1, 0), ("2026-12-02", 2, 1), ("2026-12-03", 1, 0)]
    assert report["top_inviters"] == [{"customer_id": known.jia, "name": "甲", "joins": 2, "members_now": 1}]
    assert report["codes"] == [{"code": "gc_SPRING", "name": "春季新品", "groups": 1, "joins": 3, "leaves": 1,
                                "members_now": 2}]
    zhang = scrm.json("report", "group-chats", "--owner", "zhang", "--since", "2026-12-02")
    assert (zhang["owner"], zhang["joins"], zhang["leaves"], zhang["groups_now"]) == ("zhang", 2, 1, 1)
    text = scrm("report", "group-chats").stdout
    assert "groups now: 2   members now: 5   customers now: 3   joins: 4   leaves: 1" in text
    assert "day (Asia/Shanghai)" in text and "gc_SPRING" in text


def test_group_buys_report_keeps_its_old_name(scrm: Scrm) -> None:
    groups_of_every_kind(scrm)
    new = scrm("report", "group-buys", "--json")
    old = scrm("report", "groups", "--json")
    assert old.stdout == new.stdout and '"code": "tea"' in new.stdout
    assert "scrm report group-buys" in old.stderr and new.stderr == ""
    listed = [line.split()[0] for line in scrm("report", "--help").stdout.split("Commands:")[1].splitlines()
              if line.strip()]
    assert "group-buys" in listed and "group-chats" in listed and "groups" not in listed  # the old name is hidden


def test_html_has_both_group_sections(scrm: Scrm, known: Known, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    scrm("report", "html", "-o", str(path))
    page = path.read_text(encoding="utf-8")
    assert "<h2>Group-buys</h2>" in page and "<h2>Customer groups (客户群)</h2>" in page
    assert "<td>gc_SPRING</td><td>春季新品</td><td>1</td><td>3</td><td>1</td><td>2</td>" in page


# ---------------------------------------------------------------- sync, against the fake WeCom


@pytest.fixture
def fake_api(clean_env: None) -> Iterator[tuple[FakeWeChat, str]]:
    """The sandbox's fake API, with config.yaml's sandbox credentials, on a free port in its own thread."""
    fake = fake_for(load_settings(nlu={"mode": "rules"}))
    with served(fake.app()) as (url,):
        yield fake, f"{url}/cgi-bin"


def test_sync_stops_on_a_refusal_and_resumes(scrm: Scrm, fake_api: tuple[FakeWeChat, str]) -> None:
    fake, api = fake_api
    chat_ids = fake.populate_group_chats(5, 3, ["zhang"])
    env = {"SCRM__WECOM__API_BASE": api, "SCRM__GROUPCHATS__SYNC_PAGE_SIZE": "2"}
    fake.fail_next("externalcontact/groupchat/get", errcode=60011)  # no permission: refused, not retried
    stopped = scrm("groupchats", "sync", ok=False, env=env)
    assert stopped.exit_code == 1 and "60011" in stopped.output and "run the command again to continue" in stopped.output
    done = json.loads(scrm("groupchats", "sync", "--json", env=env).stdout)
    assert (done["status"], done["groups"], done["resumed"]) == ("done", 5, True)
    assert {row["chat_id"] for row in scrm.json("groupchats", "list")} == set(chat_ids)
    again = scrm("groupchats", "sync", "--restart", env=env)
    assert "done, 5 groups" in again.stdout and "resumed" not in again.stdout
    assert "groupchats sync:" in again.stderr  # the progress line
