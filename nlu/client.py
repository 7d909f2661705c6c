"""The NLU stage's one entry point: `await client.parse(text) -> Intent`, which never raises.

Order of answers: cache, then Rasa within `timeout_ms`, then keyword rules.
Rasa being slow, failing or not ready yet never delays a reply past the
timeout, and it is never silent: every rules answer given in Rasa's place is
counted (scrm_nlu_fallbacks{reason}), `health()` turns "degraded", and the
change of state is logged (nlu.rasa.down / nlu.rasa.up).

Intent.source says where an answer came from:
  "rasa"  - a fresh answer from the Rasa server;
  "cache" - an earlier Rasa answer for the same normalised text;
  "rules" - the keyword rules in nlu/project/rules.yml and the FAQ's titles and
            questions (Rasa slow, failing, not ready or disabled by nlu.mode = "rules";
            also empty or junk input).

With an FAQ in the model, Intent.faq holds the ResponseSelector's pick for every
message Rasa parses (entry, confidence, the closest three): DIET's intent says
whether the message is an FAQ question at all (`faq`), which the flows layer
checks before answering; the ranking serves to offer choices when DIET is unsure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from core.shared_state import SharedState
from nlu.cache import ParseCache
from nlu.faq_training import FaqRows
from nlu.intent import (
    FALLBACK_INTENT,
    OUT_OF_SCOPE_INTENT,
    RETRIEVAL_INTENT,
    SOURCE_RASA,
    SOURCE_RULES,
    SOURCES,
    Entity,
    FaqMatch,
    Intent,
)
from nlu.metrics import FALLBACKS, LATENCY, RASA_UP, REQUESTS
from nlu.rasa_runtime import model_file
from nlu.rules import FaqRules, RuleSet, load_rules
from nlu.server import rasa_status
from nlu.settings import NluSettings
from nlu.text import cache_form, clean, looks_like_junk

__all__ = ["FALLBACK_INTENT", "OUT_OF_SCOPE_INTENT", "SOURCES", "Entity", "Intent", "NluClient"]

log = logging.getLogger("scrm.nlu.client")

PROBE_INTERVAL_S = 0.5  # while Rasa is down: how often to look for it
HEALTHY_PROBE_INTERVAL_S = 5.0  # while it is up: notice a dead server even without traffic
FALLBACK_LOG_EVERY_S = 30.0
CODE_ENTITIES = frozenset({"group_code", "invite_code"})
FAQ_RANKING = 3  # closest entries kept in Intent.faq.ranking: what the bot can offer as choices


class RasaError(Exception):
    """Rasa answered with an error status or a body we cannot read."""


class NluClient:
    """`faq` holds the FAQ's rows (FaqBook.training_rows()) and `faq_titles` the entries' titles: what the
    keyword rules answer FAQ questions with while Rasa cannot, and which model the cache starts with."""

    def __init__(self, settings: NluSettings, state: SharedState, rasa_url: str | None = None,
                 token: str | None = None, faq: FaqRows = (), faq_titles: Mapping[str, str] | None = None) -> None:
        self._settings = settings
        self._url = (rasa_url or settings.rasa_url).rstrip("/")
        self._token = token if token is not None else settings.auth_token.get_secret_value()
        self._timeout_s = settings.timeout_ms / 1000
        self._rules: RuleSet = load_rules(settings.project_path() / "rules.yml")
        self._faq_rules = FaqRules(faq, faq_titles)
        self._cache = ParseCache(state, settings.cache_ttl_s, _cache_namespace(settings, faq), self._timeout_s / 3)
        self._session: aiohttp.ClientSession | None = None
        self._probe: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[Intent]] = {}
        self._up = False
        self._failures = 0
        self._down_since = time.monotonic()
        self._down_reason = "not started"
        self._retry_at = 0.0
        self._fallbacks_unlogged = 0
        self._fallback_logged_at = 0.0
        self._fallback_count = 0

    @property
    def uses_rasa(self) -> bool:
        return self._settings.mode != "rules" and bool(self._url)

    @property
    def model(self) -> str:
        """The model whose answers are cached: the one Rasa serves (as its last probe said), or the expected one."""
        return self._cache.namespace

    def set_faq(self, faq: FaqRows, faq_titles: Mapping[str, str] | None = None) -> None:
        """A newly published FAQ: the rules answer with it at once; the cache follows the model Rasa serves."""
        self._faq_rules = FaqRules(faq, faq_titles)

    def use_server(self, url: str, token: str, model: str = "") -> None:
        """Parse with another Rasa from now on (a managed server swapped in with a new model)."""
        self._url, self._token = url.rstrip("/"), token
        if model:
            self._use_model(model)

    async def start(self) -> None:
        """Open the HTTP session and begin watching for Rasa; returns at once."""
        RASA_UP.set(0)
        if not self.uses_rasa:
            self._down_reason = "nlu.mode is rules" if self._settings.mode == "rules" else "no Rasa URL"
            log.warning("nlu.rasa.disabled reason=%s: intents come from keyword rules only", self._down_reason)
            return
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, json_serialize=_dumps)
        self._down_reason = "waiting for Rasa"
        self._probe = asyncio.create_task(self._watch(), name="scrm-nlu-probe")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        for task in list(self._inflight.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once Rasa has answered a probe (for the CLI and tests; the bot never waits)."""
        deadline = time.monotonic() + timeout_s
        while not self._up and time.monotonic() < deadline and self.uses_rasa:
            await asyncio.sleep(0.05)
        return self._up

    def health(self) -> dict[str, Any]:
        """For /healthz: "ok" while Rasa answers (or rules are chosen on purpose), else "degraded"."""
        base = {"mode": self._settings.mode, "rasa_url": self._url or None, "fallbacks": self._fallback_count,
                "cache": self._cache.backend, "model": self._cache.namespace}
        if not self.uses_rasa:
            return {"status": "ok" if self._settings.mode == "rules" else "degraded",
                    "rasa": "disabled", "reason": self._down_reason, **base}
        if self._up:
            return {"status": "ok", "rasa": "up", "reason": "", **base}
        down_for = round(time.monotonic() - self._down_since, 1)
        return {"status": "degraded", "rasa": "down", "reason": f"{self._down_reason}: keyword rules answer",
                "down_for_s": down_for, **base}

    async def parse(self, text: str) -> Intent:
        """The intent of one customer message. Never raises, whatever the input."""
        started = time.perf_counter()
        try:
            intent = await self._parse(text)
        except Exception:
            log.exception("nlu.parse.failed")
            intent = self._rules.classify(clean(str(text), self._settings.max_text_chars), self._faq_rules)
            self._fell_back("error")
        REQUESTS.labels(intent.source).inc()
        LATENCY.labels(intent.source).observe(time.perf_counter() - started)
        return intent

    async def _parse(self, text: str) -> Intent:
        deadline = time.monotonic() + self._timeout_s  # one budget for the cache and Rasa together
        cleaned = clean(text, self._settings.max_text_chars)
        if looks_like_junk(cleaned):  # empty, binary, mojibake: not worth a round trip
            return Intent(OUT_OF_SCOPE_INTENT, 1.0, (), SOURCE_RULES)
        if not self.uses_rasa:
            return self._rules.classify(cleaned, self._faq_rules)
        key = cache_form(cleaned)
        cached = await self._cache.get(key)
        if cached is not None:
            return cached
        if not self._up:
            self._fell_back("not_ready")
            return self._rules.classify(cleaned, self._faq_rules)
        task = self._inflight.get(key)
        if task is None:  # identical messages arriving together share one Rasa call
            task = asyncio.create_task(self._ask_rasa(cleaned, key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            self._fell_back("timeout")
        except (aiohttp.ClientError, RasaError, OSError) as exc:
            log.debug("nlu.rasa.error error=%r", exc)
            self._fell_back("error")
        return self._rules.classify(cleaned, self._faq_rules)

    def _forget(self, key: str, task: asyncio.Task[Intent]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: a waiter that gave up must not leave an unread error behind

    async def _ask_rasa(self, cleaned: str, key: str) -> Intent:
        try:
            async with asyncio.timeout(self._timeout_s):
                data = await self._post_parse(cleaned)
        except (TimeoutError, aiohttp.ClientError, RasaError, OSError) as exc:
            self._rasa_failed(exc)
            raise
        self._failures = 0
        intent = self._to_intent(cleaned, data)
        await self._cache.put(key, intent)
        return intent

    async def _post_parse(self, cleaned: str) -> dict[str, Any]:
        assert self._session is not None
        params = {"token": self._token} if self._token else None
        async with self._session.post(f"{self._url}/model/parse", json={"text": cleaned}, params=params) as resp:
            if resp.status != 200:
                raise RasaError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            try:
                data = await resp.json(content_type=None)
            except ValueError as exc:
                raise RasaError(f"unreadable body: {exc}") from exc
        if not isinstance(data, dict):
            raise RasaError("body is not an object")
        return data

    def _to_intent(self, cleaned: str, data: dict[str, Any]) -> Intent:
        raw_intent = data.get("intent") or {}
        name = str(raw_intent.get("name") or FALLBACK_INTENT)
        confidence = float(raw_intent.get("confidence") or 0.0)
        entities = [Entity.from_dict(e) for e in data.get("entities") or [] if isinstance(e, dict)]
        entities = [Entity(e.name, e.value.upper(), e.start, e.end, e.extractor) if e.name in CODE_ENTITIES else e
                    for e in entities if self._rules.plausible(e.name, e.value)]
        # Regexes are exact where DIET is fuzzy: add a phone or code that DIET missed.
        found = {e.name for e in entities}
        entities += [e for e in self._rules.entities(cleaned) if e.name not in found]
        return Intent(name, confidence, tuple(sorted(entities, key=lambda e: e.start)), SOURCE_RASA,
                      faq_match(data))

    def _rasa_failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._up and self._failures >= self._settings.breaker_failures:
            if isinstance(exc, asyncio.TimeoutError):
                reason = f"{self._failures} Rasa timeouts in a row (> {self._settings.timeout_ms} ms)"
            else:
                reason = f"{self._failures} Rasa errors in a row (last: {exc!r})"
            self._mark_down(reason)
            self._retry_at = time.monotonic() + self._settings.breaker_cooldown_s

    def _mark_down(self, reason: str) -> None:
        if self._up:
            log.warning("nlu.rasa.down reason=%s url=%s: keyword rules answer until it is back", reason, self._url)
            self._down_since = time.monotonic()
        self._up, self._down_reason = False, reason
        RASA_UP.set(0)

    def _mark_up(self) -> None:
        if not self._up:
            log.info("nlu.rasa.up url=%s after_s=%.1f", self._url, time.monotonic() - self._down_since)
        self._up, self._failures, self._down_reason = True, 0, ""
        RASA_UP.set(1)

    async def _watch(self) -> None:
        """Probe /status: find Rasa when it comes (back), and notice when it goes without traffic."""
        assert self._session is not None
        probe_timeout = aiohttp.ClientTimeout(total=max(1.0, self._timeout_s * 3))
        async with aiohttp.ClientSession(timeout=probe_timeout) as probe_session:
            while True:
                if time.monotonic() >= self._retry_at:
                    model = await rasa_status(probe_session, self._url, self._token)
                    if model is not None:
                        self._use_model(model)
                        self._mark_up()
                    elif self._up:
                        self._mark_down("Rasa /status does not answer")
                await asyncio.sleep(HEALTHY_PROBE_INTERVAL_S if self._up else PROBE_INTERVAL_S)

    def _use_model(self, model: str) -> None:
        namespace = model.removesuffix(".tar.gz")
        if namespace != self._cache.namespace:
            log.info("nlu.model.changed model=%s was=%s: parses are cached afresh", namespace, self._cache.namespace)
            self._cache.use_namespace(namespace)

    def _fell_back(self, reason: str) -> None:
        FALLBACKS.labels(reason).inc()
        self._fallback_count += 1
        self._fallbacks_unlogged += 1
        now = time.monotonic()
        if now - self._fallback_logged_at >= FALLBACK_LOG_EVERY_S:
            log.warning("nlu.fallback.rules reason=%s count=%d (since last report) rasa=%s",
                        reason, self._fallbacks_unlogged, self._down_reason or "up")
            self._fallback_logged_at, self._fallbacks_unlogged = now, 0


def faq_match(data: dict[str, Any]) -> FaqMatch | None:
    """The ResponseSelector's pick in a /model/parse answer (`response_selector.faq`), or None.

        "response_selector": {"all_retrieval_intents": ["faq"], "faq": {
            "response": {"intent_response_key": "faq/delivery_time", "confidence": 0.93, ...},
            "ranking": [{"intent_response_key": "faq/delivery_time", "confidence": 0.93, "id": ...}, ...]}}
    """
    selector = (data.get("response_selector") or {}).get(RETRIEVAL_INTENT)
    if not isinstance(selector, dict):
        return None
    response = selector.get("response") or {}
    entry = _entry_of(response.get("intent_response_key"))
    if not entry:
        return None
    ranking = [(_entry_of(r.get("intent_response_key")), float(r.get("confidence") or 0.0))
               for r in selector.get("ranking") or [] if isinstance(r, dict)]
    ranked = sorted(((e, c) for e, c in ranking if e), key=lambda pair: -pair[1])[:FAQ_RANKING]
    return FaqMatch(entry, float(response.get("confidence") or 0.0), tuple(ranked))


def _entry_of(key: Any) -> str:
    """"faq/delivery_time" -> "delivery_time"; anything else -> ""."""
    prefix, _, entry = str(key or "").partition("/")
    return entry if prefix == RETRIEVAL_INTENT else ""


def _cache_namespace(settings: NluSettings, faq: FaqRows) -> str:
    """The model expected for the project and FAQ, until Rasa's /status names the one it serves."""
    try:
        return model_file(settings, faq=faq).name.removesuffix(".tar.gz")
    except OSError:
        return "unknown"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
