"""The running-bot fixtures of tests/bot, for the end-to-end flow tests, and a scripted Rasa.

Rasa is the outside world for the flow tests: `rasa` is a local server answering `/model/parse` as
Rasa 3.6 does, with the scripted intent and confidence for each text and, when a ranking of FAQ
entries is scripted, a ResponseSelector's output (the real model is tested in tests/nlu)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.bot.conftest import bot, start_bot

__all__ = ["ScriptedRasa", "bot", "rasa", "start_bot"]

Ranking = list[tuple[str, float]]  # FAQ entry ids and the selector's confidence, best first


@dataclass
class ScriptedRasa:
    """Answers every parse with the scripted (intent, confidence[, FAQ ranking]) for its text."""

    script: dict[str, tuple[str, float] | tuple[str, float, Ranking]] = field(default_factory=dict)
    url: str = ""

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response({"model_file": "nlu-scripted.tar.gz"})

    async def parse(self, request: web.Request) -> web.Response:
        text = (await request.json())["text"]
        intent, confidence, *rest = self.script.get(text, ("nlu_fallback", 0.3))
        ranking: Ranking = rest[0] if rest else []
        body: dict[str, Any] = {"text": text, "intent": {"name": intent, "confidence": confidence}, "entities": [],
                                "intent_ranking": [{"name": intent, "confidence": confidence}]}
        if ranking:
            ranked = [{"id": n, "confidence": c, "intent_response_key": f"faq/{entry}"}
                      for n, (entry, c) in enumerate(ranking)]
            best = ranked[0]
            body["response_selector"] = {"all_retrieval_intents": ["faq"], "faq": {
                "response": {"responses": [{"text": "(the model's copy)"}], "confidence": best["confidence"],
                             "intent_response_key": best["intent_response_key"],
                             "utter_action": f"utter_{best['intent_response_key']}"},
                "ranking": ranked}}
        return web.json_response(body)


@pytest.fixture
async def rasa() -> AsyncIterator[ScriptedRasa]:
    scripted = ScriptedRasa()
    app = web.Application()
    app.router.add_get("/status", scripted.status)
    app.router.add_post("/model/parse", scripted.parse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    scripted.url = str(server.make_url("")).rstrip("/")
    yield scripted
    await server.close()
