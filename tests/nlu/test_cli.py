"""`scrm nlu ...` through Click's runner, on keyword rules (the Rasa-backed runs are in test_rasa.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from admin_cli.main import cli
from admin_cli.nlu_commands import nlu_group
from nlu.settings import NluSettings

RULES_ENV = {"SCRM__NLU__MODE": "rules", "SCRM__REDIS__URL": ""}


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["nlu", *args], input=input, env={**RULES_ENV, **(env or {})})


def test_every_command_has_help_with_an_example() -> None:
    assert isinstance(nlu_group, click.Group)
    for name, command in nlu_group.commands.items():
        assert command.help and "Example:" in command.help, name


def test_parse_json_prints_one_object_per_text() -> None:
    result = run("parse", "--json", "在吗", "拼团还差几个人", "转人工 13812345678")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["text"], r["intent"], r["source"]) for r in rows] == [
        ("在吗", "greet", "rules"), ("拼团还差几个人", "ask_group_buy_status", "rules"),
        ("转人工 13812345678", "want_human", "rules")]
    assert set(rows[0]) >= {"text", "intent", "confidence", "entities", "source"}
    assert rows[2]["entities"][0]["entity"] == "phone"
    assert "keyword rules" in result.stderr  # says so when it is not the model answering


def test_parse_reads_standard_input_one_text_per_line() -> None:
    result = run("parse", input="多少钱\n别再发了\n\n")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ask_price") and lines[1].startswith("unsubscribe")
    assert lines[2].startswith("out_of_scope")


def test_check_accepts_the_shipped_data() -> None:
    result = run("check")
    assert result.exit_code == 0 and "OK" in result.stdout


def test_check_rejects_bad_data_with_file_and_line(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(NluSettings().project_path(), project)
    (project / "data" / "bad.yml").write_text('version: "3.1"\nnlu:\n- intent: deny\n  examples: |\n    - 在吗\n')
    result = run("check", env={"SCRM__NLU__PROJECT_DIR": str(project)})
    assert result.exit_code == 1
    assert "bad.yml:5" in result.output and "'greet'" in result.output and "'deny'" in result.output


def test_train_refuses_bad_data_before_rasa_starts(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(NluSettings().project_path(), project)
    (project / "data" / "bad.yml").write_text("nlu: [unclosed\n")
    result = run("train", env={"SCRM__NLU__PROJECT_DIR": str(project), "SCRM__NLU__RASA_VENV": str(tmp_path)})
    assert result.exit_code == 1 and "bad.yml:" in result.output and "broken YAML" in result.output


@pytest.mark.parametrize("as_json", [False, True])
def test_test_scores_the_rules_on_the_held_out_set(as_json: bool) -> None:
    result = run("test", "--rules", *(["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    if as_json:
        (report,) = json.loads(result.stdout)
        assert report["total"] >= 240 and 0.5 < report["accuracy"] <= 1.0
        assert set(report["per_intent"]["greet"]) == {"precision", "recall", "f1", "support"}
    else:
        assert "intent accuracy" in result.stdout and "macro-F1" in result.stdout
