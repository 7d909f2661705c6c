"""One turn, one pipeline: ordered stages with one signature, `async (turn, next)`.

A stage does its part and awaits `next()` to let the later stages run, or returns without
it to end the turn there (a person has the customer: the bot says nothing). The order is
written once, in flows/assembly.py. A stage that raises is named in the error, so the
inbox item's error and the log say which part of the turn failed; the worker's transaction
is then rolled back and the item retried, so nothing of the turn is written half-way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from core.events import Effect
from flows.turn import Turn

Next = Callable[[], Awaitable[None]]


class Stage(Protocol):
    name: str

    async def __call__(self, turn: Turn, next: Next) -> None: ...


class StageFailed(Exception):
    """A stage raised: `stage` names it; the original exception is the cause."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"stage {stage}: {type(error).__name__}: {error}")
        self.stage = stage


class Pipeline:
    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)

    async def run(self, turn: Turn) -> Sequence[Effect]:
        """Run every stage in order (as far as they let the turn go); the turn's effects."""
        await self._from(0, turn)
        return turn.effects

    async def _from(self, index: int, turn: Turn) -> None:
        if index == len(self.stages):
            return
        stage = self.stages[index]
        try:
            await stage(turn, lambda: self._from(index + 1, turn))
        except StageFailed:
            raise  # a later stage failed inside `next()`: it is named already
        except Exception as exc:
            raise StageFailed(stage.name, exc) from exc
