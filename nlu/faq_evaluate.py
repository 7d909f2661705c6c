"""How well the FAQ is answered: its held-out phrasings, and messages it must leave alone.

Held out: nlu/project/test/faq_test.yml (`- intent: faq/<entry>`), never trained on.
Off-topic: the out_of_scope examples of the intents' held-out set (nlu_test.yml) and the
`offtopic:` list of faq_test.yml; the goal is that the FAQ answers none of them.

Two accuracies, because they fail differently:
  retrieval - the ResponseSelector's first pick is the right entry (what the issue calls retrieval);
  answered  - the bot would answer with it: DIET says the message is an FAQ question (`faq`, or one of
              the intents the FAQ answers too) and the selector is at least `answer_at` sure, the rule
              of flows/faq_answers.py (Intent.sure_faq_entry).
Everything goes through NluClient with the cache off, as customers' messages do.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.shared_state import MemoryState
from nlu.client import NluClient
from nlu.faq_training import FAQ_TEST_FILE, FaqRows, held_out
from nlu.intent import OUT_OF_SCOPE_INTENT, Intent
from nlu.settings import NluSettings
from nlu.training_data import load_project

DEFAULT_ANSWER_AT = 0.7  # flows.faq_answer_at's default
DEFAULT_ANSWER_INTENTS = ("ask_shipping",)  # flows.faq_answers_intents' default


def answered_entry(intent: Intent, answer_at: float, also_intents: tuple[str, ...] = DEFAULT_ANSWER_INTENTS) -> str | None:
    """The entry the bot answers this parse with (flows/faq_answers.py's rule), or None."""
    return intent.sure_faq_entry(answer_at, also_intents)


@dataclass
class FaqReport:
    answer_at: float
    total: int = 0
    retrieval_hits: int = 0
    answered_hits: int = 0
    misses: list[dict[str, Any]] = field(default_factory=list)  # text, gold, picked, intent, confidence
    skipped: tuple[str, ...] = ()  # entries of the held-out set this FAQ does not have
    offtopic_total: int = 0
    offtopic_answered: list[dict[str, Any]] = field(default_factory=list)  # text, entry, confidence
    sources: dict[str, int] = field(default_factory=dict)

    @property
    def retrieval_accuracy(self) -> float:
        return self.retrieval_hits / (self.total or 1)

    @property
    def answered_accuracy(self) -> float:
        return self.answered_hits / (self.total or 1)

    @property
    def offtopic_rate(self) -> float:
        return len(self.offtopic_answered) / (self.offtopic_total or 1)

    def to_dict(self) -> dict[str, Any]:
        return {"answer_at": self.answer_at, "held_out": self.total,
                "retrieval_accuracy": round(self.retrieval_accuracy, 4),
                "answered_accuracy": round(self.answered_accuracy, 4), "misses": self.misses,
                "skipped_entries": list(self.skipped),
                "offtopic": self.offtopic_total, "offtopic_answered": len(self.offtopic_answered),
                "offtopic_rate": round(self.offtopic_rate, 4), "offtopic_answered_examples": self.offtopic_answered,
                "sources": self.sources}


def offtopic_messages(project_dir: Path) -> list[str]:
    """Messages no FAQ entry answers: out_of_scope of the held-out set, and faq_test.yml's `offtopic:`."""
    texts = [e.text for e in load_project(project_dir).test if e.intent == OUT_OF_SCOPE_INTENT]
    path = project_dir / "test" / FAQ_TEST_FILE
    if path.exists():
        extra = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("offtopic") or []
        texts += [str(text) for text in extra if str(text).strip()]
    return list(dict.fromkeys(texts))


async def evaluate_faq(settings: NluSettings, url: str | None, token: str | None, faq: FaqRows,
                       answer_at: float = DEFAULT_ANSWER_AT, concurrency: int = 8,
                       answer_intents: tuple[str, ...] = DEFAULT_ANSWER_INTENTS) -> FaqReport:
    """Parse the held-out phrasings and the off-topic messages; with `url` None, the keyword rules answer."""
    project = settings.project_path()
    examples, skipped = held_out(faq, load_project(project))
    offtopic = offtopic_messages(project)
    quiet = settings.model_copy(update={"cache_ttl_s": 0, "timeout_ms": max(settings.timeout_ms, 5000)})
    client = NluClient(quiet, MemoryState(), url, token, faq=faq)
    await client.start()
    try:
        if url and not await client.wait_ready(30):
            raise RuntimeError(f"Rasa at {url} does not answer: cannot evaluate the FAQ")
        intents = await _parse_all(client, [e.text for e in examples] + offtopic, concurrency)
    finally:
        await client.close()
    report = FaqReport(answer_at, total=len(examples), skipped=skipped, offtopic_total=len(offtopic),
                       sources=dict(Counter(i.source for i in intents)))
    for example, intent in zip(examples, intents, strict=False):
        gold = example.intent.partition("/")[2]
        picked = intent.faq.entry if intent.faq else None
        report.retrieval_hits += picked == gold
        answered = answered_entry(intent, answer_at, answer_intents)
        report.answered_hits += answered == gold
        if answered != gold:
            report.misses.append({"text": example.text, "gold": gold, "picked": picked, "intent": intent.name,
                                  "confidence": round(intent.faq.confidence, 3) if intent.faq else None})
    for text, intent in zip(offtopic, intents[len(examples):], strict=True):
        entry = answered_entry(intent, answer_at, answer_intents)
        if entry is not None:
            confidence = intent.faq.confidence if intent.faq else 0.0
            report.offtopic_answered.append({"text": text, "entry": entry, "confidence": round(confidence, 3)})
    return report


async def _parse_all(client: NluClient, texts: list[str], concurrency: int) -> list[Intent]:
    gate = asyncio.Semaphore(concurrency)

    async def one(text: str) -> Intent:
        async with gate:
            return await client.parse(text)

    return list(await asyncio.gather(*(one(text) for text in texts)))


def format_faq_report(report: FaqReport) -> str:
    """The human-readable form printed by `scrm faq test`."""
    lines = [f"== FAQ held-out phrasings: {report.total} (answered at confidence >= {report.answer_at:g})",
             f"retrieval accuracy {report.retrieval_accuracy:.3f}   answered accuracy {report.answered_accuracy:.3f}",
             f"== off-topic messages: {report.offtopic_total}, answered by an FAQ: "
             f"{len(report.offtopic_answered)} (rate {report.offtopic_rate:.3f}, goal 0)",
             f"sources: {', '.join(f'{k} {v}' for k, v in sorted(report.sources.items()))}"]
    if report.skipped:
        lines.append(f"not scored (in faq_test.yml, not in this FAQ): {', '.join(report.skipped)}")
    if report.misses:
        lines.append("held-out phrasings not answered with their entry (text: gold -> picked, intent, confidence):")
        lines += [f"  {m['text']}: {m['gold']} -> {m['picked']}, {m['intent']}, {m['confidence']}"
                  for m in report.misses]
    if report.offtopic_answered:
        lines.append("off-topic messages answered (text: entry, confidence):")
        lines += [f"  {o['text']}: {o['entry']}, {o['confidence']}" for o in report.offtopic_answered]
    return "\n".join(lines)
