"""Clusters of what customers asked that nothing answered: the FAQ entries worth writing next.

    texts → clean (nlu.text) → drop junk, digits, emoji → a key per text → count equal keys →
    greedy clustering of the keys, most frequent first → clusters, most asked first

A key is the text's cache form without punctuation, with question fillers (请问, 怎么, 吗…) taken
out and digit runs made one "#" (order numbers differ, the question does not). Two keys are alike
when the Jaccard similarity of their character bigrams is at least THRESHOLD: "能开发票吗",
"怎么开发票" and "可以开发票吗" all become "开发票". Without the fillers, short Chinese questions
share too few bigrams for any threshold to group them; with them out, 0.34 to 0.5 gave the same
groups on the tests' shop messages, and 0.5 keeps neighbouring topics (发货 / 新疆发货) apart.
The keys are visited most frequent first and each joins the cluster whose leader (its first,
most frequent key) is most alike, or leads a new one: deterministic, and no chaining of one topic
into the next. An inverted index from bigram to leaders keeps it near linear: 5,000 texts take
about 0.1 s, 0.3 s when all 5,000 differ (tests/flows/test_faq_suggest.py holds it under 1 s).

Why hand-written and not a library: the texts are a few thousand short messages, and bigram
overlap is what tells Chinese phrasings apart without a word segmenter; an embedding model or
scikit-learn would bring a heavy dependency to the admin's CLI for no better groups (the Rasa
model lives in its own virtualenv, nlu/requirements-rasa.txt, which this process does not load).
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from crm_store.faq_reports import Unanswered
from flows.faq_csv import HEADER
from nlu.text import cache_form, clean, looks_like_junk

THRESHOLD = 0.5  # Jaccard of character bigrams: tuned on the phrasings in the tests
MAX_CHARS = 200  # as much as the timeline keeps of a message
EXAMPLES = 3
QUESTIONS = 10  # phrasings kept per suggestion: the rows of its CSV
# Words that ask without saying what (greetings, "how", "how much", "can I", particles): taken out so
# that phrasings of one question keep only its topic, and share their bigrams.
FILLERS = ("请问一下", "请问", "问一下", "想问", "你好", "您好", "在吗", "怎么样", "怎么办", "怎么", "怎样", "如何",
           "可不可以", "可以", "能不能", "能否", "是不是", "有没有", "为什么", "为啥", "什么时候", "啥时候",
           "什么", "多少钱", "多少", "多久", "多长时间", "几天", "哪里", "在哪", "哪儿", "一下", "我想", "我要",
           "我的", "你们", "这个", "吗", "呢", "啊", "呀", "吧", "嘛", "哦", "哈", "的", "了", "是", "能", "有")
_FILLERS = re.compile("|".join(map(re.escape, sorted(FILLERS, key=len, reverse=True))))
_DIGITS = re.compile(r"\d+")
ByKey = dict[str, list[tuple[str, str, Unanswered]]]  # key → (text, phrasing, message) of each message


@dataclass(frozen=True)
class Suggestion:
    """One cluster: a candidate FAQ entry, with what customers wrote most often first."""

    id: str  # a placeholder id in the FAQ's form ([a-z][a-z0-9_]*): the admin renames it
    title: str  # the most common text
    count: int  # messages in the cluster
    customers: int  # different customers who sent them
    handed_off: int  # of the messages, followed by a handoff (in their turn or soon after)
    examples: tuple[str, ...]  # up to EXAMPLES texts, most frequent first
    questions: tuple[str, ...]  # up to QUESTIONS phrasings (texts equal but for case, spaces and
    # punctuation are one, spelled as most often written), most frequent first


@dataclass
class _Cluster:
    leader: frozenset[str]
    texts: Counter[str] = field(default_factory=Counter)  # by phrasing (_form)
    spellings: dict[str, Counter[str]] = field(default_factory=dict)  # phrasing → its texts as written
    customers: set[int] = field(default_factory=set)
    handed_off: int = 0

    def add(self, text: str, form: str, item: Unanswered) -> None:
        self.texts[form] += 1
        self.spellings.setdefault(form, Counter())[text] += 1
        self.customers.add(item.customer_id)
        self.handed_off += item.handed_off


def _form(text: str) -> str:
    """A phrasing: the cache form without punctuation and symbols ("能开发票吗？" is "能开发票吗")."""
    form = cache_form(text)
    return "".join(ch for ch in form if unicodedata.category(ch)[0] in "LN") or form


def key_of(text: str) -> str:
    """What is left of a cleaned text to compare: letters and ideographs, fillers out, digit runs as "#"."""
    return _key(_form(text))


def _key(form: str) -> str:
    kept = _DIGITS.sub("#", form)
    return _FILLERS.sub("", kept) or kept


def is_question(text: str) -> bool:
    """Worth clustering: not junk, and more than digits, emoji and punctuation."""
    return not looks_like_junk(text) and any(unicodedata.category(ch)[0] == "L" for ch in text)


def bigrams(key: str) -> frozenset[str]:
    return frozenset(key[i:i + 2] for i in range(len(key) - 1)) if len(key) > 1 else frozenset((key,))


def suggest(asked: Iterable[Unanswered], limit: int = 20, threshold: float = THRESHOLD) -> list[Suggestion]:
    """The `limit` largest clusters of `asked`, most messages first (then most customers, then title)."""
    read: dict[str, tuple[str, str] | None] = {}  # a text as sent → (cleaned, phrasing), None: no question
    by_key: ByKey = defaultdict(list)
    for item in asked:
        said = read[item.text] if item.text in read else read.setdefault(item.text, _read(item.text))
        if said is not None:
            by_key[_key(said[1])].append((*said, item))
    found = sorted((_suggestion(cluster) for cluster in _cluster(by_key, threshold)),
                   key=lambda s: (-s.count, -s.customers, s.title))
    return [replace(suggestion, id=f"new_{rank:02d}") for rank, suggestion in enumerate(found[:limit], 1)]


def _read(text: str) -> tuple[str, str] | None:
    cleaned = clean(text, MAX_CHARS)
    return (cleaned, _form(cleaned)) if is_question(cleaned) else None


def _cluster(by_key: ByKey, threshold: float) -> list[_Cluster]:
    clusters: list[_Cluster] = []
    index: dict[str, list[int]] = defaultdict(list)  # bigram → the clusters whose leader has it
    for key in sorted(by_key, key=lambda k: (-len(by_key[k]), k)):
        grams = bigrams(key)
        found = _most_alike(grams, clusters, index, threshold)
        if found is None:
            found = len(clusters)
            clusters.append(_Cluster(grams))
            for gram in grams:
                index[gram].append(found)
        for text, form, item in by_key[key]:
            clusters[found].add(text, form, item)
    return clusters


def _most_alike(grams: frozenset[str], clusters: list[_Cluster], index: dict[str, list[int]],
                threshold: float) -> int | None:
    """The cluster whose leader is most alike (Jaccard ≥ threshold; the earliest of equals), if any."""
    shared: Counter[int] = Counter()
    for gram in grams:
        shared.update(index.get(gram, ()))
    best, best_score = None, threshold
    for candidate, common in sorted(shared.items()):
        score = common / (len(grams) + len(clusters[candidate].leader) - common)
        if score > best_score or (score == best_score and best is None):
            best, best_score = candidate, score
    return best


def _suggestion(cluster: _Cluster) -> Suggestion:
    forms = sorted(cluster.texts.items(), key=lambda item: (-item[1], item[0]))
    questions = tuple(_commonest(cluster.spellings[form]) for form, _ in forms[:QUESTIONS])
    return Suggestion("", questions[0], cluster.texts.total(), len(cluster.customers), cluster.handed_off,
                      questions[:EXAMPLES], questions)


def _commonest(texts: Counter[str]) -> str:
    """The most frequent of `texts`, the first in text order of equals: the same whatever the input order."""
    return min(texts.items(), key=lambda item: (-item[1], item[0]))[0]


def suggestions_csv(suggestions: Iterable[Suggestion]) -> str:
    """The suggestions as `scrm faq import` reads a CSV (flows/faq_csv.py): a row per phrasing, the answer
    empty for the admin to write (the import refuses an entry without one)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    for suggestion in suggestions:
        writer.writerows((suggestion.id, question, "") for question in suggestion.questions)
    return out.getvalue()
