"""The FAQ in the NLU layer without Rasa: the training project, the fingerprint, the cache, the rules, parsing.

Rasa itself is faked at the transport (tests/nlu/conftest.py FakeRasa) with a response recorded
from Rasa 3.6 serving the starter FAQ; tests/nlu/test_faq_rasa.py runs the real one.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from admin_cli.main import cli
from core.shared_state import MemoryState, SharedState
from nlu.cache import ParseCache
from nlu.client import NluClient, faq_match
from nlu.faq_training import (
    FAQ_DATA_FILE,
    SELECTOR,
    FaqRows,
    build_project,
    check_faq,
    held_out,
    normal_form,
)
from nlu.intent import Entity, FaqMatch, Intent
from nlu.rasa_runtime import REQUIREMENTS, model_file, project_fingerprint
from nlu.rules import FaqRules, load_rules
from nlu.server import ManagedRasa
from nlu.settings import PACKAGE_DIR, NluSettings
from nlu.swap import STATE_FILE, SwapFailed, request_swap, write_json
from nlu.training_data import TrainingDataError, fingerprint, load_examples, load_project
from tests.nlu.conftest import STARTER_FLOWS, FakeRasa, starter_faq

PROJECT = PACKAGE_DIR / "project"
ROWS: FaqRows = (
    ("delivery_time", ("拍了多久能发出去啊", "下单以后大概几天能收到货", "你们发货速度咋样"), "48 小时内发货。"),
    ("invoice", ("能开发票吗", "发票怎么开"), "可以开电子发票。"),
)

# What Rasa 3.6 answered for "下单以后大概几天能收到货呀" with the starter FAQ (ranking cut to four).
RECORDED_SELECTOR = {
    "response_selector": {
        "all_retrieval_intents": ["faq"],
        "faq": {
            "response": {"responses": [{"text": "delivery_time"}], "confidence": 0.9731,
                         "intent_response_key": "faq/delivery_time", "utter_action": "utter_faq/delivery_time"},
            "ranking": [
                {"id": 1, "confidence": 0.9731, "intent_response_key": "faq/delivery_time"},
                {"id": 2, "confidence": 0.0102, "intent_response_key": "faq/courier"},
                {"id": 3, "confidence": 0.0064, "intent_response_key": "faq/remote_areas"},
                {"id": 4, "confidence": 0.0021, "intent_response_key": "faq/shipping_fee"},
            ],
        },
    },
}


# ---------------------------------------------------------------- the training project


def test_the_build_adds_the_faq_to_the_project_and_leaves_the_source_alone(tmp_path: Path) -> None:
    before = fingerprint(PROJECT)
    build = build_project(PROJECT, tmp_path / "build", ROWS)
    config = yaml.safe_load((build / "config.yml").read_text(encoding="utf-8"))
    names = [component["name"] for component in config["pipeline"]]
    assert names.index("ResponseSelector") == names.index("DIETClassifier") + 1
    selector = config["pipeline"][names.index("ResponseSelector")]
    assert selector["retrieval_intent"] == "faq" and selector["random_seed"] == SELECTOR["random_seed"]
    domain = yaml.safe_load((build / "domain.yml").read_text(encoding="utf-8"))
    assert "faq" in domain["intents"] and "greet" in domain["intents"]
    assert domain["responses"]["utter_faq/invoice"] == [{"text": "invoice"}]  # the answer is not in the model
    examples = load_examples(build / "data" / FAQ_DATA_FILE)
    assert [(e.intent, e.text) for e in examples][:2] == [("faq/delivery_time", "拍了多久能发出去啊"),
                                                        ("faq/delivery_time", "下单以后大概几天能收到货")]
    assert "可以开电子发票。" not in [e.text for e in examples]  # the answers are not examples
    assert (build / "jieba" / "userdict.txt").exists() and (build / "data" / "basics.yml").exists()
    assert fingerprint(PROJECT) == before and not (PROJECT / "data" / FAQ_DATA_FILE).exists()


def test_without_an_faq_the_model_is_the_projects_as_before() -> None:
    settings = NluSettings()
    assert project_fingerprint(settings) == fingerprint(PROJECT, REQUIREMENTS.read_text(encoding="utf-8"))
    assert model_file(settings, faq=()) == model_file(settings)


def test_the_fingerprint_follows_the_questions_not_the_answers() -> None:
    settings = NluSettings()
    with_faq = project_fingerprint(settings, ROWS)
    assert with_faq != project_fingerprint(settings)
    reworded = ((ROWS[0][0], ROWS[0][1], "改了回复。"), ROWS[1])  # answers are sent from the release
    assert project_fingerprint(settings, reworded) == with_faq
    asked_more = ((ROWS[0][0], (*ROWS[0][1], "几号能到"), ROWS[0][2]), ROWS[1])
    assert project_fingerprint(settings, asked_more) != with_faq
    asked_more = ((ROWS[0][0], (*ROWS[0][1], "几号能到"), ROWS[0][2]), ROWS[1])
    assert project_fingerprint(settings, asked_more) != with_faq
    renamed = (("ship_time", ROWS[0][1], ROWS[0][2]), ROWS[1])
    assert project_fingerprint(settings, renamed) != with_faq


def test_the_held_out_faq_phrasings_are_apart_from_the_intents_test_set() -> None:
    data = load_project(PROJECT)
    assert data.faq_test and all(e.intent.startswith("faq/") for e in data.faq_test)
    assert not any(e.intent.startswith("faq/") for e in data.test)


def test_a_question_that_is_an_intent_example_is_refused_with_its_line() -> None:
    data = load_project(PROJECT)
    example = data.train[0]
    rows = (*ROWS, ("clash", (example.text, "别的问法"), "…"))
    with pytest.raises(TrainingDataError) as caught:
        check_faq(rows, data)
    problem = caught.value.problems[0]
    assert (problem.file, problem.line) == (example.file, example.line)
    assert "FAQ entry 'clash'" in problem.reason and example.intent in problem.reason


def test_held_out_phrasings_must_be_held_out_and_those_of_missing_entries_are_skipped() -> None:
    data, starter = load_project(PROJECT), starter_faq().training_rows()
    check_faq(starter, data)  # the shipped FAQ agrees with the intents' data
    usable, missing = held_out(starter, data)
    assert len(usable) == len(data.faq_test) and missing == ()
    first = data.faq_test[0]
    leaked = tuple((entry, (*questions, first.text), answer) if f"faq/{entry}" == first.intent
                   else (entry, questions, answer) for entry, questions, answer in starter)
    with pytest.raises(TrainingDataError, match="held-out set must be held out"):
        held_out(leaked, data)
    usable, missing = held_out(starter[1:], data)  # a brand's FAQ without the first entry still trains
    assert missing == (starter[0][0],) and first not in usable


# ---------------------------------------------------------------- cache, rules, parsing


async def test_the_cache_keeps_the_faq_match(state: SharedState) -> None:
    cache = ParseCache(state, 60, "nlu-test", 1.0)
    match = FaqMatch("delivery_time", 0.9731, (("delivery_time", 0.9731), ("courier", 0.0102)))
    await cache.put("几天能到", Intent("faq", 0.91, (Entity("product", "面膜", 0, 2, "rules"),), "rasa", match))
    await cache.put("你好", Intent("greet", 0.99))
    got = await cache.get("几天能到")
    assert got is not None and (got.name, got.source, got.faq) == ("faq", "cache", match)
    assert got.entities == (Entity("product", "面膜", 0, 2, "rules"),)
    plain = await cache.get("你好")
    assert plain is not None and plain.faq is None


def test_the_rules_answer_an_faq_question_contained_in_the_message() -> None:
    rules, faq = load_rules(PROJECT / "rules.yml"), FaqRules(ROWS, {"invoice": "开发票"})
    intent = rules.classify("请问下单以后大概几天能收到货呀？", faq)
    assert (intent.name, intent.confidence, intent.source) == ("faq", 1.0, "rules")
    assert intent.faq == FaqMatch("delivery_time", 1.0)
    assert rules.classify("怎么开发票", faq).faq == FaqMatch("invoice", 1.0)  # by its title
    assert rules.classify("TD", faq).name == "unsubscribe"  # an intent's exact phrase still wins
    assert rules.classify("今天天气不错", faq).faq is None


def test_the_longest_faq_phrase_wins() -> None:
    faq = FaqRules((("short", ("发票",), "a"), ("long", ("电子发票怎么开",), "b")))
    assert faq.match("我想问电子发票怎么开") == ("long", len(normal_form("电子发票怎么开")))
    assert faq.match("发票") == ("short", 2)
    assert FaqRules((("tiny", ("吗",), "a"),)).match("在吗") == ("", 0)  # one character matches everything


def test_a_recorded_rasa_answer_becomes_intent_faq() -> None:
    match = faq_match(RECORDED_SELECTOR)
    assert match == FaqMatch("delivery_time", 0.9731,
                             (("delivery_time", 0.9731), ("courier", 0.0102), ("remote_areas", 0.0064)))
    assert faq_match({"intent": {"name": "greet"}}) is None
    assert faq_match({"response_selector": {"faq": {"response": {"intent_response_key": None}}}}) is None


async def test_the_client_parses_the_selector_and_keeps_the_intent_faq(fake_rasa: FakeRasa,
                                                                       nlu_settings) -> None:
    fake_rasa.intent, fake_rasa.confidence, fake_rasa.extra = "faq", 0.88, RECORDED_SELECTOR
    client = NluClient(nlu_settings(), MemoryState(), fake_rasa.url, faq=ROWS)
    await client.start()
    try:
        assert await client.wait_ready(5)
        intent = await client.parse("下单以后大概几天能收到货呀")
        again = await client.parse("下单以后大概几天能收到货呀")
    finally:
        await client.close()
    assert (intent.name, intent.source, intent.faq.entry if intent.faq else None) == ("faq", "rasa", "delivery_time")
    assert intent.faq is not None and len(intent.faq.ranking) == 3
    assert (again.source, again.faq) == ("cache", intent.faq)
    assert client.model == "nlu-test"  # the cache namespace is the model the server said it serves
    assert intent.to_dict()["faq"]["entry"] == "delivery_time"


async def test_with_rasa_down_the_faq_is_answered_by_the_rules_marked_so(nlu_settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = NluClient(nlu_settings(), MemoryState(), closed, faq=ROWS)
    await client.start()
    try:
        intent = await client.parse("你们发货速度咋样啊")
        assert client.health()["status"] == "degraded"
    finally:
        await client.close()
    assert (intent.name, intent.source, intent.faq) == ("faq", "rules", FaqMatch("delivery_time", 1.0))


async def test_set_faq_changes_the_rules_at_once(nlu_settings) -> None:
    client = NluClient(nlu_settings(mode="rules"), MemoryState())
    assert (await client.parse("能开发票吗")).faq is None
    client.set_faq(ROWS)
    assert (await client.parse("能开发票吗")).faq == FaqMatch("invoice", 1.0)


# ---------------------------------------------------------------- swap requests between processes


class _Swapper(ManagedRasa):
    """A managed Rasa whose swap is recorded instead of started: the request protocol alone."""

    swapped: list[Path]

    async def swap(self, model: Path) -> float:
        self.swapped.append(model)
        if model.name == "broken.tar.gz":
            raise SwapFailed("Rasa with broken.tar.gz did not start")
        return 1.5


async def test_a_swap_asked_by_another_process_is_done_by_the_owner_of_server_json(tmp_path: Path) -> None:
    settings = NluSettings(mode="managed", model_dir=str(tmp_path))
    with pytest.raises(SwapFailed, match="no managed Rasa"):
        await request_swap(settings, tmp_path / "new.tar.gz")
    write_json(tmp_path / STATE_FILE, {"url": "http://127.0.0.1:9", "token": "t", "pid": os.getpid(),
                                      "owner_pid": os.getpid()})
    server = _Swapper(settings)
    server.swapped = []
    answering = asyncio.create_task(server._answer_swap_requests())
    try:
        done = await request_swap(settings, tmp_path / "new.tar.gz", timeout_s=10)
        with pytest.raises(SwapFailed, match="did not start"):
            await request_swap(settings, tmp_path / "broken.tar.gz", timeout_s=10)
    finally:
        answering.cancel()
    assert (done.model, done.seconds) == ("new.tar.gz", 1.5)
    assert server.swapped == [(tmp_path / "new.tar.gz").resolve(), (tmp_path / "broken.tar.gz").resolve()]


# ---------------------------------------------------------------- the CLI on keyword rules (Rasa's in test_faq_rasa.py)

RULES_ENV = {"SCRM__NLU__MODE": "rules", "SCRM__REDIS__URL": ""}


def _faq_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, ["faq", *args], input=input, env={**RULES_ENV, **(env or {})})


def test_the_nlu_faq_commands_have_help_with_an_example() -> None:
    faq = cli.commands["faq"]
    assert isinstance(faq, click.Group)
    for name in ("publish", "ask", "test"):
        command = faq.commands[name]
        assert command.help and "Example:" in command.help, name


def test_ask_json_prints_one_object_a_line_marked_rules() -> None:
    result = _faq_cli("ask", "--json", input="下单以后大概几天能收到货呀\n今天天气真好\n\n")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["text"], r["faq"], r["source"]) for r in rows] == [
        ("下单以后大概几天能收到货呀", "delivery_time", "rules"), ("今天天气真好", None, "rules")]
    assert set(rows[0]) == {"text", "faq", "confidence", "answer", "source"}
    assert rows[0]["answer"] == starter_faq().entries["delivery_time"].answer and rows[1]["answer"] is None


def test_faq_test_scores_the_rules_alone() -> None:
    result = _faq_cli("test", "--rules", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["held_out"] == len(load_project(PROJECT).faq_test) and report["sources"].keys() == {"rules"}


def test_faq_test_exits_1_under_the_accuracy_asked_for() -> None:
    report = json.loads(_faq_cli("test", "--rules", "--json").stdout)
    retrieval, answered = report["retrieval_accuracy"], report["answered_accuracy"]
    assert 0 < answered <= retrieval < 1
    assert _faq_cli("test", "--rules", "--fail-under", str(retrieval)).exit_code == 0
    failed = _faq_cli("test", "--rules", "--fail-under", str(min(1.0, retrieval + 0.01)))
    assert failed.exit_code == 1 and "held-out retrieval accuracy" in failed.output
    failed = _faq_cli("test", "--rules", "--fail-answered-under", str(min(1.0, answered + 0.01)))
    assert failed.exit_code == 1 and "held-out answered accuracy" in failed.output


def test_publish_refuses_a_faq_that_clashes_with_the_intents_data(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    shutil.copytree(STARTER_FLOWS, flows)
    example = load_project(PROJECT).train[0]
    faq_file = flows / "faq.yaml"
    faq_file.write_text(faq_file.read_text(encoding="utf-8").replace(
        "      - 拍了多久能发出去啊", f"      - {example.text}", 1), encoding="utf-8")
    store = tmp_path / "scrm.db"
    result = _faq_cli("publish", "--dir", str(flows), env={"SCRM__STORE__URL": f"sqlite+aiosqlite:///{store}"})
    assert result.exit_code == 1
    assert f"{example.file}:{example.line}:" in result.stdout and "nothing was published" in result.output
    assert not store.exists()
