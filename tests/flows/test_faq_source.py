"""faq.yaml through the flow loader: a good file, each kind of bad input with its file, line, entry and reason,
and flows whose `faq:` trigger names an entry."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from core.events import LinkCard, MiniProgramCard
from crm_store.lifecycle_settings import LifecycleSettings
from flows.errors import FlowError, FlowLoadError
from flows.faq import few_questions, read_faq
from flows.faq_model import FaqBook, FaqEntry
from flows.loader import load_sources
from flows.model import FaqTrigger
from tests.flows.test_engine import flow_dir

LIFECYCLE = LifecycleSettings()
TAGS = "groups: {意向: [高意向, 询价], 服务: [查物流]}\n"
GOOD = """\
faq:
  - id: delivery_time
    title: 多久发货
    questions:
      - 多久发货
      - 几天能到
      - 下单后什么时候发
      - 发货要多久啊
    answer: |
      下单后 48 小时内发货。
      偏远地区 3 到 5 天。
    links: [{title: 物流说明, url: "https://shop.example/shipping"}]
    miniprogram: {appid: wx123, pagepath: pages/ship, title: 物流}
    tags: [查物流, 询价]
    set_stage: 意向
    handoff_if_repeated: 10m
  - id: invoice
    title: 开发票
    questions: [能开发票吗, 发票怎么开]
    answer: 可以开电子发票。
"""
ENTRY = """\
  - id: {id}
    title: 标题
    questions: [{questions}]
    answer: {answer}
