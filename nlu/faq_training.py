"""FAQ entries as Rasa retrieval intents: the training project that adds them to the intents.

The FAQ lives in the flow directory (flows/faq_model.py); this layer cannot import flows,
so it takes the entries as plain rows, `(id, questions, answer)`, which is what
`FaqBook.training_rows()` gives. With rows, the model is trained from a build directory
under the model dir (`build/<fingerprint>/`), never from nlu/project, which stays the
hand-edited source: the project's files, plus

    data/faq.yml   - `- intent: faq/<id>` with the entry's questions as examples;
    domain.yml     - the `faq` intent and one `utter_faq/<id>` response per entry;
    config.yml     - the project's pipeline with a ResponseSelector for `faq` after DIET.

DIET learns one more intent, `faq` (every entry's questions together), and the
ResponseSelector learns which entry. The answers are sent from the published release, never
from the model, so the responses in the domain hold the entry's id, not its answer: rewording
an answer changes neither the model nor its fingerprint, and needs no training.

The answers' sentences as examples too (ANSWER_SENTENCES) were measured and left off: they
carry words customers use that the questions miss (冷藏, 手提袋), taking held-out retrieval
from 0.76 to 0.83, but DIET learns them for `faq` as well, and answers speak of complaints
("发错货、漏发"): "发错货了！！！" was read as `faq` instead of `complain`.
Without rows, nothing here is used and the model is exactly the project's.
"""

from __future__ import annotations

import json
import re
import shutil
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from nlu.intent import RETRIEVAL_INTENT
from nlu.text import cache_form, clean
from nlu.training_data import FINGERPRINTED, Example, Problem, ProjectData, TrainingDataError, load_project

FaqRow = tuple[str, tuple[str, ...], str]  # (entry id, questions, answer): FaqBook.training_rows()
FaqRows = Sequence[FaqRow]

FAQ_DATA_FILE = "faq.yml"
FAQ_TEST_FILE = "faq_test.yml"  # in the project's test/ folder: held-out phrasings, never trained on
MAX_QUESTION_CHARS = 300  # as nlu.max_text_chars: longer text is never what a customer's parse sees

# Chosen by held-out retrieval accuracy on the starter FAQ (24 entries, 72 held-out phrasings)
# against training time on this 2-core machine, the rest of the pipeline fixed:
#   100 epochs 0.68 | 300 epochs 0.74 (+~40 s) | 300, 64-d embeddings, all 23 negatives 0.76 |
#   300 epochs with the answers' sentences as examples 0.83 (off: see the module's docstring).
# The questions matter more than the settings: with 12-14 questions an entry instead of 5-7, the same
# selector retrieves 0.920 of 162 held-out phrasings (0.809 before; 0.933 against 0.878 on the 90 written
# from the entries' titles and answers alone), and DIET reads no held-out intent as a costly one (1 before).
# No transformer (a question is a few words: the bag of word and character n-grams tells entries
# apart); `use_text_as_label` (answers as labels) fails in Rasa 3.6 with these featurizers.
SELECTOR: dict[str, Any] = {
    "name": "ResponseSelector",
    "retrieval_intent": RETRIEVAL_INTENT,
    "epochs": 300,
    "hidden_layers_sizes": {"text": [256, 128], "label": [256, 128]},
    "number_of_transformer_layers": 0,
    "embedding_dimension": 64,
    "number_of_negative_examples": 23,
    "constrain_similarities": True,
    "model_confidence": "softmax",
    "ranking_length": 10,
    "random_seed": 42,
}
ANSWER_SENTENCES = False  # measured, and off: see the module's docstring


def faq_fingerprint_part(rows: FaqRows) -> str:
    """What the FAQ adds to the model's fingerprint: the selector's settings and every example it
    trains on, in file order (the order of training examples shapes a seeded training); the
    answers only when their sentences are examples."""
    if not rows:
        return ""
    examples = [[entry, list(training_examples(questions, answer))] for entry, questions, answer in rows]
    return json.dumps({"selector": SELECTOR, "answer_sentences": ANSWER_SENTENCES, "faq": examples},
                      ensure_ascii=False, sort_keys=True)


def training_examples(questions: Sequence[str], answer: str) -> tuple[str, ...]:
    """An entry's examples: its questions, then (ANSWER_SENTENCES) the sentences of its answer."""
    texts = [_example(q) for q in questions]
    if ANSWER_SENTENCES:
        texts += [_example(sentence) for sentence in _SENTENCE_END.split(answer)]
    return tuple(dict.fromkeys(text for text in texts if len(normal_form(text)) >= 2))


def normal_form(text: str) -> str:
    """How FAQ questions and messages are compared: cleaned, case and spaces folded, no punctuation."""
    folded = cache_form(clean(text, MAX_QUESTION_CHARS * 4))
    return "".join(ch for ch in folded if not unicodedata.category(ch).startswith("P"))


