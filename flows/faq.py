"""faq.yaml, the FAQ admins edit in the flow directory, loaded in the same three steps as the flows.

The format is in flows/faq_model.py. The loader (flows/loader.py) runs these steps for
faq.yaml beside the flows, so a broken FAQ is reported with them and never published:

1. shape (`check_faq_file`): keys, types and lengths, each error with its line and entry;
   an answer over MAX_ANSWER_BYTES (what WeChat sends in one text) is refused here;
2. typed objects (`build_faq`): a FaqBook, stage labels as ids, durations as seconds;
3. semantics (`check_faq`): duplicate ids, a question asked in two entries (or twice in one,
   compared in the keywords' normal form: NFKC, case-folded, no spaces), fewer than
   MIN_QUESTIONS questions, tags missing from tags.yaml, unknown stages.

Entries with fewer than GOOD_QUESTIONS questions load: the Reporter has no warnings, so
`few_questions` lists them for the CLI to advise on instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crm_store.lifecycle_settings import LifecycleSettings
from flows.build import Ref, links_of, miniprogram_of, stage_id
from flows.checks import Names, name_problem
from flows.errors import FlowError, FlowLoadError, Reporter
from flows.faq_model import FAQ_FILE, FaqBook, FaqEntry
from flows.patterns import normalise
from flows.schema import FAQ_ID, LINK, MINIPROGRAM, STAGE, TAG
from flows.spec import Duration, ListOf, OneOrList, Record, Text, parse_duration
from flows.yaml_source import Node

MAX_ANSWER_BYTES = 2048  # a WeChat text message (kf and OA customer-service messages), UTF-8
MIN_QUESTIONS = 2  # fewer cannot teach the model what varies between ways of asking
GOOD_QUESTIONS = 4  # what the ResponseSelector needs to match phrasings it has not seen
MAX_QUESTIONS = 200
MAX_ENTRIES = 1000
MAX_TITLE = 64  # the title is offered as a kf menu button or a numbered line
MAX_QUESTION = 200


def answer_problem(text: str) -> str | None:
    """Why an answer cannot be sent as one WeChat text, or None."""
    size = len(text.strip().encode("utf-8"))
    if size > MAX_ANSWER_BYTES:
        return (
            f"the answer is {size} bytes in UTF-8 (a Chinese character takes 3); WeChat sends at most "
            f"{MAX_ANSWER_BYTES}: shorten it, or move the details behind a link"
        )
    return None


def question_problem(text: str) -> str | None:
    """Why a question cannot be matched, or None."""
    return None if normalise(text) else f"question {text!r} is empty once normalised (spaces, invisible characters)"


@dataclass(frozen=True)
class EntryReporter(Reporter):
    """A Reporter whose messages start with the entry they are about ("entry delivery_time: ...")."""

    entry: str = ""

    def error(self, line: int, message: str) -> None:
        super().error(line, f"entry {self.entry}: {message}" if self.entry else message)


def _entry_id(node: Node) -> str:
    given = node.get("id")
    return given.text if given is not None and given.text else ""


def _reporter_for(report: Reporter, node: Node, index: int) -> EntryReporter:
    entry = _entry_id(node) or f"#{index + 1}"
    return EntryReporter(report.file, report.errors, report.flow, report.step, entry)


@dataclass(frozen=True)
class _Entries(ListOf):
    def check_item(self, index: int, item: Node, report: Reporter) -> None:
        self.item.check(item, _reporter_for(report, item, index))


def _enough_questions(node: Node, report: Reporter) -> None:
    questions = node.get("questions")
    if questions is not None and questions.kind == "seq" and len(questions.items) < MIN_QUESTIONS:
        report.error(
            questions.line,
            f"{len(questions.items)} question(s); give at least {MIN_QUESTIONS} ways customers ask it "
            f"({GOOD_QUESTIONS} or more match best)",
        )


ENTRY = Record(
    {
        "id": FAQ_ID,
        "title": Text(what="a title", max_len=MAX_TITLE),
        "questions": ListOf(Text(max_len=MAX_QUESTION, validate=question_problem), 0, MAX_QUESTIONS, "questions"),
        "answer": Text(what="the answer's text", max_len=10 * MAX_ANSWER_BYTES, validate=answer_problem),
        "links": ListOf(LINK, 1, 8, "links"),
        "miniprogram": MINIPROGRAM,
        "tags": OneOrList(TAG),
        "set_stage": STAGE,
        "handoff_if_repeated": Duration(60, 86400),
    },
    ("id", "title", "questions", "answer"),
    "an FAQ entry",
    (_enough_questions,),
)
FAQ_FILE_SPEC = Record({"faq": _Entries(ENTRY, 0, MAX_ENTRIES, "entries")}, ("faq",), FAQ_FILE)


def check_faq_file(tree: Node, report: Reporter) -> None:
    """Step 1: the shape of faq.yaml."""
    FAQ_FILE_SPEC.check(tree, report)


# ---------------------------------------------------------------- step 2


def build_faq(tree: Node, lifecycle: LifecycleSettings) -> FaqBook:
    """Step 2: the FaqBook of a faq.yaml that passed step 1 (the first entry of a repeated id wins)."""
    entries: dict[str, FaqEntry] = {}
    for node in _entry_nodes(tree):
        entries.setdefault(node.mapping["id"].text, _entry(node, lifecycle))
    return FaqBook(entries)


def _entry_nodes(tree: Node) -> list[Node]:
    entries = tree.get("faq")
    return entries.items if entries is not None else []


def _entry(node: Node, lifecycle: LifecycleSettings) -> FaqEntry:
    m = node.mapping
    stage = m.get("set_stage")
    tags = m.get("tags")
    handoff = m.get("handoff_if_repeated")
    return FaqEntry(
        id=m["id"].text,
        title=m["title"].text.strip(),
        questions=tuple(question.text.strip() for question in m["questions"].items),
        answer=m["answer"].text.strip(),
        links=links_of(m.get("links")),
        miniprogram=miniprogram_of(m.get("miniprogram")),
        tags=tuple(dict.fromkeys(tag.text for tag in _one_or_list(tags))),
        set_stage=(stage_id(lifecycle, stage.text) or stage.text) if stage is not None else "",
        handoff_if_repeated_s=int(parse_duration(handoff) or 0) if handoff is not None else 0,
        line=node.line,
    )


def _one_or_list(node: Node | None) -> list[Node]:
    if node is None:
        return []
    return node.items if node.kind == "seq" else [node]


# ---------------------------------------------------------------- step 3


def check_faq(tree: Node, names: Names, report: Reporter) -> None:
    """Step 3: what needs more than one entry, tags.yaml or the lifecycle to tell."""
    first_line: dict[str, int] = {}
    asked: dict[str, tuple[str, int]] = {}  # normal form -> (entry, line) of its first use
    for index, node in enumerate(_entry_nodes(tree)):
        entry = _entry_id(node)
        entry_report = _reporter_for(report, node, index)
        if entry in first_line:
            entry_report.error(
                node.mapping["id"].line,
                f"duplicate id (first at line {first_line[entry]}): give each entry an id of its own",
            )
        first_line.setdefault(entry, node.mapping["id"].line)
        _check_questions(node, entry, asked, entry_report)
        _check_names(node, names, entry_report)


def _check_questions(node: Node, entry: str, asked: dict[str, tuple[str, int]], report: Reporter) -> None:
    for question in node.mapping["questions"].items:
        form = normalise(question.text)
        if form in asked:
            other, line = asked[form]
            where = "in this entry" if other == entry else f"by entry {other}"
            report.error(
                question.line,
                f"question {question.text.strip()!r} is already asked {where} (line {line}), compared without "
                "spaces and case: each phrasing belongs to one entry, keep it where it fits best",
            )
        asked.setdefault(form, (entry, question.line))


def _check_names(node: Node, names: Names, report: Reporter) -> None:
    refs = [Ref("tag", tag.text, tag.line, where="tags") for tag in _one_or_list(node.get("tags"))]
    stage = node.get("set_stage")
    if stage is not None:
        refs.append(Ref("stage", stage.text, stage.line, where="set_stage"))
    for ref in refs:
        problem = name_problem(ref, names)
        if problem:
            report.error(ref.line, problem)


def few_questions(book: FaqBook) -> list[str]:
    """Ids of the entries with fewer than GOOD_QUESTIONS questions: valid, but matched less well."""
    return [entry.id for entry in book.entries.values() if len(entry.questions) < GOOD_QUESTIONS]


# ---------------------------------------------------------------- reading


def read_faq(directory: Path, lifecycle: LifecycleSettings) -> FaqBook:
    """The FAQ of a flow directory (checked with its tags.yaml), an empty FaqBook without faq.yaml,
    or FlowLoadError with every error. The flows are not read: `load_sources` checks everything."""
    from flows.loader import TAGS_FILE, load_sources, read_paths  # the loader builds on this module

    if not directory.is_dir():
        raise FlowLoadError([FlowError(str(directory), 0, "not a directory")])
    if not (directory / FAQ_FILE).is_file():
        return FaqBook()
    paths = [directory / name for name in (FAQ_FILE, TAGS_FILE) if (directory / name).is_file()]
    return load_sources(read_paths(paths, {}), lifecycle).faq
