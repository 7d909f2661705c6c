"""Accuracy of the NLU stage: held-out test set through our client, and Rasa's cross-validation.

The held-out figures come from the real path (text cleaning, Rasa over HTTP,
entity merge) with the cache off, so they measure what customers get. Macro
averages are over the intents of the test set; an nlu_fallback answer counts as
a miss for the true intent. Cross-validation trains K models on K splits of the
training data with `rasa test nlu --cross-validation` (slow: K trainings).

Not every miss costs the same. The confusion table (gold x predicted) marks the
harmful cells: a message read as one of HARMFUL_INTENTS when it meant something
else. Their count is reported apart from accuracy, and its goal is 0.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.shared_state import MemoryState
from nlu.client import NluClient
from nlu.intent import Intent
from nlu.rasa_runtime import TrainingFailed, rasa_env, rasa_executable
from nlu.settings import NluSettings
from nlu.training_data import Example, load_project

# Intents whose flows act at once in a way that is costly or hard to undo, so reading one into a
# message that meant something else hurts the customer, not just the figures:
#   unsubscribe     stops all marketing (the customer silently loses every offer, and nobody answers
#                   the complaint that was misread: "发错货了" read as unsubscribe);
#   join_group_buy  opens or joins a group-buy (holds stock, tells other members, counts as led);
#   refund          is taken as a demand for money back (tagged and queued for a person as one).
# The flows guard these (a confirmation for a free-text opt-out or a group opening, complaint
# signals first); the held-out count of harmful predictions shows how often they have to.
HARMFUL_INTENTS = frozenset({"unsubscribe", "join_group_buy", "refund"})


@dataclass(frozen=True)
class IntentScore:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Report:
    """Accuracy, macro-F1, per-intent scores and the most frequent confusions."""

    name: str
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_intent: dict[str, IntentScore]
    confusions: list[tuple[str, str, int, list[str]]]  # gold, predicted, count, example texts
    total: int
    table: dict[str, dict[str, int]] = field(default_factory=dict)  # gold -> predicted -> count, non-zero only
    harmful: list[tuple[str, str, int, list[str]]] = field(default_factory=list)  # the harmful cells
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def harmful_total(self) -> int:
        """Messages read as a costly intent they did not mean (HARMFUL_INTENTS); the goal is 0."""
        return sum(count for _, _, count, _ in self.harmful)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "total": self.total, "accuracy": round(self.accuracy, 4),
            "macro_precision": round(self.macro_precision, 4), "macro_recall": round(self.macro_recall, 4),
            "macro_f1": round(self.macro_f1, 4),
            "per_intent": {k: {"precision": round(v.precision, 4), "recall": round(v.recall, 4),
                               "f1": round(v.f1, 4), "support": v.support} for k, v in self.per_intent.items()},
            "confusions": [{"gold": g, "predicted": p, "count": n, "examples": ex} for g, p, n, ex in self.confusions],
            "confusion_table": {gold: dict(row) for gold, row in self.table.items()},
            "harmful": {"intents": sorted(HARMFUL_INTENTS), "count": self.harmful_total,
                        "cells": [{"gold": g, "predicted": p, "count": n, "examples": ex}
                                  for g, p, n, ex in self.harmful]},
            **self.extra,
        }


def score(name: str, gold: list[str], predicted: list[str], texts: list[str]) -> Report:
    """Classification report over the gold intents (like scikit-learn's, without the dependency)."""
    per_intent: dict[str, IntentScore] = {}
    for intent in sorted(set(gold)):
        tp = sum(1 for g, p in zip(gold, predicted, strict=True) if g == p == intent)
        predicted_n = sum(1 for p in predicted if p == intent)
        support = sum(1 for g in gold if g == intent)
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_intent[intent] = IntentScore(precision, recall, f1, support)
    pairs = Counter((g, p) for g, p in zip(gold, predicted, strict=True) if g != p)
    examples: dict[tuple[str, str], list[str]] = {}
    for g, p, t in zip(gold, predicted, texts, strict=True):
        if g != p:
            examples.setdefault((g, p), []).append(t)
    n = len(per_intent) or 1
    table = confusion_table(gold, predicted)
    return Report(
        name=name,
        accuracy=sum(1 for g, p in zip(gold, predicted, strict=True) if g == p) / (len(gold) or 1),
        macro_precision=sum(s.precision for s in per_intent.values()) / n,
        macro_recall=sum(s.recall for s in per_intent.values()) / n,
        macro_f1=sum(s.f1 for s in per_intent.values()) / n,
        per_intent=per_intent,
        confusions=[(g, p, c, examples[(g, p)][:3]) for (g, p), c in pairs.most_common(15)],
        total=len(gold),
        table=table,
        harmful=harmful_cells(table, examples),
    )


def confusion_table(gold: list[str], predicted: list[str]) -> dict[str, dict[str, int]]:
    """gold -> predicted -> count, with only the cells that occur."""
    table: dict[str, dict[str, int]] = {}
    for (g, p), count in sorted(Counter(zip(gold, predicted, strict=True)).items()):
        table.setdefault(g, {})[p] = count
    return table


def is_harmful(gold: str, predicted: str) -> bool:
    """A costly intent read into a message that meant something else."""
    return predicted in HARMFUL_INTENTS and predicted != gold


def harmful_cells(table: dict[str, dict[str, int]],
                  examples: dict[tuple[str, str], list[str]]) -> list[tuple[str, str, int, list[str]]]:
    """The harmful cells of a confusion table, largest first, with a few of their texts."""
    cells = [(g, p, n, examples.get((g, p), [])[:3]) for g, row in table.items() for p, n in row.items()
             if is_harmful(g, p)]
    return sorted(cells, key=lambda cell: (-cell[2], cell[0], cell[1]))


async def evaluate_held_out(settings: NluSettings, url: str | None, token: str | None,
                            concurrency: int = 8) -> Report:
    """Parse every test example through NluClient (cache off); Rasa must answer every one."""
    test = load_project(settings.project_path()).test
    rules_only = settings.mode == "rules"
    quiet = settings.model_copy(update={"cache_ttl_s": 0, "timeout_ms": max(settings.timeout_ms, 5000)})
    client = NluClient(quiet, MemoryState(), url, token)
    await client.start()
    try:
        if not rules_only and not await client.wait_ready(30):
            raise RuntimeError(f"Rasa at {url} does not answer: cannot evaluate the model")
        intents = await _parse_all(client, test, concurrency)
    finally:
        await client.close()
    fell_back = sum(1 for i in intents if i.source != ("rules" if rules_only else "rasa"))
    report = score("held-out test set" + (" (keyword rules only)" if rules_only else ""),
                   [e.intent for e in test], [i.name for i in intents], [e.text for e in test])
    report.extra = {"answered_by_rules_instead_of_rasa": 0 if rules_only else fell_back,
                    "entities": _entity_scores(test, intents)}
    return report


async def _parse_all(client: NluClient, examples: tuple[Example, ...], concurrency: int) -> list[Intent]:
    gate = asyncio.Semaphore(concurrency)

    async def one(text: str) -> Intent:
        async with gate:
            return await client.parse(text)

    return list(await asyncio.gather(*(one(e.text) for e in examples)))


def _entity_scores(examples: tuple[Example, ...], intents: list[Intent]) -> dict[str, float]:
    """Micro precision/recall/F1 over (entity, value) pairs."""
    tp = fp = fn = 0
    for example, intent in zip(examples, intents, strict=True):
        gold = Counter((n, v.upper() if "code" in n else v) for n, v in example.entities)
        got = Counter((e.name, e.value) for e in intent.entities)
        hit = sum((gold & got).values())
        tp, fp, fn = tp + hit, fp + sum(got.values()) - hit, fn + sum(gold.values()) - hit
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


async def cross_validate(settings: NluSettings, folds: int) -> Report:
    """Rasa's K-fold cross-validation on the training data, read back from its JSON report."""
    rasa = rasa_executable(settings)
    load_project(settings.project_path())
    with tempfile.TemporaryDirectory(prefix="scrm-nlu-cv-") as out:
        log_path = Path(out) / "cv.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                str(rasa), "test", "nlu", "--cross-validation", "--folds", str(folds), "--nlu", "data",
                "--config", "config.yml", "--out", out, "--no-plot",
                cwd=settings.project_path(), env=rasa_env(settings), stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
            code = await proc.wait()
        report_path = Path(out) / "intent_report.json"
        if code != 0 or not report_path.exists():
            raise TrainingFailed(f"rasa test nlu --cross-validation exited with {code}:\n"
                                 f"{log_path.read_text(errors='replace')[-2000:]}")
        data = json.loads(report_path.read_text())
        errors_path = Path(out) / "intent_errors.json"
        errors = json.loads(errors_path.read_text()) if errors_path.exists() else []
    return _report_from_rasa(f"{folds}-fold cross-validation", data, errors)


def _report_from_rasa(name: str, data: dict[str, Any], errors: list[dict[str, Any]]) -> Report:
    skip = {"accuracy", "macro avg", "weighted avg", "micro avg"}
    per_intent = {k: IntentScore(v["precision"], v["recall"], v["f1-score"], int(v["support"]))
                  for k, v in data.items() if k not in skip and isinstance(v, dict) and v.get("support")}
    n = len(per_intent) or 1
    pairs = Counter((e["intent"], (e.get("intent_prediction") or {}).get("name", "")) for e in errors)
    examples: dict[tuple[str, str], list[str]] = {}
    for e in errors:
        examples.setdefault((e["intent"], (e.get("intent_prediction") or {}).get("name", "")), []).append(e["text"])
    total = sum(s.support for s in per_intent.values())
    table: dict[str, dict[str, int]] = {}
    for gold, s in per_intent.items():  # the diagonal from recall, the rest from the errors
        hits = round(s.recall * s.support)
        if hits:
            table.setdefault(gold, {})[gold] = hits
    for (gold, predicted), count in sorted(pairs.items()):
        table.setdefault(gold, {})[predicted] = count
    return Report(
        name=name,
        accuracy=float(data.get("accuracy", 0.0)),
        macro_precision=sum(s.precision for s in per_intent.values()) / n,
        macro_recall=sum(s.recall for s in per_intent.values()) / n,
        macro_f1=sum(s.f1 for s in per_intent.values()) / n,
        per_intent=per_intent,
        confusions=[(g, p, c, examples[(g, p)][:3]) for (g, p), c in pairs.most_common(15)],
        total=total,
        table=table,
        harmful=harmful_cells(table, examples),
    )


def format_report(report: Report) -> str:
    """The human-readable form printed by `scrm nlu test`."""
    lines = [f"== {report.name}: {report.total} examples",
             (f"intent accuracy {report.accuracy:.3f}   macro precision {report.macro_precision:.3f}   "
             f"macro recall {report.macro_recall:.3f}   macro-F1 {report.macro_f1:.3f}")]
    for key, value in report.extra.items():
        lines.append(f"{key.replace('_', ' ')}: {value}")
    lines.append(f"{'intent':<22}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for intent, s in report.per_intent.items():
        lines.append(f"{intent:<22}{s.precision:>10.3f}{s.recall:>10.3f}{s.f1:>10.3f}{s.support:>9}")
    if report.confusions:
        lines.append("confusions (gold -> predicted: count, examples):")
        for gold, predicted, count, texts in report.confusions:
            lines.append(f"  {gold} -> {predicted}: {count}  {' | '.join(texts)}")
    lines += format_table(report.table)
    lines.append(f"harmful: {report.harmful_total} (a message read as {', '.join(sorted(HARMFUL_INTENTS))} "
                 "when it meant something else; goal 0)")
    for gold, predicted, count, texts in report.harmful:
        lines.append(f"  {gold} -> {predicted}: {count}  {' | '.join(texts)}")
    return "\n".join(lines)


def format_table(table: dict[str, dict[str, int]]) -> list[str]:
    """The confusion table's rows and columns that hold a mistake (rows gold, columns predicted, numbered);
    a harmful cell is marked with "!"."""
    wrong = [(g, p) for g, row in table.items() for p in row if p != g]
    if not wrong:
        return ["confusion table: no mistakes"]
    rows = sorted({g for g, _ in wrong})
    columns = rows + sorted({p for _, p in wrong} - set(rows))  # row n is column n: the diagonal is the hits
    number = {label: index + 1 for index, label in enumerate(columns)}
    lines = ["confusion table (rows gold, columns predicted; ! harmful):",
             f"{'':<26}" + "".join(f"{number[p]:>5}" for p in columns)]
    for gold in rows:
        cells = ""
        for predicted in columns:
            count = table[gold].get(predicted, 0)
            mark = "!" if count and is_harmful(gold, predicted) else ""
            cells += f"{f'{count}{mark}' if count else '.':>5}"
        lines.append(f"{number[gold]:>3} {gold:<22}" + cells)
    lines += [f"{number[label]:>3} {label}" for label in columns if label not in rows]
    return lines