def check_faq(rows: FaqRows, data: ProjectData) -> None:
    """What only the NLU can know is wrong with the FAQ; raises TrainingDataError listing every problem.

    A question that is also an intent's training example teaches DIET two labels for one text.
    (The held-out phrasings are checked when they are used, by `held_out`: they belong to the
    starter FAQ, and a brand's own FAQ must train without them.)
    """
    problems: list[Problem] = []
    where = Path("faq")
    examples = {_key(e.text): e for e in data.train}
    owner: dict[str, str] = {}
    for entry, questions, _answer in rows:
        if not entry or "/" in entry or entry != entry.strip():
            problems.append(Problem(where, 0, f"entry id {entry!r} cannot name a retrieval intent"))
        if not any(normal_form(q) for q in questions):
            problems.append(Problem(where, 0, f"entry {entry!r} has no question to train on"))
        for question in questions:
            key = _key(question)
            example = examples.get(key)
            if example is not None:
                problems.append(Problem(example.file, example.line, f"{example.text!r} is a training example of "
                                        f"intent {example.intent!r} and a question of FAQ entry {entry!r}: the model "
                                        "cannot learn both; reword or remove one"))
            if owner.setdefault(key, entry) != entry:
                problems.append(Problem(where, 0, f"question {question!r} is under FAQ entries {owner[key]!r} "
                                        f"and {entry!r}"))
    if problems:
        raise TrainingDataError(problems)


def held_out(rows: FaqRows, data: ProjectData) -> tuple[tuple[Example, ...], tuple[str, ...]]:
    """The held-out phrasings of entries this FAQ has, and the ids of those it lacks (skipped, not scored).

    Raises TrainingDataError for a phrasing that is also one of the entries' questions: trained on,
    it would make the held-out accuracy a lie.
    """
    entries = {entry for entry, _, _ in rows}
    questions = {_key(question): entry for entry, asked, _ in rows for question in asked}
    leaked = [Problem(e.file, e.line, f"{e.text!r} is also a question of FAQ entry {questions[_key(e.text)]!r}: "
                      "the held-out set must be held out") for e in data.faq_test if _key(e.text) in questions]
    if leaked:
        raise TrainingDataError(leaked)
    usable = tuple(e for e in data.faq_test if e.intent.partition("/")[2] in entries)
    missing = tuple(dict.fromkeys(e.intent.partition("/")[2] for e in data.faq_test if e not in usable))
    return usable, missing


def _key(text: str) -> str:
    return cache_form(clean(text, 10_000))


def build_project(project_dir: Path, build_dir: Path, rows: FaqRows) -> Path:
    """The training project for the intents plus the FAQ, written afresh into `build_dir`.

    Checks the project and the FAQ first (TrainingDataError with file, line and reason).
    """
    check_faq(rows, load_project(project_dir))
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    for name in FINGERPRINTED:
        source = project_dir / name
        if source.is_dir():
            shutil.copytree(source, build_dir / name)
        elif source.exists():
            shutil.copy2(source, build_dir / name)
    (build_dir / "config.yml").write_text(config_text(project_dir / "config.yml"), encoding="utf-8")
    (build_dir / "domain.yml").write_text(domain_text(project_dir / "domain.yml", rows), encoding="utf-8")
    (build_dir / "data" / FAQ_DATA_FILE).write_text(faq_data_text(rows), encoding="utf-8")
    return build_dir


def config_text(project_config: Path) -> str:
    """The project's config with the ResponseSelector right after DIET (or at the end)."""
    config = yaml.safe_load(project_config.read_text(encoding="utf-8")) or {}
    pipeline = [c for c in config.get("pipeline") or [] if c.get("name") != "ResponseSelector"]
    at = next((i + 1 for i, c in enumerate(pipeline) if c.get("name") == "DIETClassifier"), len(pipeline))
    pipeline.insert(at, dict(SELECTOR))
    config["pipeline"] = pipeline
    return _GENERATED + yaml.safe_dump(config, allow_unicode=True, sort_keys=False)


def domain_text(project_domain: Path, rows: FaqRows) -> str:
    """The project's domain, plus the `faq` intent and a response per entry (the id: answers are not in the model)."""
    domain = yaml.safe_load(project_domain.read_text(encoding="utf-8")) or {}
    intents = [i for i in domain.get("intents") or [] if i != RETRIEVAL_INTENT]
    domain["intents"] = [*intents, RETRIEVAL_INTENT]
    responses = dict(domain.get("responses") or {})
    responses.update({f"utter_{RETRIEVAL_INTENT}/{entry}": [{"text": entry}] for entry, _, _ in rows})
    domain["responses"] = responses
    return _GENERATED + yaml.safe_dump(domain, allow_unicode=True, sort_keys=False)


def faq_data_text(rows: FaqRows) -> str:
    """Rasa NLU YAML: one `faq/<id>` retrieval intent per entry, its questions as examples."""
    blocks = []
    for entry, questions, answer in rows:
        lines = "".join(f"    - {text}\n" for text in training_examples(questions, answer))
        blocks.append(f"- intent: {RETRIEVAL_INTENT}/{entry}\n  examples: |\n{lines}")
    return _GENERATED + 'version: "3.1"\nnlu:\n' + "".join(blocks)


def _example(question: str) -> str:
    """One line of Rasa's example block: no line breaks, and brackets that Rasa would read as an entity."""
    return clean(question, MAX_QUESTION_CHARS).replace("[", "【").replace("]", "】")


_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])|\n")
_GENERATED = "# Generated by nlu/faq_training.py from nlu/project and the FAQ: edit those, not this file.\n"
