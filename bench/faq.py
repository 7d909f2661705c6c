"""FAQ benchmark: FAQ entries as retrieval intents in the intent model, starter FAQ and 500 entries, in one run.

    .venv/bin/python bench/faq.py [--skip-large] [--latency-texts 300] [--json]

Everything is trained from scratch in a model dir of its own (var/bench-faq, Rasa's component
cache included), so training times are never a cache hit. Then, on one managed Rasa:
  latency   - raw POST /model/parse p50/p95, sequential, on the same texts: the model without the
              FAQ (the reference), with the starter FAQ, and the reference again (this machine's
              load drifts; the ratio is against the mean of both reference runs);
  swap      - each model change is ManagedRasa.swap (blue/green) with customers' parses running
              through NluClient (timeout as configured): seconds, and what those parses got
              (rasa or rules, worst latency); then Rasa's own PUT /model on the same server for
              comparison: how long the server answered nothing;
  accuracy  - the starter FAQ's held-out phrasings (nlu/project/test/faq_test.yml): retrieval and
              answered accuracy; off-topic messages the FAQ would answer (goal 0);
  500 x 5   - 500 generated entries of 5 phrasings each (deterministic): training time, swap
              time, parse latency.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.shared_state import MemoryState  # noqa: E402
from crm_store.lifecycle_settings import LifecycleSettings  # noqa: E402
from flows.faq import read_faq  # noqa: E402
from nlu.client import NluClient  # noqa: E402
from nlu.faq_evaluate import DEFAULT_ANSWER_AT, evaluate_faq  # noqa: E402
from nlu.faq_training import FaqRows  # noqa: E402
from nlu.rasa_runtime import ensure_model  # noqa: E402
from nlu.server import ManagedRasa  # noqa: E402
from nlu.settings import NluSettings  # noqa: E402
from nlu.swap import put_model  # noqa: E402
from nlu.training_data import load_project  # noqa: E402

PRODUCTS = ["桂花乌龙", "山茶花精华", "燕麦奶", "黑芝麻丸", "冻干咖啡", "蜂蜜柚子茶", "羊绒围巾", "竹纤维毛巾",
            "陶瓷马克杯", "折叠雨伞", "电动牙刷", "护手霜", "薄荷牙膏", "蚕丝枕套", "乳木果身体乳", "云南普洱",
            "手冲滤杯", "香薰蜡烛", "真空保温壶", "亚麻床单", "便携榨汁杯", "记忆棉坐垫", "樱花沐浴露", "黑枸杞",
            "古法红糖"]
ASPECTS = ["保质期", "产地", "成分", "尺寸", "重量", "颜色选择", "适用人群", "储存方法", "使用方法", "清洗方式",
           "包装规格", "赠品", "质检报告", "售后保修", "孕妇能不能用", "批次", "口味", "材质", "过敏提示", "搭配推荐"]
TEMPLATES = ["{p}的{a}是怎样的", "请问{p}{a}怎么样", "想了解一下{p}的{a}", "{p}这款{a}能说说吗", "关于{p}，{a}有说明吗"]


def large_faq(entries: int = 500) -> FaqRows:
    """`entries` distinct entries (product x aspect), five phrasings each, the same every run."""
    pairs = list(itertools.product(PRODUCTS, ASPECTS))[:entries]
    return tuple((f"p{i // len(ASPECTS):02d}_a{i % len(ASPECTS):02d}", tuple(t.format(p=p, a=a) for t in TEMPLATES),
                  f"{p}的{a}：见商品详情页。") for i, (p, a) in enumerate(pairs))


_PHASES = itertools.count(1)


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)  # noqa: E731
    return {"n": len(ordered), "p50_ms": pick(0.50), "p95_ms": pick(0.95), "max_ms": round(ordered[-1] * 1000, 2)}


async def train(settings: NluSettings, faq: FaqRows) -> tuple[Path, float]:
    began = time.monotonic()
    model, trained = await ensure_model(settings, faq=faq)
    assert trained, "the bench's model dir is fresh: every model is trained"
    return model, round(time.monotonic() - began, 1)


async def raw_latency(rasa: ManagedRasa, texts: list[str]) -> dict[str, float]:
    """Sequential POST /model/parse straight to Rasa (no client, no cache), after a short warm-up."""
    async with aiohttp.ClientSession() as http:
        async def parse(text: str) -> float:
            began = time.perf_counter()
            async with http.post(f"{rasa.url}/model/parse", params={"token": rasa.token}, json={"text": text}) as r:
                await r.json()
            return time.perf_counter() - began

        for text in texts[:30]:
            await parse(text + " 预热")
        return percentiles([await parse(text) for text in texts])


async def while_swapping(rasa: ManagedRasa, client: NluClient, change: Any, texts: list[str]) -> dict[str, Any]:
    """Customers' parses (unseen texts, two at a time) through the client while `change()` runs."""
    latencies: list[float] = []
    sources: Counter[str] = Counter()
    stop = asyncio.Event()
    counter = itertools.count()
    phase = next(_PHASES)  # texts of one phase are never parsed in another (the cache would answer)

    async def customer() -> None:
        while not stop.is_set():
            n = next(counter)
            text = f"{texts[n % len(texts)]} {phase}-{n}"  # unseen: the cache never answers
            began = time.perf_counter()
            sources[(await client.parse(text)).source] += 1
            latencies.append(time.perf_counter() - began)
            await asyncio.sleep(0.05)

    customers = [asyncio.create_task(customer()) for _ in range(2)]
    began = time.monotonic()
    try:
        seconds = await change()
    finally:
        stop.set()
        await asyncio.gather(*customers)
    return {"seconds": round(seconds if seconds is not None else time.monotonic() - began, 1),
            "parses": percentiles(latencies), "sources": dict(sources)}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    folder = ROOT / "var" / "bench-faq"
    shutil.rmtree(folder, ignore_errors=True)
    settings = NluSettings(mode="managed", model_dir=str(folder))
    starter = read_faq(ROOT / "flows" / "library", LifecycleSettings()).training_rows()
    data = load_project(settings.project_path())
    texts = [e.text for e in (*data.test, *data.faq_test)][: args.latency_texts]
    report: dict[str, Any] = {"starter_faq": {"entries": len(starter), "questions": sum(len(q) for _, q, _ in starter)}}
    reference, report["train_s_without_faq"] = await train(settings, ())
    with_faq, report["train_s_starter_faq"] = await train(settings, starter)
    rasa = ManagedRasa(settings)
    await rasa.start()
    if not await rasa.wait_ready(settings.start_timeout_s):
        raise SystemExit(f"Rasa did not start: {rasa.status()}")
    client = NluClient(settings, MemoryState(), rasa.url, rasa.token, faq=starter)
    rasa.on_swap(client.use_server)
    await client.start()
    try:
        await client.wait_ready(30)
        first = await raw_latency(rasa, texts)
        report["swap_to_starter_faq"] = await while_swapping(rasa, client, lambda: rasa.swap(with_faq), texts)
        faq_latency = await raw_latency(rasa, texts)
        report["accuracy"] = (await evaluate_faq(settings, rasa.url, rasa.token, starter, DEFAULT_ANSWER_AT)).to_dict()
        report["put_model_same_server"] = await while_swapping(
            rasa, client, lambda: put_model(rasa.url, rasa.token, with_faq), texts)
        report["swap_back_to_reference"] = await while_swapping(rasa, client, lambda: rasa.swap(reference), texts)
        second = await raw_latency(rasa, texts)
        report["latency"] = latency_report(first, faq_latency, second)
        if not args.skip_large:
            report["large_faq"] = await large(settings, rasa, client, texts)
    finally:
        await client.close()
        await rasa.stop()
    return report


