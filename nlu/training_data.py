"""Read and check the Rasa project's NLU data before Rasa ever sees it.

Rasa's own messages for bad data are late (after TensorFlow has loaded) and
often lack a line number. This module rejects, with file, line and reason:
broken YAML, an intent or entity that domain.yml does not list, the same text
under two intents, and a test example that also appears in the training data
(the held-out figures would be a lie).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from nlu.text import cache_form, clean

# `[面膜](product)`, `[面膜](product:mask)` and `[面膜]{"entity": "product"}`.
_ANNOTATION = re.compile(r"\[(?P<text>[^\]]+)\](?:\((?P<entity>[^:)]+)(?::[^)]*)?\)|\{(?P<json>[^}]*)\})")
_JSON_ENTITY = re.compile(r'"entity"\s*:\s*"(?P<entity>[^"]+)"')
FINGERPRINTED = ("config.yml", "domain.yml", "data", "jieba")
# Held-out phrasings of FAQ entries are tagged `faq/<entry>` (Rasa's retrieval intent syntax).
# The entries are not in domain.yml but in the flow directory: nlu/faq_training.py checks them.
FAQ_TEST_PREFIX = "faq/"


@dataclass(frozen=True)
class Problem:
    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class TrainingDataError(Exception):
    """The training or test data is not fit to train on; `problems` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Example:
    """One annotated example: `text` without annotations, `entities` as (name, value)."""

    intent: str
    text: str
    entities: tuple[tuple[str, str], ...]
    file: Path
    line: int


@dataclass(frozen=True)
class ProjectData:
    intents: tuple[str, ...]
    entities: tuple[str, ...]
    train: tuple[Example, ...]
    test: tuple[Example, ...]  # the intents' held-out examples
    faq_test: tuple[Example, ...] = ()  # held-out phrasings of FAQ entries (`faq/<entry>`)


def strip_annotations(annotated: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Plain text and (entity, value) pairs of one Rasa-annotated example."""
    entities: list[tuple[str, str]] = []

    def plain(match: re.Match[str]) -> str:
        name = match.group("entity")
        if name is None:
            found = _JSON_ENTITY.search(match.group("json") or "")
            name = found.group("entity") if found else ""
        entities.append((name.strip(), match.group("text")))
        return match.group("text")

    return _ANNOTATION.sub(plain, annotated), tuple(entities)


def load_examples(path: Path) -> list[Example]:
    """Examples of one NLU YAML file, with their line numbers; raises TrainingDataError."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise TrainingDataError([Problem(path, line, f"broken YAML: {getattr(exc, 'problem', exc)}")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingDataError([Problem(path, 1, f"cannot read: {exc}")]) from exc
    nlu = _mapping_get(root, "nlu")
    if not isinstance(nlu, yaml.SequenceNode):
        line = root.start_mark.line + 1 if root is not None else 1
        raise TrainingDataError([Problem(path, line, "expected a top-level 'nlu:' list")])
    examples: list[Example] = []
    problems: list[Problem] = []
    for item in nlu.value:
        intent = _mapping_get(item, "intent")
        block = _mapping_get(item, "examples")
        if intent is None:
            continue  # synonym, regex and lookup items carry no intent
        if not isinstance(intent, yaml.ScalarNode) or not isinstance(block, yaml.ScalarNode):
            problems.append(Problem(path, item.start_mark.line + 1, "an intent needs 'examples: |' with '- ' lines"))
            continue
        first_line = block.start_mark.line + (2 if block.style == "|" else 1)
        for offset, raw in enumerate(block.value.splitlines()):
            stripped = raw.strip()
            if not stripped:
                continue
            line = first_line + offset
            if not stripped.startswith("- ") or not stripped[2:].strip():
                problems.append(Problem(path, line, f"example must be '- text', got {stripped!r}"))
                continue
            text, entities = strip_annotations(stripped[2:].strip())
            examples.append(Example(intent.value, text, entities, path, line))
    if problems:
        raise TrainingDataError(problems)
    return examples


def _mapping_get(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)


def load_domain(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Intents and entities listed in domain.yml."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TrainingDataError([Problem(path, mark.line + 1 if mark else 1, f"broken YAML: {exc}")]) from exc
    return tuple(str(i) for i in data.get("intents") or ()), tuple(str(e) for e in data.get("entities") or ())


def load_project(project_dir: Path) -> ProjectData:
    """All training and test examples, checked; raises TrainingDataError listing every problem."""
    intents, entities = load_domain(project_dir / "domain.yml")
    problems: list[Problem] = []
    train = _load_all(sorted((project_dir / "data").rglob("*.yml")), problems)
    test = _load_all(sorted((project_dir / "test").rglob("*.yml")), problems)
    faq_test = [e for e in test if e.intent.startswith(FAQ_TEST_PREFIX)]
    test = [e for e in test if not e.intent.startswith(FAQ_TEST_PREFIX)]
    for example in (*train, *test):
        if example.intent not in intents:
            problems.append(Problem(example.file, example.line, f"unknown intent {example.intent!r}: "
                                    "add it to domain.yml or fix the name"))
        for name, _ in example.entities:
            if name not in entities:
                problems.append(Problem(example.file, example.line, f"unknown entity {name!r} "
                                        f"(domain.yml lists {', '.join(entities)})"))
    problems += _duplicates(train, "training example")
    problems += _duplicates(test, "test example")
    problems += _duplicates(faq_test, "FAQ test example")
    seen = {_key(e): e for e in train}
    for example in (*test, *faq_test):
        other = seen.get(_key(example))
        if other is not None:
            problems.append(Problem(example.file, example.line, f"{example.text!r} is also a training example "
                                    f"({other.file.name}:{other.line}): the test set must be held out"))
    if problems:
        raise TrainingDataError(problems)
    return ProjectData(intents, entities, tuple(train), tuple(test), tuple(faq_test))


def _load_all(paths: list[Path], problems: list[Problem]) -> list[Example]:
    examples: list[Example] = []
    for path in paths:
        try:
            examples += load_examples(path)
        except TrainingDataError as exc:
            problems += exc.problems
    return examples


def _key(example: Example) -> str:
    return cache_form(clean(example.text, 10_000))


def _duplicates(examples: list[Example], what: str) -> list[Problem]:
    first: dict[str, Example] = {}
    problems = []
    for example in examples:
        other = first.setdefault(_key(example), example)
        if other is not example and other.intent != example.intent:
            problems.append(Problem(example.file, example.line, f"{what} {example.text!r} is under intent "
                                    f"{example.intent!r} here and {other.intent!r} at {other.file.name}:{other.line}"))
    return problems


def fingerprint(project_dir: Path, extra: str = "") -> str:
    """A short hash of everything that shapes the model: same fingerprint, same model."""
    digest = hashlib.sha256(extra.encode())
    for name in FINGERPRINTED:
        target = project_dir / name
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for path in files:
            if path.exists():
                digest.update(str(path.relative_to(project_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
