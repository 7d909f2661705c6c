"""`scrm flows ...` through Click's runner, on SQLite and PostgreSQL, with flow directories in tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from defusedxml import ElementTree

from admin_cli.main import cli
from tests.conftest import Backend

VALID = Path(__file__).resolve().parents[1] / "flows" / "fixtures" / "valid"
BROKEN_STEP = "flow: broken\nsteps:\n  - say: 你好\n  - goto: nowhere\n"  # line 4: an unknown step


class Scrm:
    """`scrm` against one store and one working flow directory."""

    def __init__(self, store_url: str, directory: Path) -> None:
        self.directory = directory
        self.env = {"SCRM__STORE__URL": store_url, "SCRM__FLOWS__DIRECTORY": str(directory),
                    "SCRM__NLU__MODE": "rules", "SCRM__REDIS__URL": ""}

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = CliRunner().invoke(cli, ["flows", *args], env=self.env)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def edit(self, name: str, text: str) -> None:
        (self.directory / name).write_text(text, encoding="utf-8")


@pytest.fixture
def scrm(backend: Backend, tmp_path: Path, clean_env: None) -> Scrm:
    shutil.copytree(VALID, tmp_path / "flows")
    return Scrm(backend.store_url, tmp_path / "flows")


@pytest.fixture
def no_store(tmp_path: Path, clean_env: None) -> Scrm:
    """For commands that never open the store."""
    shutil.copytree(VALID, tmp_path / "flows")
    return Scrm(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}", tmp_path / "flows")


def test_validate_counts_flows_tags_and_rules(no_store: Scrm) -> None:
    assert no_store("validate").stdout == "ok: 2 flows, 4 tags, 1 rules\n"


def test_validate_prints_every_error_with_file_and_line_and_exits_1(no_store: Scrm) -> None:
    no_store.edit("broken.yaml", BROKEN_STEP)
    no_store.edit("typo.yaml", "flow: typo\nsteps:\n  - sey: 你好\n")
    result = no_store("validate", ok=False)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"{no_store.directory / 'broken.yaml'}:4: flow broken, step step2: ") for line in lines)
    assert any(line.startswith(f"{no_store.directory / 'typo.yaml'}:3:") and "say" in line for line in lines)
    assert "2 error(s)" in result.stderr


def test_validate_paths_replace_files_of_the_same_name(no_store: Scrm, tmp_path: Path) -> None:
    draft = tmp_path / "draft" / "coupon.yaml"
    draft.parent.mkdir()
    draft.write_text("flow: coupon\nsteps:\n  - say: hi\n  - {goto: {flow: missing}}\n", encoding="utf-8")
    result = no_store("validate", str(draft), ok=False)
    assert result.exit_code == 1 and f"{draft}:4: flow coupon" in result.stdout and "missing" in result.stdout
    assert no_store("validate", str(VALID / "coupon.yaml")).stdout.startswith("ok: 2 flows")
    report = json.loads(no_store("validate", str(draft), "--json", ok=False).stdout)
    assert report["ok"] is False and report["errors"][0]["file"] == "coupon.yaml"


def test_publish_diff_history_rollback_round_trip(scrm: Scrm) -> None:
    assert "nothing is published yet" in scrm("list", ok=False).output
    first = scrm.json("publish", "--note", "first")
    assert first == {"release": 1, "changed": ["coupon", "price_question"], "removed": []}
    assert scrm("diff").stdout == "no differences\n"
    assert scrm("publish").stdout.startswith("nothing to publish")

    scrm.edit("coupon.yaml", (VALID / "coupon.yaml").read_text().replace("送您一张优惠券", "送您两张优惠券"))
    diff = scrm("diff").stdout
    assert "-  - say: 送您一张优惠券\n+  - say: 送您两张优惠券" in diff and "working/coupon.yaml" in diff
    listed = {row["flow"]: row for row in scrm.json("list", "--working")}
    assert listed["coupon"]["working"] == "changed" and listed["price_question"]["working"] == "unchanged"

    published = scrm("publish", "--note", "two coupons").stdout
    assert "published release 2" in published and "changed: coupon" in published
    assert "两张" in scrm("show", "coupon", "--source").stdout
    assert "一张" in scrm("show", "coupon", "--source", "--release", "1").stdout

    rolled = scrm.json("rollback")
    assert rolled["release"] == 3 and rolled["changed"] == ["coupon"]
    assert "一张" in scrm("show", "coupon", "--source").stdout
    releases = scrm.json("history")
    assert [(r["release"], r["note"]) for r in releases] == [
        (3, "rollback to release 1"), (2, "two coupons"), (1, "first")]
    assert releases[0]["versions"] == {"coupon": 1, "price_question": 1}  # the old text, the old version
    table = scrm("history").stdout
    assert "coupon@1 price_question@1" in table and "rollback to release 1" in table
    assert "no release 9" in scrm("rollback", "--to", "9", ok=False).output


def test_a_broken_directory_is_never_published(scrm: Scrm) -> None:
    scrm("publish")
    scrm.edit("broken.yaml", BROKEN_STEP)
    scrm.edit("coupon.yaml", "flow: coupon\nsteps:\n  - say: 改了\n")
    result = scrm("publish", "--note", "bad", ok=False)
    assert result.exit_code == 1
    assert "broken.yaml:4: flow broken, step step2:" in result.stdout and "nothing was changed" in result.stderr
    assert [r["release"] for r in scrm.json("history")] == [1]
    assert scrm("show", "coupon", "--source").stdout == (VALID / "coupon.yaml").read_text()


def test_export_then_import_publishes_the_same_files(scrm: Scrm, tmp_path: Path) -> None:
    scrm("publish")
    dest = tmp_path / "export"
    assert "4 files written" in scrm("export", str(dest)).stdout
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in VALID.iterdir())
    assert (dest / "coupon.yaml").read_text() == (VALID / "coupon.yaml").read_text()
    assert "not empty" in scrm("export", str(dest), ok=False).output
    (dest / "stale.yaml").write_text("flow: stale\n")
    scrm("export", str(dest), "--force")
    assert not (dest / "stale.yaml").exists()

    assert scrm("import", str(dest)).stdout.startswith("nothing to publish")
    (dest / "coupon.yaml").write_text("flow: coupon\nsteps:\n  - say: 导入的\n", encoding="utf-8")
    assert scrm.json("import", str(dest)) == {"release": 2, "changed": ["coupon"], "removed": []}
    assert scrm.json("history", "--limit", "1")[0]["note"] == f"import from {dest}"


def test_show_lists_triggers_and_one_line_per_step(scrm: Scrm) -> None:
    scrm("publish")
    text = scrm("show", "price_question").stdout
    assert "flow price_question (release 1, version 1, price_question.yaml) 询价" in text
    assert "  intent ask_price ≥0.7" in text and "  event enter_session (kf, code inv_…)" in text
    assert "  ask_product  ask: 您想了解哪款商品？  → step2, human (fail), bye (timeout)" in text
    assert "call: coupon  → step11, flow coupon (call)" in text
    shown = scrm.json("show", "coupon", "--working")
    assert [s["summary"] for s in shown["steps"]] == ["say: 送您一张优惠券", "wait: 1h", "end"]
    assert "no flow 'nope'" in scrm("show", "nope", ok=False).output


def test_graph_prints_mermaid_or_writes_an_svg(scrm: Scrm, tmp_path: Path) -> None:
    scrm("publish")
    assert scrm("graph", "coupon").stdout.startswith("flowchart TD\n")
    picture = tmp_path / "pq.svg"
    assert "13 steps drawn" in scrm("graph", "price_question", "--working", "-o", str(picture)).stdout
    root = ElementTree.fromstring(picture.read_text(encoding="utf-8"))
    assert root.tag.endswith("svg")
    assert "--output must end in .svg" in scrm("graph", "coupon", "-o", str(tmp_path / "x.png"), ok=False).output


TRY_FLOWS = {
    "hello.yaml": "flow: hello\ntriggers: [{intent: greet}]\nsteps:\n  - say: 你好呀，想了解什么？\n",
    "price.yaml": "flow: price\ntriggers: [{keywords: [多少钱]}]\nsteps:\n  - tag: [高意向]\n"
                  "  - set_stage: interested\n  - say: 现在 99 元\n",
    "welcome.yaml": "flow: welcome\ntriggers: [{event: enter_session, code: inv_}]\nsteps:\n"
                    "  - say: '欢迎！邀请码 {{ event.code }}'\n",
    "tags.yaml": "groups: {意向: [高意向]}\n",
}


def test_try_chats_through_the_real_bot_with_piped_input(tmp_path: Path, clean_env: None) -> None:
    for name, text in TRY_FLOWS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    env = {"SCRM__STORE__URL": f"sqlite+aiosqlite:///{tmp_path / 'never.db'}", "SCRM__REDIS__URL": ""}
    result = CliRunner().invoke(cli, ["flows", "try", "--flows", str(tmp_path), "--nlu", "rules"],
                                input="你好\n多少钱\n/enter inv_42\n/quit\n不会被发送\n", env=env)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "trying 3 flows" in out
    assert "you> 你好\nbot> 你好呀，想了解什么？\n     · message: intent greet" in out
    assert "flow hello: step1 (ended:completed)" in out
    assert "bot> 现在 99 元" in out and "tag +高意向" in out and "stage lead → interested" in out
    assert "bot> 欢迎！邀请码 inv_42" in out and "enter_session: no intent, code inv_42" in out
    assert "不会被发送" not in out  # /quit ends the chat
    assert not (tmp_path / "never.db").exists()  # the configured store is left alone


def test_try_refuses_broken_flows_before_starting(tmp_path: Path, clean_env: None) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN_STEP, encoding="utf-8")
    result = CliRunner().invoke(cli, ["flows", "try", "--flows", str(tmp_path), "--nlu", "rules"], input="你好\n")
    assert result.exit_code == 1 and "broken.yaml:4: flow broken" in result.stdout and "you>" not in result.stdout