def latency_report(first: dict[str, float], with_faq: dict[str, float], second: dict[str, float]) -> dict[str, Any]:
    ref = {key: round(statistics.mean([first[key], second[key]]), 2) for key in ("p50_ms", "p95_ms")}
    return {"without_faq_before": first, "with_starter_faq": with_faq, "without_faq_after": second,
            "ratio_p50": round(with_faq["p50_ms"] / ref["p50_ms"], 2),
            "ratio_p95": round(with_faq["p95_ms"] / ref["p95_ms"], 2)}


async def large(settings: NluSettings, rasa: ManagedRasa, client: NluClient, texts: list[str]) -> dict[str, Any]:
    rows = large_faq()
    model, train_s = await train(settings, rows)
    client.set_faq(rows)
    swap = await while_swapping(rasa, client, lambda: rasa.swap(model), texts)
    return {"entries": len(rows), "questions": sum(len(q) for _, q, _ in rows), "train_s": train_s,
            "swap": swap, "latency": await raw_latency(rasa, texts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-large", action="store_true", help="only the starter FAQ (saves ~10 minutes)")
    parser.add_argument("--latency-texts", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return
    for key, value in report.items():
        print(f"{key:<26} {json.dumps(value, ensure_ascii=False)}")


if __name__ == "__main__":
    main()
