"""One turn, one pipeline: the worker, the waker and the API run the same pipeline object, its stages in the
documented order, and a stage that fails is named in the inbox item's error with nothing written."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from crm_store.models import InboxItem, OutboxItem, TimelineEvent, utcnow
from flows.pipeline import Next, Stage
from flows.turn import Turn
from tests.bot.conftest import Bot
from tests.bot.test_api import call, customer, key_for
from tests.bot.test_message_path import count

DOCUMENTED_ORDER = (
    "identity", "release", "handoff_gate", "lifecycle", "growth_arrival", "nurture_reply", "intent", "tag_rules",
    "flow_runner", "signals", "handoff_after",
)


async def test_worker_waker_and_api_run_the_same_pipeline(bot: Bot) -> None:
    runtime = bot.runtime
    assert runtime.domain is not None and runtime.waker is not None
    pipeline = runtime.domain.pipeline
    assert runtime.worker.pipeline is pipeline and runtime.waker.pipeline is pipeline
    assert pipeline.names == DOCUMENTED_ORDER
    seen: list[str] = []

    class Listening:
        name = "identity"

        def __init__(self, inner: Stage) -> None:
            self.inner = inner

        async def __call__(self, turn: Turn, next: Next) -> None:
            seen.append(turn.event.kind)
            await self.inner(turn, next)

    stages = pipeline.stages
    pipeline.stages = (Listening(stages[0]), *stages[1:])
    try:
        await bot.simulator.kf_says(bot.url, "wmSame", "这个怎么卖")  # the price flow asks which product
        await bot.drain()
        await runtime.waker.wake_due(utcnow() + timedelta(hours=2))  # its ask times out
        shopper = await customer(bot, "wmSame")
        status, _ = await call(bot, "PUT", f"/customers/{shopper.id}/stage", await key_for(bot),
                               {"stage": "customer", "reason": "order"})
    finally:
        pipeline.stages = stages
    assert status == 200
    assert seen == ["message", "timer", "stage_changed"]


async def test_a_failing_stage_is_named_and_nothing_is_written(bot: Bot) -> None:
    pipeline = bot.runtime.worker.pipeline

    class Broken:
        name = "tag_rules"

        async def __call__(self, turn: Turn, next: Next) -> None:
            turn.note("half.written")
            raise RuntimeError("the rules table is on fire")

    stages = pipeline.stages  # type: ignore[attr-defined]
    index = DOCUMENTED_ORDER.index("tag_rules")
    pipeline.stages = (*stages[:index], Broken(), *stages[index + 1:])  # type: ignore[attr-defined]
    try:
        await bot.simulator.oa_says(bot.url, "oBroken", "你好")
        await bot.drain()
    finally:
        pipeline.stages = stages  # type: ignore[attr-defined]
    async with bot.runtime.sessions() as session:
        item = await session.scalar(select(InboxItem).where(InboxItem.dedup_key.like("oa:%")))
        assert item is not None and item.status == "pending"
        assert item.last_error is not None and item.last_error.startswith("StageFailed: stage tag_rules: RuntimeError")
        kinds = set((await session.scalars(select(TimelineEvent.kind))).all())
    assert "half.written" not in kinds and "inbound.message" not in kinds
    assert await count(bot, OutboxItem) == 0
    await bot.drain_until_answered("oBroken")  # the stage works again: the retried item is answered once
    assert len(bot.replies_to("oBroken")) == 1
