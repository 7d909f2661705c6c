"""Errors of the flow loader: each names the file, the line, and where it can the flow and step.

    FlowLoadError(Exception)   raised once, with every FlowError found in every file
      └ errors: list[FlowError]

`Reporter` is how the three loading steps record errors: one per file, narrowed to a
flow and a step as the loader walks into them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class FlowError:
    file: str
    line: int  # 1-based; 0 when the error is about the whole file
    message: str
    flow: str = ""
    step: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        context = ", ".join(
            part for part in (self.flow and f"flow {self.flow}", self.step and f"step {self.step}") if part
        )
        return f"{where}: {context}: {self.message}" if context else f"{where}: {self.message}"


class FlowLoadError(Exception):
    """Every error found, sorted by file and line; `str()` shows one per line."""

    def __init__(self, errors: Iterable[FlowError]) -> None:
        self.errors: list[FlowError] = sorted(errors, key=lambda error: (error.file, error.line))
        super().__init__("\n".join(str(error) for error in self.errors))


@dataclass(frozen=True)
class Reporter:
    """Appends FlowErrors for one file to a shared list; `at()` narrows to a flow or a step."""

    file: str
    errors: list[FlowError] = field(default_factory=list)
    flow: str = ""
    step: str = ""

    def error(self, line: int, message: str) -> None:
        self.errors.append(FlowError(self.file, line, message, self.flow, self.step))

    def at(self, *, flow: str | None = None, step: str | None = None) -> Reporter:
        return replace(
            self, flow=self.flow if flow is None else flow, step=self.step if step is None else step
        )

    @property
    def count(self) -> int:
        return len(self.errors)
