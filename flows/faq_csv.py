"""The FAQ as a spreadsheet: CSV import into faq.yaml, and export, for admins who keep FAQs in Excel.

Columns `id,question,answer`, one row per phrasing. Rows with the same id form one
entry; the first non-empty answer of an id is the entry's answer (later ones are
ignored, so the answer may sit on any of its rows). Row numbers are a spreadsheet's:
the header is row 1.

    id,question,answer
    delivery_time,多久发货,下单后 48 小时内发货
    delivery_time,几天能到,

An import is all or nothing. Every row is checked and every problem reported with its
row (`FaqCsvError`); then the entries are merged into the directory's FAQ (an imported
id replaces that entry's questions and answer, other entries stay) and the whole flow
directory is loaded with the new faq.yaml in memory (`FlowLoadError`). Only then is
faq.yaml written, in one atomic replace. A CSV has no column for a title, cards, tags,
a stage or a hand-off: a replaced entry keeps its own, a new one is titled by its first
question.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from crm_store.lifecycle_settings import LifecycleSettings
from flows.faq import MAX_QUESTION, MAX_TITLE, MIN_QUESTIONS, answer_problem, question_problem
from flows.faq_model import FAQ_FILE, FaqBook, FaqEntry
from flows.loader import TAGS_FILE, load_sources, read_directory
from flows.patterns import normalise
from flows.schema import FAQ_ID_PATTERN

HEADER = ("id", "question", "answer")
MAX_CSV_BYTES = 1024 * 1024  # faq.yaml may hold 256 KB; a CSV repeats ids and commas
_BOM = "\ufeff"
HEADER_COMMENT = (
    "# The FAQ (常见问题) the bot answers from: one entry per question, several ways of asking it.\n"
    "# Format and checks: docs/flows.md, section \"FAQ (faq.yaml)\". Validate with: scrm faq validate\n"
    "# Written by `scrm faq import` (which keeps the entries but not comments): edit freely.\n"
)


@dataclass(frozen=True)
class CsvProblem:
    row: int  # the header is row 1; 0: the whole file
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}" if self.row else self.message


class FaqCsvError(Exception):
    """Every problem of a CSV, in row order; `str()` shows one per line."""

    def __init__(self, problems: list[CsvProblem]) -> None:
        self.problems = sorted(problems, key=lambda problem: problem.row)
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass
class _Draft:
    """An entry as its rows describe it, with the row of each part for messages."""

    id: str
    row: int
    questions: list[str] = field(default_factory=list)
    answer: str = ""
    rows: int = 0


# ---------------------------------------------------------------- reading a CSV


def import_csv(data: bytes | str, existing: FaqBook | None = None) -> list[FaqEntry]:
    """The entries of a CSV in the order their ids first appear, or FaqCsvError with every problem.

    `existing` is the FAQ they are merged into: a question one of its other entries asks is a problem too.
    """
    existing = existing if existing is not None else FaqBook()
    problems: list[CsvProblem] = []
    rows = _rows(_text(data), problems)
    drafts = _drafts(rows, problems) if rows is not None else {}
    _check_drafts(drafts, problems)
    _check_against(drafts, rows or [], existing, problems)
    if problems:
        raise FaqCsvError(problems)
    return [_entry(draft, existing.get(draft.id)) for draft in drafts.values()]


def _text(data: bytes | str) -> str:
    if isinstance(data, str):
        return data.removeprefix(_BOM)
    if len(data) > MAX_CSV_BYTES:
        raise FaqCsvError([CsvProblem(0, f"the file is {len(data) // 1024} KB; at most {MAX_CSV_BYTES // 1024} KB")])
    try:
        return data.decode("utf-8").removeprefix(_BOM)
    except UnicodeDecodeError as exc:
        row = data.count(b"\n", 0, exc.start) + 1
        raise FaqCsvError([CsvProblem(row, f"not UTF-8 text (byte 0x{data[exc.start]:02x}){_gbk_hint(data)}")]) from None


def _gbk_hint(data: bytes) -> str:
    try:
        data.decode("gb18030")
    except UnicodeDecodeError:
        return ": save the file as CSV UTF-8"
    return ": it looks like GBK, what Excel writes as plain \"CSV\"; save it as \"CSV UTF-8\" instead"


def _rows(text: str, problems: list[CsvProblem]) -> list[list[str]] | None:
    """The rows of the text after a correct header (None when it cannot be read)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[list[str]] = []
    try:
        rows.extend(reader)
    except csv.Error as exc:
        problems.append(CsvProblem(len(rows) + 1, f"not valid CSV ({exc}): check the quotes of this row"))
        return None
    if not rows:
        problems.append(CsvProblem(0, "the file is empty: the first row must be id,question,answer"))
        return None
    header = tuple(cell.strip().lower() for cell in rows[0])
    if header != HEADER:
        problems.append(CsvProblem(1, f"the header must be {','.join(HEADER)}, got {','.join(rows[0])[:80]!r}"))
        return None
    return rows


