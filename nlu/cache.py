"""The parse cache: Rasa's answers kept in shared state, keyed by normalised text.

Customers repeat themselves ("在吗", "多少钱"), and Rasa is the throughput
ceiling, so each distinct text is parsed once per model. Keys carry the
project fingerprint: a retrained model never serves stale answers. Values are
JSON (never pickle). Only Rasa's answers are cached: a rules answer given while
Rasa was down must not outlive the outage. The namespace is the model Rasa serves
(its file name, the fingerprint): a new model, after a swap too, starts a fresh cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

from core.faults import FAULTS, fault_component
from core.shared_state import SharedState
from nlu.intent import SOURCE_CACHE, Entity, FaqMatch, Intent
from nlu.metrics import CACHE_ERRORS

log = logging.getLogger("scrm.nlu.cache")


class ParseCache:
    def __init__(self, state: SharedState, ttl_s: int, namespace: str, timeout_s: float) -> None:
        self._state = state
        self._ttl_s = ttl_s
        self._prefix = f"nlu:parse:{namespace}:"
        self._timeout_s = timeout_s

    @property
    def namespace(self) -> str:
        return self._prefix.removeprefix("nlu:parse:").removesuffix(":")

    def use_namespace(self, namespace: str) -> None:
        """Answers of another model from now on (the one Rasa now serves)."""
        self._prefix = f"nlu:parse:{namespace}:"

    @property
    def backend(self) -> str:
        return self._state.backend

    def key(self, text: str) -> str:
        return self._prefix + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    async def get(self, text: str) -> Intent | None:
        """The cached answer, or None (also when the store is slow or down: Rasa is asked instead)."""
        if self._ttl_s <= 0:
            return None
        try:
            raw = await asyncio.wait_for(self._state.get(self.key(text)), self._timeout_s)
            if raw is None:
                return None
            data = json.loads(raw)
            entities = tuple(Entity.from_dict(e) for e in data["e"])
            faq = FaqMatch.from_dict(data["f"]) if data.get("f") else None
            return Intent(str(data["i"]), float(data["c"]), entities, SOURCE_CACHE, faq)
        except Exception as exc:  # noqa: BLE001 - a cache failure must not fail the parse
            self._failed(exc, "read")
            return None

    async def put(self, text: str, intent: Intent) -> None:
        if self._ttl_s <= 0:
            return
        data = {"i": intent.name, "c": intent.confidence, "e": [e.to_dict() for e in intent.entities]}
        if intent.faq is not None:
            data["f"] = intent.faq.to_dict()
        value = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        try:
            await asyncio.wait_for(self._state.set(self.key(text), value, self._ttl_s), self._timeout_s)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc, "write")

    @staticmethod
    def _failed(exc: Exception, action: str) -> None:
        """Redis restarting is one warning for the outage (core/faults.py); anything else, a line each time."""
        CACHE_ERRORS.inc()
        if fault_component(exc) == "redis":
            FAULTS.seen("redis", f"nlu.cache.{action}", exc, retry="Rasa is asked directly, uncached")
        else:
            log.warning("nlu.cache.%s_failed error=%r", action, exc)
