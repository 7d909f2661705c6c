"""Nurture sequences as typed, frozen objects: what the loader builds and the store keeps.

`flows/sequences.py` reads them from YAML with every check; the store saves `to_data()`
with each published version and reads it back with `from_data()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Condition:
    tags: tuple[str, ...] = ()
    not_tags: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    social_min: float | None = None
    slots: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SeqStep:
    id: str
    say: str = ""
    after_s: float | None = None  # after enrolment
    after_previous_s: float | None = None  # after the previous step was handled
    at_day: int | None = None  # `at: day N HH:MM`, the brand's time
    at_time: str = ""
    when: Condition | None = None
    exit: bool = False


@dataclass(frozen=True)
class NurtureSequence:
    name: str
    steps: tuple[SeqStep, ...]
    description: str = ""
    marketing: bool = True
    enroll: tuple[tuple[str, str], ...] = ()  # ("stage", id) / ("tag", name) / ("contact_added", code|any)
    exits: tuple[tuple[str, str], ...] = ()  # ("replied", "") / ("tag", name) / ("stage", id)…

    def to_data(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> NurtureSequence:
        steps = tuple(SeqStep(**{**step, "when": _condition_from(step.get("when"))}) for step in data["steps"])
        return cls(data["name"], steps, data.get("description", ""), data.get("marketing", True),
                   tuple(tuple(pair) for pair in data.get("enroll", ())),  # type: ignore[misc]
                   tuple(tuple(pair) for pair in data.get("exits", ())))  # type: ignore[misc]

    def exits_on(self, kind: str, value: str = "") -> bool:
        return any(k == kind and (not v or v == value) for k, v in self.exits)


def _condition_from(data: Mapping[str, Any] | None) -> Condition | None:
    if data is None:
        return None
    social = data.get("social_min")
    return Condition(tuple(data.get("tags", ())), tuple(data.get("not_tags", ())), tuple(data.get("stages", ())),
                     None if social is None else float(social), dict(data.get("slots", {})))
