"""The evaluation's confusion table and its harmful cells, from small gold/predicted lists; and
`scrm nlu test --max-harmful` on a held-out set of three messages (keyword rules, no Rasa)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from admin_cli.main import cli
from nlu.evaluate import HARMFUL_INTENTS, _report_from_rasa, format_report, is_harmful, score
from nlu.settings import NluSettings

GOLD = ["complain", "complain", "complain", "ask_price", "unsubscribe", "refund", "ask_discount", "greet"]
PREDICTED = ["complain", "unsubscribe", "unsubscribe", "ask_price", "unsubscribe", "complain", "join_group_buy",
             "nlu_fallback"]
TEXTS = ["东西坏了", "发错货了！！！", "少发了一件！！！", "多少钱", "退订", "我要退款", "有拼团活动吗", "在吗"]


def test_the_costly_intents_are_defined_once() -> None:
    assert HARMFUL_INTENTS == {"unsubscribe", "join_group_buy", "refund"}
    assert is_harmful("complain", "unsubscribe") and is_harmful("ask_discount", "join_group_buy")
    assert not is_harmful("unsubscribe", "unsubscribe")  # a hit
    assert not is_harmful("refund", "complain") and not is_harmful("greet", "nlu_fallback")  # misses, not harm


def test_confusion_table_counts_every_gold_and_predicted_pair() -> None:
    report = score("t", GOLD, PREDICTED, TEXTS)
    assert report.table == {
        "ask_discount": {"join_group_buy": 1}, "ask_price": {"ask_price": 1},
        "complain": {"complain": 1, "unsubscribe": 2}, "greet": {"nlu_fallback": 1},
        "refund": {"complain": 1}, "unsubscribe": {"unsubscribe": 1},
    }
    assert sum(n for row in report.table.values() for n in row.values()) == len(GOLD)


def test_harmful_cells_are_costly_intents_read_into_other_messages() -> None:
    report = score("t", GOLD, PREDICTED, TEXTS)
    assert report.harmful == [("complain", "unsubscribe", 2, ["发错货了！！！", "少发了一件！！！"]),
                              ("ask_discount", "join_group_buy", 1, ["有拼团活动吗"])]
    assert report.harmful_total == 3
    assert score("t", ["complain", "refund"], ["complain", "refund"], ["a", "b"]).harmful_total == 0


def test_the_printed_report_shows_the_table_with_only_rows_and_columns_that_hold_a_mistake() -> None:
    shown = format_report(score("held-out", GOLD, PREDICTED, TEXTS)).splitlines()
    start = shown.index("confusion table (rows gold, columns predicted; ! harmful):")
    header, *rows = shown[start + 1:start + 6]
    assert header.split() == ["1", "2", "3", "4", "5", "6", "7"]
    assert rows[0].split() == ["1", "ask_discount", ".", ".", ".", ".", "1!", ".", "."]
    assert rows[1].split() == ["2", "complain", ".", "1", ".", ".", ".", ".", "2!"]
    assert rows[2].split() == ["3", "greet", ".", ".", ".", ".", ".", "1", "."]
    assert rows[3].split() == ["4", "refund", ".", "1", ".", ".", ".", ".", "."]
    assert "ask_price" not in "\n".join(shown[start:])  # right every time: no row, no column
    assert "harmful: 3 (a message read as join_group_buy, refund, unsubscribe when it meant something else; " \
           "goal 0)" in shown
    assert "  complain -> unsubscribe: 2  发错货了！！！ | 少发了一件！！！" in shown


def test_json_has_the_table_and_the_harmful_count() -> None:
    data = json.loads(json.dumps(score("t", GOLD, PREDICTED, TEXTS).to_dict(), ensure_ascii=False))
    assert data["confusion_table"]["complain"] == {"complain": 1, "unsubscribe": 2}
    assert data["harmful"]["count"] == 3
    assert data["harmful"]["intents"] == ["join_group_buy", "refund", "unsubscribe"]
    assert data["harmful"]["cells"][0] == {"gold": "complain", "predicted": "unsubscribe", "count": 2,
                                           "examples": ["发错货了！！！", "少发了一件！！！"]}


def test_cross_validation_reports_get_the_table_from_rasas_report() -> None:
    data = {"complain": {"precision": 1.0, "recall": 0.5, "f1-score": 0.67, "support": 4},
            "unsubscribe": {"precision": 0.5, "recall": 1.0, "f1-score": 0.67, "support": 2},
            "accuracy": 0.67}
    errors = [{"text": "发错货了！！！", "intent": "complain", "intent_prediction": {"name": "unsubscribe"}},
              {"text": "少发了！！", "intent": "complain", "intent_prediction": {"name": "unsubscribe"}}]
    report = _report_from_rasa("2-fold cross-validation", data, errors)
    assert report.table == {"complain": {"complain": 2, "unsubscribe": 2}, "unsubscribe": {"unsubscribe": 2}}
    assert report.harmful_total == 2


def test_cli_fails_when_the_held_out_set_has_more_harmful_predictions_than_allowed(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(NluSettings().project_path(), project)
    (project / "test" / "nlu_test.yml").write_text(
        'version: "3.1"\nnlu:\n- intent: complain\n  examples: |\n    - 发错货了！！！\n'
        "- intent: deny\n  examples: |\n    - 我不要退订\n"  # the rules read 退订 into it: harmful
        "- intent: greet\n  examples: |\n    - 老板在吗老板\n", encoding="utf-8")
    env = {"SCRM__NLU__MODE": "rules", "SCRM__REDIS__URL": "", "SCRM__NLU__PROJECT_DIR": str(project)}

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, ["nlu", "test", "--rules", *args], env=env)

    refused = run("--max-harmful", "0")
    assert refused.exit_code == 1
    assert "1 harmful predictions on the held-out set (more than 0)" in refused.output
    assert "deny -> unsubscribe: 1  我不要退订" in refused.output
    allowed = run("--max-harmful", "1", "--json")
    assert allowed.exit_code == 0, allowed.output
    (report,) = json.loads(allowed.stdout)
    assert report["harmful"]["count"] == 1 and report["confusion_table"]["deny"] == {"unsubscribe": 1}