def _drafts(rows: list[list[str]], problems: list[CsvProblem]) -> dict[str, _Draft]:
    drafts: dict[str, _Draft] = {}
    seen: dict[str, tuple[int, str]] = {}  # normal form -> (row, id) of its first use
    for row, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # a blank line between groups of rows
        if len(cells) > len(HEADER) and any(cell.strip() for cell in cells[len(HEADER):]):
            problems.append(CsvProblem(row, f"{len(cells)} cells, expected 3 (id,question,answer): "
                                            "quote a cell that holds a comma"))
            continue
        entry_id, question, answer = (cell.strip() for cell in (cells + ["", "", ""])[:3])
        if not _id_fine(row, entry_id, problems):
            continue
        draft = drafts.setdefault(entry_id, _Draft(entry_id, row))
        draft.rows += 1  # a row with a bad question still counts: its problem is reported once
        if _question_fine(row, entry_id, question, seen, problems):
            draft.questions.append(question)
            seen[normalise(question)] = (row, entry_id)
        if answer and not draft.answer:
            draft.answer = answer
            if problem := answer_problem(answer):
                problems.append(CsvProblem(row, problem))
    if not drafts and not problems:
        problems.append(CsvProblem(1, "no rows after the header: one row per way of asking each question"))
    return drafts


def _id_fine(row: int, entry_id: str, problems: list[CsvProblem]) -> bool:
    if not entry_id:
        problems.append(CsvProblem(row, "empty id: every row needs the id of the entry it belongs to"))
    elif not re.fullmatch(FAQ_ID_PATTERN, entry_id):
        problems.append(CsvProblem(row, f"bad id {entry_id[:50]!r}: lowercase letters, digits and _, starting "
                                        "with a letter, at most 40 characters (e.g. delivery_time)"))
    else:
        return True
    return False


def _question_fine(row: int, entry_id: str, question: str, seen: dict[str, tuple[int, str]],
                   problems: list[CsvProblem]) -> bool:
    """Whether the row's question can be used; what is wrong with it goes to `problems`."""
    before = len(problems)
    if not question:
        problems.append(CsvProblem(row, "empty question: one row per way of asking (an answer alone goes "
                                        "on one of its entry's rows)"))
    elif len(question) > MAX_QUESTION:
        problems.append(CsvProblem(row, f"the question has {len(question)} characters, at most {MAX_QUESTION}"))
    elif problem := question_problem(question):
        problems.append(CsvProblem(row, problem))
    elif (form := normalise(question)) in seen:
        first, other = seen[form]
        where = "its entry" if other == entry_id else f"entry {other}"
        problems.append(CsvProblem(row, f"question {question!r} is already on row {first} for {where} "
                                        "(compared without spaces and case): keep one"))
    return len(problems) == before


def _check_drafts(drafts: dict[str, _Draft], problems: list[CsvProblem]) -> None:
    for draft in drafts.values():
        if not draft.answer:
            problems.append(CsvProblem(draft.row, f"entry {draft.id} has no answer: write it in the answer "
                                                  "column of one of its rows"))
        if draft.rows < MIN_QUESTIONS:
            problems.append(CsvProblem(draft.row, f"entry {draft.id} has {draft.rows} question(s): "
                                                  f"give at least {MIN_QUESTIONS} rows, one per way of asking"))


def _check_against(drafts: dict[str, _Draft], rows: list[list[str]], existing: FaqBook,
                   problems: list[CsvProblem]) -> None:
    """A question that an entry the import keeps (not one it replaces) already asks."""
    kept = {normalise(question): entry.id for entry in existing.entries.values() if entry.id not in drafts
            for question in entry.questions}
    for row, cells in enumerate(rows[1:], start=2):
        if len(cells) >= 2 and cells[0].strip() in drafts and (other := kept.get(normalise(cells[1]))):
            problems.append(CsvProblem(row, f"question {cells[1].strip()!r} is already asked by entry {other} "
                                            f"of {FAQ_FILE}: a phrasing belongs to one entry"))


def _entry(draft: _Draft, old: FaqEntry | None) -> FaqEntry:
    if old is not None:  # what the CSV cannot say (title, cards, tags, stage, hand-off) stays
        return replace(old, questions=tuple(draft.questions), answer=draft.answer, line=0)
    return FaqEntry(id=draft.id, title=draft.questions[0][:MAX_TITLE], questions=tuple(draft.questions),
                    answer=draft.answer)


def merge(book: FaqBook, imported: list[FaqEntry]) -> FaqBook:
    """The book with each imported entry in place of the one of its id, new ones at the end."""
    entries = dict(book.entries)
    entries.update((entry.id, entry) for entry in imported)
    return FaqBook(entries)


# ---------------------------------------------------------------- writing


def export_csv(book: FaqBook) -> str:
    """One row per question, the entry's answer on its first row: what `import_csv` reads back."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    for entry in book.entries.values():
        for index, question in enumerate(entry.questions):
            writer.writerow((entry.id, question, entry.answer if index == 0 else ""))
    return out.getvalue()


def render_faq(book: FaqBook) -> str:
    """faq.yaml for the book: a header comment, then each entry's keys in the documented order."""
    lines = [HEADER_COMMENT.rstrip("\n"), "faq:"]
    for entry in book.entries.values():
        lines += _entry_lines(entry)
    if not book.entries:
        lines[-1] = "faq: []"
    return "\n".join(lines) + "\n"


