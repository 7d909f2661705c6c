"""The FAQ as CSV: every problem with its row, encodings, merging, the faq.yaml written, and export → import."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from core.events import LinkCard
from crm_store.lifecycle_settings import LifecycleSettings
from flows.errors import FlowLoadError
from flows.faq_csv import FaqCsvError, export_csv, import_csv, import_into, merge, render_faq
from flows.faq_model import FaqBook, FaqEntry
from flows.loader import load_sources
from tests.flows.test_engine import flow_dir

LIFECYCLE = LifecycleSettings()
GOOD = (
    "id,question,answer\n"
    "delivery_time,多久发货,\"下单后 48 小时内发货。\n偏远地区 3 天。\"\n"
    "delivery_time,几天能到,\n"
    "\n"
    "invoice,能开发票吗,\n"
    "invoice,发票怎么开,可以开电子发票。\n"
    "invoice,要发票,这个答案不用：第一个非空的才算\n"
)
OLD = FaqEntry("invoice", "开发票", ("开票", "要开票"), "旧答案", links=(LinkCard("发票说明", "https://x.example/i"),),
               tags=("高意向",), set_stage="interested", handoff_if_repeated_s=600)


def problems_of(data: bytes | str, existing: FaqBook | None = None) -> list[str]:
    with pytest.raises(FaqCsvError) as caught:
        import_csv(data, existing)
    return [str(problem) for problem in caught.value.problems]


def test_rows_with_the_same_id_form_one_entry_whose_answer_is_the_first_non_empty_one() -> None:
    entries = import_csv(GOOD.encode())
    assert [(entry.id, entry.title, entry.questions, entry.answer) for entry in entries] == [
        ("delivery_time", "多久发货", ("多久发货", "几天能到"), "下单后 48 小时内发货。\n偏远地区 3 天。"),
        ("invoice", "能开发票吗", ("能开发票吗", "发票怎么开", "要发票"), "可以开电子发票。"),
    ]


def test_every_problem_is_reported_with_its_row_and_nothing_is_returned() -> None:
    data = ("id,question,answer\n"
            ",问题,答\n"  # 2
            "Bad-Id,问题二,答\n"  # 3
            "a,,答案\n"  # 4
            "a,第一问,\n"  # 5
            "a,第 一问,\n"  # 6: the same once normalised
            "b,只一问,\n"  # 7: no answer, one question
            f"c,长答案,{'长' * 683}\n"  # 8
            "c,长答案二,\n"
            "d,问,答,多余\n")  # 10
    assert problems_of(data.encode()) == [
        "row 2: empty id: every row needs the id of the entry it belongs to",
        "row 3: bad id 'Bad-Id': lowercase letters, digits and _, starting with a letter, at most 40 characters "
        "(e.g. delivery_time)",
        "row 4: empty question: one row per way of asking (an answer alone goes on one of its entry's rows)",
        "row 6: question '第 一问' is already on row 5 for its entry (compared without spaces and case): keep one",
        "row 7: entry b has no answer: write it in the answer column of one of its rows",
        "row 7: entry b has 1 question(s): give at least 2 rows, one per way of asking",
        "row 8: the answer is 2049 bytes in UTF-8 (a Chinese character takes 3); WeChat sends at most 2048: "
        "shorten it, or move the details behind a link",
        "row 10: 4 cells, expected 3 (id,question,answer): quote a cell that holds a comma",
    ]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("问题,答案\n".encode("gbk"), "row 1: not UTF-8 text (byte 0xce): it looks like GBK, what Excel writes as plain "
                                    "\"CSV\"; save it as \"CSV UTF-8\" instead"),
        (b"id,question,answer\na,b,\xff\n", "row 2: not UTF-8 text (byte 0xff): save the file as CSV UTF-8"),
        (b"id,question\na,b\n", "row 1: the header must be id,question,answer, got 'id,question'"),
        (b"", "the file is empty: the first row must be id,question,answer"),
        (b"id,question,answer\n", "row 1: no rows after the header: one row per way of asking each question"),
        (b'id,question,answer\na,"b,c\n', "row 2: not valid CSV (unexpected end of data): check the quotes of this row"),
    ],
    ids=["gbk", "bad-byte", "wrong-header", "empty", "header-only", "open-quote"],
)
def test_files_that_cannot_be_read_say_why(data: bytes, problem: str) -> None:
    assert problems_of(data) == [problem]


def test_a_bom_and_crlf_line_ends_are_fine() -> None:
    data = "\ufeffID, Question ,Answer\r\na,问一,答\r\na,问二,\r\n".encode()
    assert [entry.questions for entry in import_csv(data)] == [("问一", "问二")]


def test_a_question_another_entry_of_the_faq_asks_is_a_problem_unless_that_entry_is_replaced() -> None:
    existing = FaqBook({"delivery_time": FaqEntry("delivery_time", "多久发货", ("多久发货", "几天到"), "答"), "invoice": OLD})
    assert problems_of("id,question,answer\nx,多久 发货,答\nx,别的,\n", existing) == [
        "row 2: question '多久 发货' is already asked by entry delivery_time of faq.yaml: a phrasing belongs to one entry"]
    assert import_csv("id,question,answer\ninvoice,开票,新答案\ninvoice,发票,\n", existing)[0].answer == "新答案"


def test_an_imported_id_replaces_questions_and_answer_and_keeps_what_a_csv_cannot_say() -> None:
    existing = FaqBook({"invoice": OLD, "other": replace(OLD, id="other", questions=("问一", "问二"))})
    [imported] = import_csv("id,question,answer\ninvoice,能开发票吗,新答案\ninvoice,发票怎么开,\n", existing)
    assert imported == replace(OLD, questions=("能开发票吗", "发票怎么开"), answer="新答案")
    assert list(merge(existing, [imported]).entries) == ["invoice", "other"]


def test_export_then_import_gives_the_same_questions_and_answers() -> None:
    book = FaqBook({entry.id: entry for entry in import_csv(GOOD)})
    text = export_csv(book)
    assert text.splitlines()[:3] == ["id,question,answer", 'delivery_time,多久发货,"下单后 48 小时内发货。', '偏远地区 3 天。"']
    assert import_csv(text.encode("utf-8-sig")) == list(book.entries.values())


@pytest.mark.parametrize("text", ["yes", "1:30", "null", "- 列表", "a: b", "# 注释", "有 #号", "2026-01-01", "'引号",
                                  "末尾空格 ", "tab\there", "\u2028分行", "@at", "多行\n  缩进", "{x}", "100%"])
def test_render_writes_text_that_reads_back_as_written(text: str) -> None:
    entry = FaqEntry("a", text, (text + "一", text + "二"), text + "答", tags=("高意向",),
                     links=(LinkCard(text + "t", "https://x.example/a,b"),))
    book = FaqBook({"a": entry})
    loaded = load_sources({"faq.yaml": render_faq(book), "tags.yaml": "groups: {g: [高意向]}\n"}, LIFECYCLE).faq
    stripped = replace(entry, title=text.strip(), questions=tuple(q.strip() for q in entry.questions),
                       answer=(text + "答").strip(), line=5)  # after the header comment
    assert loaded.entries["a"] == stripped


def test_render_is_readable_a_header_comment_and_a_literal_block_answer() -> None:
    text = render_faq(FaqBook({entry.id: entry for entry in import_csv(GOOD)}))
    assert text.startswith("# The FAQ (常见问题)")
    assert "  - id: delivery_time\n    title: 多久发货\n    questions:\n      - 多久发货\n" in text
    assert "    answer: |-\n      下单后 48 小时内发货。\n      偏远地区 3 天。\n" in text


# ---------------------------------------------------------------- into a directory


def test_import_writes_faq_yaml_only_when_the_directory_still_loads(tmp_path: Path) -> None:
    directory = flow_dir(tmp_path, invoice_flow="flow: invoice_flow\ntriggers: [{faq: invoice}]\nsteps: [{say: 好}]\n")
    with pytest.raises(FlowLoadError):  # the flow names an entry the FAQ does not have yet
        import_into(directory, "id,question,answer\nother,问一,答\nother,问二,\n", LIFECYCLE)
    assert not (directory / "faq.yaml").exists()
    done = import_into(directory, GOOD, LIFECYCLE, dry_run=True)
    assert (done.added, done.written) == (("delivery_time", "invoice"), False)
    assert not (directory / "faq.yaml").exists()
    done = import_into(directory, GOOD, LIFECYCLE)
    assert (directory / "faq.yaml").read_text(encoding="utf-8") == done.text
    again = import_into(directory, "id,question,answer\nnew_one,问一,答\nnew_one,问二,\n", LIFECYCLE)
    assert (again.added, again.replaced, again.kept) == (("new_one",), (), 2)
