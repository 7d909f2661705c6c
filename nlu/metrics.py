"""Prometheus metrics of the NLU stage (default registry, names prefixed scrm_nlu_).

Defined once at import: several clients in one process (tests, the CLI) share
them rather than registering duplicates.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("scrm_nlu_requests", "Parses answered, by source (rasa, cache, rules)", ["source"])
NOT_NEEDED = Counter(
    "scrm_nlu_not_needed",
    "Messages understood without a parse, by why (typed_answer: a choice, a phone number, a number or an email "
    "that the waiting step takes)",
    ["reason"],
)
FALLBACKS = Counter(
    "scrm_nlu_fallbacks",
    "Parses answered by rules because Rasa could not answer, by reason "
    "(timeout, error, not_ready, no_rasa)",
    ["reason"],
)
LATENCY = Histogram(
    "scrm_nlu_parse_seconds",
    "Time to answer one parse, by source",
    ["source"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0),
)
RASA_UP = Gauge("scrm_nlu_rasa_up", "1 while Rasa answers, 0 while the rules answer instead")
CACHE_ERRORS = Counter("scrm_nlu_cache_errors", "Parse-cache reads or writes that failed or timed out")