def _entry_lines(entry: FaqEntry) -> list[str]:
    lines = [f"  - id: {entry.id}", f"    title: {_scalar(entry.title)}", "    questions:"]
    lines += [f"      - {_scalar(question)}" for question in entry.questions]
    lines += _answer_lines(entry.answer)
    if entry.links:
        lines.append("    links:")
        lines += [f"      - {_mapping(title=link.title, url=link.url, desc=link.desc)}" for link in entry.links]
    if entry.miniprogram is not None:
        program = entry.miniprogram
        lines.append("    miniprogram: " + _mapping(appid=program.appid, pagepath=program.pagepath,
                                                     title=program.title, thumb_media_id=program.thumb_media_id))
    if entry.tags:
        lines.append(f"    tags: [{', '.join(_scalar(tag, flow=True) for tag in entry.tags)}]")
    if entry.set_stage:
        lines.append(f"    set_stage: {_scalar(entry.set_stage)}")
    if entry.handoff_if_repeated_s:
        lines.append(f"    handoff_if_repeated: {_duration(entry.handoff_if_repeated_s)}")
    return lines


def _answer_lines(answer: str) -> list[str]:
    """A multi-line answer as a literal block, so it reads as it will be sent."""
    block = answer.split("\n")
    if len(block) > 1 and all(_block_safe(line) for line in block):
        return ["    answer: |-", *(f"      {line}" if line else "" for line in block)]
    return [f"    answer: {_scalar(answer)}"]


def _block_safe(line: str) -> bool:
    return line == line.rstrip() and not line[:1].isspace() and all(_visible(char) for char in line)


_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})  # control, format, line breaks: escaped
_PLAIN = re.compile(r"[^\s\-?:,\[\]{}#&*!|>'\"%@`][^\n]*")
_STR = "tag:yaml.org,2002:str"


def _visible(char: str) -> bool:
    return unicodedata.category(char) not in _HIDDEN


def _scalar(text: str, flow: bool = False) -> str:
    """Plain when YAML reads it back as the same text, else double-quoted. `flow`: inside [...] or {...}."""
    plain = (
        _PLAIN.fullmatch(text) is not None
        and text == text.rstrip()
        and ": " not in text
        and " #" not in text
        and not text.endswith(":")
        and not (flow and any(char in text for char in ",[]{}:"))
        and all(_visible(char) for char in text)
        and _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) == _STR  # not yes, 1:30, null, a date...
    )
    return text if plain else _quoted(text)


_RESOLVER = yaml.resolver.Resolver()
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _quoted(text: str) -> str:
    def escape(char: str) -> str:
        if char in _ESCAPES:
            return _ESCAPES[char]
        if _visible(char):
            return char
        return f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}"

    return '"' + "".join(escape(char) for char in text) + '"'


def _mapping(**values: str) -> str:
    return "{" + ", ".join(f"{key}: {_scalar(value, flow=True)}" for key, value in values.items() if value) + "}"


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ---------------------------------------------------------------- importing into a directory


@dataclass(frozen=True)
class Imported:
    """What an import did (or, dry, would do): ids added and replaced, entries kept, the new faq.yaml."""

    path: Path
    added: tuple[str, ...]
    replaced: tuple[str, ...]
    kept: int
    text: str
    written: bool


def import_into(directory: Path, data: bytes | str, lifecycle: LifecycleSettings,
                known_intents: frozenset[str] | None = None, dry_run: bool = False) -> Imported:
    """Merge a CSV into the directory's faq.yaml: written only when every row is fine (else FaqCsvError)
    and the whole directory loads with the new file (else FlowLoadError, naming faq.yaml as it would be)."""
    sources = read_directory(directory)
    current = {name: sources[name] for name in (FAQ_FILE, TAGS_FILE) if name in sources}
    book = load_sources(current, lifecycle).faq if FAQ_FILE in current else FaqBook()
    imported = import_csv(data, book)
    text = render_faq(merge(book, imported))
    load_sources({**sources, FAQ_FILE: text}, lifecycle, known_intents)
    if not dry_run:
        _write_atomically(directory / FAQ_FILE, text)
    ids = [entry.id for entry in imported]
    replaced = tuple(entry_id for entry_id in ids if entry_id in book.entries)
    added = tuple(entry_id for entry_id in ids if entry_id not in book.entries)
    return Imported(directory / FAQ_FILE, added, replaced, len(book.entries) - len(replaced), text, not dry_run)


def _write_atomically(path: Path, text: str) -> None:
    """Readers (a publish, the editor) see the old file or the new one, never half of it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".faq-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


__all__ = ["CsvProblem", "FaqCsvError", "Imported", "export_csv", "import_csv", "import_into",
           "merge", "render_faq"]
