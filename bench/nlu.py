"""NLU benchmark: our client (cache cold and warm) against raw Rasa /model/parse, in one run.

    PYTHONPATH=. .venv/bin/python bench/nlu.py [--messages 3000] [--concurrency 8] [--redis URL] [--json]

Starts its own managed Rasa (the trained model is reused), then measures:
  raw       - POST /model/parse straight to Rasa, no client;
  cold      - NluClient with an empty cache on the mix;
  warm      - NluClient on a fresh sample of the same mix after the cold pass
              (the frequent messages are cached; new one-off messages still go to Rasa);
  overhead  - sequential cache misses: client p50 minus raw p50 on the same texts;
  hang/kill - Rasa frozen (SIGSTOP) and then killed mid-run: every answer must
              still come back within the timeout, from the rules.
The mix: 85% of messages drawn (Zipf) from ~60 common short messages ("在吗",
"多少钱", "+1", ...), 15% one-off messages (test-set texts with a phone number,
order number or emoji added), as on a brand's busy campaign day. One-off
messages always reach Rasa, so the cache's speed-up is bounded by
1 / --unique-share (6.7x at 15%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.shared_state import MemoryState, SharedState, open_shared_state
from nlu.client import NluClient
from nlu.server import ManagedRasa
from nlu.settings import NluSettings
from nlu.training_data import load_project

COMMON = ["在吗", "在吗?", "你好", "您好", "hi", "在不在", "有人吗", "多少钱", "多少钱?", "怎么卖", "价格多少", "有优惠吗", "有优惠券吗", "能便宜点吗", "包邮吗", "几天能到", "发什么快递", "我的快递到哪了", "什么时候发货", "还没发货", "我要拼团", "+1", "带我一个", "拼团还差几个人", "成团了吗", "还差几个人", "邀请码", "怎么邀请好友", "转人工", "人工", "人工客服", "我要退款", "退货", "怎么退货", "别再发了", "TD", "退订", "谢谢", "好的", "好", "嗯嗯", "ok", "👍", "可以", "不用了", "不要", "再见", "拜拜", "哈哈哈", "你是机器人吗", "质量太差了", "我要投诉", "有货吗", "有什么推荐", "面膜多少钱", "恢复推送", "😂", "🙏", "收到"]
def make_mix(n: int, seed: int, tail: list[str], unique_share: float) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(COMMON))]
    out = []
    for _ in range(n):
        if rng.random() < unique_share:
            suffix = rng.choice([f" 1{rng.randint(3, 9)}{rng.randint(10**8, 10**9 - 1)}",
                                 f" 订单{rng.randint(10**8, 10**9)}", f" {rng.choice('😀😂🙏👍🤔')}{rng.randint(1, 999)}"])
            out.append(rng.choice(tail) + suffix)
        else:
            out.append(rng.choices(COMMON, weights)[0])
    return out


def summary(latencies: list[float], wall: float) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"n": len(ordered), "parses_per_s": round(len(ordered) / wall, 1), "p50_ms": round(pick(0.50), 3),
            "p99_ms": round(pick(0.99), 3), "max_ms": round(ordered[-1] * 1000, 3)}


async def run_concurrent(texts: list[str], concurrency: int, call: Any) -> tuple[dict[str, Any], list[Any]]:
    queue = iter(enumerate(texts))
    latencies: list[float] = [0.0] * len(texts)
    results: list[Any] = [None] * len(texts)

    async def worker() -> None:
        for index, text in queue:
            began = time.perf_counter()
            results[index] = await call(text)
            latencies[index] = time.perf_counter() - began

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(latencies, time.perf_counter() - began), results


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    settings = NluSettings(mode="managed", timeout_ms=args.timeout_ms)
    tail = [e.text for e in load_project(settings.project_path()).test]
    rasa = ManagedRasa(settings)
    await rasa.start()
    if not await rasa.wait_ready(settings.start_timeout_s):
        raise SystemExit(f"Rasa did not start: {rasa.status()}")
    http = aiohttp.ClientSession()
    report: dict[str, Any] = {"messages": args.messages, "concurrency": args.concurrency,
                              "unique_share": args.unique_share,
                              "timeout_ms": args.timeout_ms, "cache": "redis" if args.redis else "memory"}
    try:
        async def raw(text: str) -> dict[str, Any]:
            async with http.post(f"{rasa.url}/model/parse", params={"token": rasa.token}, json={"text": text}) as r:
                return await r.json()

        mix = make_mix(args.messages, 1, tail, args.unique_share)
        await run_concurrent(mix[:50], args.concurrency, raw)  # warm Rasa's TensorFlow graph
        report["raw_rasa"], _ = await run_concurrent(mix, args.concurrency, raw)

        state = open_shared_state(args.redis, prefix=f"scrm-bench-{uuid.uuid4().hex[:8]}:") if args.redis \
            else MemoryState()
        client = NluClient(settings, state, rasa.url, rasa.token)
        await client.start()
        await client.wait_ready(30)
        for name, texts in (("client_cold", mix), ("client_warm", make_mix(args.messages, 2, tail, args.unique_share))):
            report[name], intents = await run_concurrent(texts, args.concurrency, client.parse)
            report[name]["sources"] = dict(Counter(i.source for i in intents))
        report["speedup_warm_vs_raw"] = round(report["client_warm"]["parses_per_s"]
                                              / report["raw_rasa"]["parses_per_s"], 2)
        report["client_overhead_on_miss"] = await overhead(client, raw, tail)
        report["rasa_frozen_mid_run"] = await outage(client, rasa, tail, args, signal.SIGSTOP)
        report["rasa_killed_mid_run"] = await outage(client, rasa, tail, args, signal.SIGKILL)
        await client.close()
        await _cleanup(state, args)
    finally:
        await http.close()
        await rasa.stop()
    return report


async def overhead(client: NluClient, raw: Any, tail: list[str]) -> dict[str, float]:
    """Sequential, alternating raw and client calls on unseen texts (both miss every cache)."""
    raw_ms, client_ms = [], []
    for i in range(300):
        base = tail[i % len(tail)]
        began = time.perf_counter()
        await raw(f"{base} r{i}")
        raw_ms.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        intent = await client.parse(f"{base} c{i}")
        client_ms.append((time.perf_counter() - began) * 1000)
        assert intent.source == "rasa", intent
    raw_p50, client_p50 = statistics.median(raw_ms), statistics.median(client_ms)
    return {"raw_p50_ms": round(raw_p50, 3), "client_p50_ms": round(client_p50, 3),
            "overhead_p50_ms": round(client_p50 - raw_p50, 3)}


async def outage(client: NluClient, rasa: ManagedRasa, tail: list[str], args: argparse.Namespace,
                 how: signal.Signals) -> dict[str, Any]:
    """Unseen messages; Rasa is frozen or killed a third of the way in."""
    await rasa.wait_ready(300)
    await client.wait_ready(30)
    texts = [f"{tail[i % len(tail)]} x{how.value}-{i}" for i in range(600)]
    pid = rasa.status()["pid"]

    async def stop_later() -> None:
        await asyncio.sleep(1.0)
        os.kill(pid, how)

    stopper = asyncio.create_task(stop_later())
    stats, intents = await run_concurrent(texts, args.concurrency, client.parse)
    await stopper
    if how == signal.SIGSTOP:
        os.kill(pid, signal.SIGCONT)
    stats["sources"] = dict(Counter(i.source for i in intents))
    stats["all_within_timeout"] = stats["max_ms"] <= args.timeout_ms + 50
    stats["health_after"] = client.health()["status"]
    return stats


async def _cleanup(state: SharedState, args: argparse.Namespace) -> None:
    if args.redis:
        raw = state._redis  # type: ignore[attr-defined]
        keys = [k async for k in raw.scan_iter(match=f"{state._prefix}*")]  # type: ignore[attr-defined]
        if keys:
            await raw.delete(*keys)
    await state.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout-ms", type=int, default=300)
    parser.add_argument("--unique-share", type=float, default=0.15, help="share of one-off messages in the mix")
    parser.add_argument("--redis", default="", help="cache in this Redis (e.g. redis://127.0.0.1:6379/15)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return
    for key, value in report.items():
        print(f"{key:<26} {value}")


if __name__ == "__main__":
    main()
