"""Accuracy of the NLU stage: held-out test set through our client, and Rasa's cross-validation.

The held-out figures come from the real path (text cleaning, Rasa over HTTP,
entity merge) with the cache off, so they measure what customers get. Macro
averages are over the intents of the test set; an nlu_fallback answer counts as
a miss for the true intent. Cross-validation trains K models on K splits of the
training data with `rasa test nlu --cross-validation` (slow: K trainings).
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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "total": self.total, "accuracy": round(self.accuracy, 4),
            "macro_precision": round(self.macro_precision, 4), "macro_recall": round(self.macro_recall, 4),
            "macro_f1": round(self.macro_f1, 4),
            "per_intent": {k: {"precision": round(v.precision, 4), "recall": round(v.recall, 4),
                               "f1": round(v.f1, 4), "support": v.support} for k, v in self.per_intent.items()},
            "confusions": [{"gold": g, "predicted": p, "count": n, "examples": ex} for g, p, n, ex in self.confusions],
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
    return Report(
        name=name,
        accuracy=sum(1 for g, p in zip(gold, predicted, strict=True) if g == p) / (len(gold) or 1),
        macro_precision=sum(s.precision for s in per_intent.values()) / n,
        macro_recall=sum(s.recall for s in per_intent.values()) / n,
        macro_f1=sum(s.f1 for s in per_intent.values()) / n,
        per_intent=per_intent,
        confusions=[(g, p, c, examples[(g, p)][:3]) for (g, p), c in pairs.most_common(15)],
        total=len(gold),
    )


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
    return Report(
        name=name,
        accuracy=float(data.get("accuracy", 0.0)),
        macro_precision=sum(s.precision for s in per_intent.values()) / n,
        macro_recall=sum(s.recall for s in per_intent.values()) / n,
        macro_f1=sum(s.f1 for s in per_intent.values()) / n,
        per_intent=per_intent,
        confusions=[(g, p, c, examples[(g, p)][:3]) for (g, p), c in pairs.most_common(15)],
        total=total,
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
    return "\n".join(lines)
