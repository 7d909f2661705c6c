"""Bad training data is rejected with file, line and reason, before Rasa starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nlu.settings import NluSettings
from nlu.training_data import TrainingDataError, fingerprint, load_project

PROJECT = NluSettings().project_path()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(PROJECT, target)
    return target


def _write(project: Path, body: str) -> Path:
    path = project / "data" / "extra.yml"
    path.write_text('version: "3.1"\nnlu:\n' + body, encoding="utf-8")
    return path


def _problems(project: Path) -> list[str]:
    with pytest.raises(TrainingDataError) as caught:
        load_project(project)
    return [str(p) for p in caught.value.problems]


def test_shipped_project_is_valid_with_enough_examples_per_intent() -> None:
    data = load_project(PROJECT)
    for intent in data.intents:
        assert sum(1 for e in data.train if e.intent == intent) >= 40, intent
        assert any(e.intent == intent for e in data.test), intent


def test_same_text_under_two_intents_is_rejected_naming_both_places(project: Path) -> None:
    path = _write(project, "- intent: ask_price\n  examples: |\n    - 一个新例子\n    - 在吗\n")
    problems = _problems(project)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:6: ")
    assert "'ask_price'" in problems[0] and "'greet'" in problems[0] and "basics.yml:" in problems[0]


def test_duplicate_detection_ignores_case_width_and_spaces(project: Path) -> None:
    _write(project, "- intent: deny\n  examples: |\n    - Ｈ ｅｌｌｏ\n")
    assert "'greet'" in _problems(project)[0]


def test_unknown_entity_is_rejected(project: Path) -> None:
    path = _write(project, "- intent: ask_price\n  examples: |\n    - [面膜](produt)卖多少\n")
    (problem,) = _problems(project)
    assert problem.startswith(f"{path}:5: unknown entity 'produt'")


def test_unknown_intent_is_rejected(project: Path) -> None:
    path = _write(project, "- intent: ask_colour\n  examples: |\n    - 有红色吗\n")
    (problem,) = _problems(project)
    assert problem.startswith(f"{path}:5: unknown intent 'ask_colour'")


def test_broken_yaml_is_rejected_with_its_line(project: Path) -> None:
    path = _write(project, "- intent: greet\n  examples: |\n    - 你好呀呀\n - intent: [broken\n")
    (problem,) = _problems(project)
    assert problem.startswith(f"{path}:") and "broken YAML" in problem


def test_test_example_that_is_also_training_data_is_rejected(project: Path) -> None:
    with (project / "test" / "nlu_test.yml").open("a", encoding="utf-8") as handle:
        handle.write("    - 多少钱\n")
    (problem,) = _problems(project)
    assert "nlu_test.yml:" in problem and "held out" in problem


def test_fingerprint_changes_with_data_and_config_only(project: Path) -> None:
    before = fingerprint(project)
    (project / "test" / "nlu_test.yml").write_text((project / "test" / "nlu_test.yml").read_text() + "\n")
    assert fingerprint(project) == before  # the test set does not shape the model
    _write(project, "- intent: greet\n  examples: |\n    - 你好呀呀\n")
    assert fingerprint(project) != before