"""
TAKEOVER = "flow: invoice_flow\ntriggers:\n  - faq: {entry}\nsteps:\n  - say: 发票请把抬头发给我\n"


def faq_file(*entries: str) -> str:
    return "faq:\n" + "".join(entries)


def entry(entry_id: str = "e", questions: str = "问一, 问二", answer: str = "答", **extra: str) -> str:
    lines = "".join(f"    {key}: {value}\n" for key, value in extra.items())
    return ENTRY.format(id=entry_id, questions=questions, answer=answer) + lines


def errors_of(files: dict[str, str]) -> list[FlowError]:
    with pytest.raises(FlowLoadError) as caught:
        load_sources({"tags.yaml": TAGS, **files}, LIFECYCLE)
    return caught.value.errors


def only_error(text: str) -> FlowError:
    errors = errors_of({"faq.yaml": text})
    assert len(errors) == 1, "\n".join(map(str, errors))
    return errors[0]


# ---------------------------------------------------------------- a good file


def test_good_file_loads_to_typed_entries_in_file_order() -> None:
    flows = load_sources({"tags.yaml": TAGS, "faq.yaml": GOOD}, LIFECYCLE)
    assert list(flows.faq.entries) == ["delivery_time", "invoice"]
    assert flows.faq.get("delivery_time") == FaqEntry(
        id="delivery_time", title="多久发货", questions=("多久发货", "几天能到", "下单后什么时候发", "发货要多久啊"),
        answer="下单后 48 小时内发货。\n偏远地区 3 到 5 天。",
        links=(LinkCard("物流说明", "https://shop.example/shipping"),),
        miniprogram=MiniProgramCard("wx123", "pages/ship", "物流"), tags=("查物流", "询价"),
        set_stage="interested", handoff_if_repeated_s=600, line=2)  # the stage label 意向 became its id
    assert flows.faq.training_rows()[1] == ("invoice", ("能开发票吗", "发票怎么开"), "可以开电子发票。")
    assert flows.sources["faq.yaml"] == GOOD  # published with the flows, as written


def test_a_directory_without_faq_yaml_has_an_empty_faq(tmp_path: Path) -> None:
    assert load_sources({"tags.yaml": TAGS}, LIFECYCLE).faq == FaqBook()
    assert not read_faq(flow_dir(tmp_path), LIFECYCLE)


def test_read_faq_reads_faq_yaml_with_the_tag_catalog_and_not_the_flows(tmp_path: Path) -> None:
    directory = flow_dir(tmp_path, broken="flow: broken\nsteps: []\n")
    (directory / "faq.yaml").write_text(faq_file(entry(tags="[高意向]")), encoding="utf-8")
    assert read_faq(directory, LIFECYCLE).entries["e"].tags == ("高意向",)  # the shipped catalog has 高意向
    (directory / "faq.yaml").write_text(faq_file(entry(tags="[没有]")), encoding="utf-8")
    with pytest.raises(FlowLoadError) as caught:
        read_faq(directory, LIFECYCLE)
    assert [(error.file, error.line) for error in caught.value.errors] == [("faq.yaml", 6)]


def test_entries_with_fewer_than_four_questions_load_and_are_named() -> None:
    flows = load_sources({"tags.yaml": TAGS, "faq.yaml": GOOD}, LIFECYCLE)
    assert few_questions(flows.faq) == ["invoice"]


# ---------------------------------------------------------------- bad input: file, line, entry, reason


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        (faq_file(entry("a"), entry("a", "问三, 问四")), 6, ["entry a: duplicate id (first at line 2)"]),
        (faq_file(entry("a"), entry("b", "问三, 问 一")), 8,
         ["entry b: question '问 一' is already asked by entry a (line 4)", "each phrasing belongs to one entry"]),
        (faq_file(entry("a", "VIP 价格, ｖｉｐ价格")), 4, ["entry a: question 'ｖｉｐ价格' is already asked in this entry"]),
        (faq_file(entry("a", answer="长" * 683)), 5,
         ["entry a: the answer is 2049 bytes in UTF-8", "at most 2048: shorten it"]),
        (faq_file(entry("a", "只有一个")), 4, ["entry a: 1 question(s); give at least 2 ways customers ask it"]),
        (faq_file(entry("a", tags="[高意向, 不存在]")), 6, ["entry a: unknown tag '不存在' in tags", "tags.yaml defines"]),
        (faq_file(entry("a", set_stage="nowhere")), 6, ["entry a: unknown stage 'nowhere' in set_stage", "stages are"]),
        (faq_file(entry("Bad-Id")), 2, ["entry Bad-Id: expected an FAQ entry id (lowercase letters"]),
        (faq_file(entry("a", question="[问]")), 6,
         ["entry a: unknown key 'question' (did you mean questions?)", "keys of an FAQ entry are"]),
        (faq_file(entry("a", handoff_if_repeated="soon")), 6, ["entry a: expected a duration"]),
        (faq_file(entry("a", handoff_if_repeated="10s")), 6, ["entry a: 10s is out of range: expected 60 s"]),
        (faq_file("  - {id: a, title: t, questions: [问一, 问二]}\n"), 2, ["entry a: an FAQ entry needs a 'answer' key"]),
        (faq_file(entry("a", links="[{title: 说明}]")), 6, ["entry a: a link needs a 'url' key"]),
        ("faq: {a: 1}\n", 1, ["expected a list of entries, got a mapping"]),
        ("faq: []\nfaqs: []\n", 2, ["unknown key 'faqs' (did you mean faq?)"]),
    ],
    ids=["duplicate-id", "phrasing-in-two-entries", "phrasing-twice-normal-form", "answer-too-long", "one-question",
         "unknown-tag", "unknown-stage", "bad-id", "unknown-key", "bad-duration", "duration-too-short",
         "no-answer", "bad-link", "not-a-list", "misspelt-top-key"],
)
def test_each_bad_input_is_reported_with_file_line_entry_and_reason(text: str, line: int, says: list[str]) -> None:
    error = only_error(text)
    assert (error.file, error.line) == ("faq.yaml", line), str(error)
    for part in says:
        assert part in error.message, str(error)


def test_every_error_of_faq_yaml_and_of_the_flows_is_reported_at_once() -> None:
    faq = faq_file(entry("a"), entry("a", "问三, 问四"), entry("b", "问一, 问五", tags="[没有]"))
    errors = errors_of({"faq.yaml": faq, "f.yaml": "flow: f\nsteps:\n  - goto: nowhere\n"})
    assert [(error.file, error.line) for error in errors] == [("f.yaml", 3), ("faq.yaml", 6), ("faq.yaml", 12),
                                                              ("faq.yaml", 14)]
    assert str(errors[1]).startswith("faq.yaml:6: entry a: duplicate id")


def test_an_answer_of_2048_bytes_is_fine() -> None:
    text = faq_file(entry("a", answer="长" * 682 + "ab"))
    assert len(load_sources({"faq.yaml": text}, LIFECYCLE).faq.entries["a"].answer.encode()) == 2048


# ---------------------------------------------------------------- faq triggers


def test_a_faq_trigger_names_an_entry() -> None:
    flows = load_sources({"tags.yaml": TAGS, "faq.yaml": GOOD, "i.yaml": TAKEOVER.format(entry="invoice")}, LIFECYCLE)
    assert flows.flows["invoice_flow"].triggers == (FaqTrigger("invoice", line=3),)


def test_a_faq_trigger_naming_an_unknown_entry_is_an_error_with_file_line_and_flow() -> None:
    [error] = errors_of({"faq.yaml": GOOD, "i.yaml": TAKEOVER.format(entry="invoices")})
    assert (error.file, error.line, error.flow) == ("i.yaml", 3, "invoice_flow")
    assert "unknown FAQ entry 'invoices' in trigger (did you mean invoice?)" in error.message
    assert "faq.yaml has: delivery_time, invoice" in error.message


def test_a_faq_trigger_without_faq_yaml_says_there_is_none() -> None:
    [error] = errors_of({"i.yaml": TAKEOVER.format(entry="invoice")})
    assert error.file == "i.yaml" and "there is no faq.yaml entry at all" in error.message


def test_a_broken_faq_yaml_is_reported_once_not_as_unknown_entries_of_triggers() -> None:
    errors = errors_of({"faq.yaml": "faq: [{id: invoice}]\n", "i.yaml": TAKEOVER.format(entry="invoice")})
    assert {error.file for error in errors} == {"faq.yaml"}
    assert [error.message for error in errors] == [f"entry invoice: an FAQ entry needs a '{key}' key"
                                                   for key in ("title", "questions", "answer")]


def test_a_faq_trigger_must_look_like_an_entry_id() -> None:
    [error] = errors_of({"faq.yaml": GOOD, "i.yaml": TAKEOVER.format(entry="Invoice")})
    assert (error.file, error.line) == ("i.yaml", 3) and "expected an FAQ entry id" in error.message


def test_the_faq_model_docstring_example_is_valid() -> None:
    import flows.faq_model

    doc = flows.faq_model.__doc__ or ""
    example = textwrap.dedent(doc[doc.index("    faq:"): doc.index("\nEntries become")])
    tags = "groups: {意向: [问物流]}\n"
    book = load_sources({"faq.yaml": example, "tags.yaml": tags}, LIFECYCLE).faq
    assert book.entries["delivery_time"].handoff_if_repeated_s == 600
