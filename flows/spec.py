"""A small schema language for YAML `Node`s: each spec checks a node and reports what is wrong.

    Text, Integer, Number, Boolean, Duration, OneOf   scalars
    Nullable, Either, ListOf, OneOrList               shapes
    Record    fixed keys ("did you mean" for unknown ones), required keys, cross-key rules
    MapOf     free keys (tag groups, action params)
    Tagged    a mapping whose type is the one key it has out of several (steps, triggers)

Checking never builds anything: the loader's second step reads nodes that passed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from core.spelling import did_you_mean
from flows.errors import Reporter
from flows.yaml_source import Node

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(node: Node) -> float | None:
    """Seconds of `30`, "90s", "30m", "2h" or "1d"; None when it is none of those."""
    if isinstance(node.value, bool) or node.kind != "scalar":
        return None
    if isinstance(node.value, int | float):
        return float(node.value)
    match = _DURATION.fullmatch(node.text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def describe(node: Node) -> str:
    if node.kind == "map":
        return "a mapping"
    if node.kind == "seq":
        return "a list"
    if node.value is None:
        return "nothing"
    if isinstance(node.value, bool):
        return f"{node.raw!r} (a yes/no value)"
    if isinstance(node.value, int | float):
        return f"the number {node.raw}"
    return f"the text {node.text[:40]!r}"


class Spec:
    what = "a value"
    kinds: frozenset[str] = frozenset({"scalar"})  # node kinds it takes, for Either

    def check(self, node: Node, report: Reporter) -> None:
        raise NotImplementedError

    def wrong(self, node: Node, report: Reporter) -> None:
        report.error(node.line, f"expected {self.what}, got {describe(node)}")


@dataclass(frozen=True)
class Text(Spec):
    """Non-empty text (numbers and yes/no as written); `pattern` must match all of it;
    `validate` returns what is wrong with it, or None."""

    what: str = "text"
    pattern: str = ""
    max_len: int = 4000
    validate: Callable[[str], str | None] | None = None

    def check(self, node: Node, report: Reporter) -> None:
        if node.kind != "scalar" or node.value is None:
            return self.wrong(node, report)
        text = node.text
        if not text.strip():
            report.error(node.line, f"expected {self.what}, got empty text")
        elif len(text) > self.max_len:
            report.error(node.line, f"text is too long: {len(text)} characters, at most {self.max_len}")
        elif self.pattern and not re.fullmatch(self.pattern, text):
            report.error(node.line, f"expected {self.what}, got {text[:60]!r}")
        elif self.validate and (problem := self.validate(text)):
            report.error(node.line, problem)


@dataclass(frozen=True)
class Integer(Spec):
    low: int
    high: int
    what: str = "a whole number"

    def check(self, node: Node, report: Reporter) -> None:
        value = node.value
        if node.kind != "scalar" or isinstance(value, bool) or not isinstance(value, int):
            return self.wrong(node, report)
        if not self.low <= value <= self.high:
            report.error(node.line, f"{value} is out of range: expected {self.low} to {self.high}")


@dataclass(frozen=True)
class Number(Spec):
    low: float
    high: float
    what: str = "a number"

    def check(self, node: Node, report: Reporter) -> None:
        value = node.value
        if node.kind != "scalar" or isinstance(value, bool) or not isinstance(value, int | float):
            return self.wrong(node, report)
        if not (math.isfinite(value) and self.low <= value <= self.high):
            report.error(node.line, f"{node.raw} is out of range: expected {self.low} to {self.high}")


@dataclass(frozen=True)
class Boolean(Spec):
    what: str = "true or false"

    def check(self, node: Node, report: Reporter) -> None:
        if not isinstance(node.value, bool):
            self.wrong(node, report)


@dataclass(frozen=True)
class Duration(Spec):
    """Seconds as a number, or "90s", "30m", "2h", "1d"."""

    low: float = 1
    high: float = 365 * 86400
    what: str = 'a duration (seconds, or "90s", "30m", "2h", "1d")'

    def check(self, node: Node, report: Reporter) -> None:
        seconds = parse_duration(node)
        if seconds is None:
            return self.wrong(node, report)
        if not self.low <= seconds <= self.high:
            report.error(
                node.line,
                f"{node.raw} is out of range: expected {self.low:g} s to {self.high / 86400:g} days",
            )


@dataclass(frozen=True)
class OneOf(Spec):
    options: tuple[str, ...]
    what: str = "one of the listed words"

    def check(self, node: Node, report: Reporter) -> None:
        if node.kind != "scalar" or node.value is None:
            return self.wrong(node, report)
        if node.text not in self.options:
            report.error(
                node.line,
                f"unknown {self.what} '{node.text}'{did_you_mean(node.text, self.options)}; "
                f"expected one of: {', '.join(self.options)}",
            )


@dataclass(frozen=True)
class Nullable(Spec):
    inner: Spec

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"{self.inner.what} or nothing"

    def check(self, node: Node, report: Reporter) -> None:
        if not (node.kind == "scalar" and node.value is None):
            self.inner.check(node, report)


@dataclass(frozen=True)
class Either(Spec):
    """The first option that takes the node's kind (scalar, list or mapping) checks it."""

    options: tuple[Spec, ...]

    @property
    def what(self) -> str:  # type: ignore[override]
        return " or ".join(option.what for option in self.options)

    @property
    def kinds(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(option.kinds for option in self.options))

    def check(self, node: Node, report: Reporter) -> None:
        option = next((option for option in self.options if node.kind in option.kinds), None)
        if option is None:
            return self.wrong(node, report)
        option.check(node, report)


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    min_items: int = 0
    max_items: int = 1000
    noun: str = "items"
    kinds: frozenset[str] = frozenset({"seq"})

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"a list of {self.noun}"

    def check(self, node: Node, report: Reporter) -> None:
        if node.kind != "seq":
            return self.wrong(node, report)
        if len(node.items) < self.min_items:
            report.error(node.line, f"expected at least {self.min_items} {self.noun}, got {len(node.items)}")
        elif len(node.items) > self.max_items:
            report.error(node.line, f"too many {self.noun}: {len(node.items)}, at most {self.max_items}")
        for index, item in enumerate(node.items):
            self.check_item(index, item, report)

    def check_item(self, index: int, item: Node, report: Reporter) -> None:
        self.item.check(item, report)


@dataclass(frozen=True)
class OneOrList(Spec):
    """One value, or a non-empty list of them."""

    item: Spec
    kinds: frozenset[str] = frozenset({"scalar", "seq"})

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"{self.item.what} or a list of them"

    def check(self, node: Node, report: Reporter) -> None:
        if node.kind == "seq":
            return ListOf(self.item, min_items=1, noun="values").check(node, report)
        self.item.check(node, report)


Rule = Callable[[Node, Reporter], None]


@dataclass(frozen=True)
class Record(Spec):
    fields: dict[str, Spec]
    required: tuple[str, ...] = ()
    what: str = "a mapping"
    rules: tuple[Rule, ...] = ()
    kinds: frozenset[str] = frozenset({"map"})

    def check(self, node: Node, report: Reporter) -> None:
        if node.kind != "map":
            return self.wrong(node, report)
        for key, value in node.mapping.items():
            spec = self.fields.get(key)
            if spec is None:
                report.error(
                    node.key_lines[key],
                    f"unknown key '{key}'{did_you_mean(key, tuple(self.fields))}; "
                    f"keys of {self.what} are: {', '.join(self.fields)}",
                )
            else:
                spec.check(value, report)
        for key in self.required:
            if key not in node.mapping:
                report.error(node.line, f"{self.what} needs a '{key}' key")
        for rule in self.rules:
            rule(node, report)


@dataclass(frozen=True)
class MapOf(Spec):
    key: Text
    value: Spec
    kinds: frozenset[str] = frozenset({"map"})
    what: str = "a mapping"

    def check(self, node: Node, report: Reporter) -> None:
        if node.kind != "map":
            return self.wrong(node, report)
        for key, value in node.mapping.items():
            key_line = node.key_lines[key]
            self.key.check(Node("scalar", key_line, key, key), report)
            self.value.check(value, report)


@dataclass(frozen=True)
class AnyValue(Spec):
    what: str = "any value"
    kinds: frozenset[str] = frozenset({"scalar", "seq", "map"})

    def check(self, node: Node, report: Reporter) -> None:
        return None


@dataclass(frozen=True)
class Tagged(Spec):
    """A mapping typed by the one key it has out of `variants` (several keys may share one record)."""

    variants: dict[str, Record]
    what: str = "a step"
    type_word: str = "step type"
    kinds: frozenset[str] = frozenset({"map"})
    known_keys: frozenset[str] = field(default=frozenset())

    def check(self, node: Node, report: Reporter) -> None:
        if node.kind != "map":
            return self.wrong(node, report)
        present = [key for key in node.mapping if key in self.variants]
        records = list({id(self.variants[key]): self.variants[key] for key in present}.values())
        if not records:
            return self._no_type(node, report)
        if len(records) > 1:
            report.error(
                node.line,
                f"{self.what} has one {self.type_word}, this one has {len(present)}: {', '.join(present)}; "
                "split it in two",
            )
            return None
        records[0].check(node, report)

    def _no_type(self, node: Node, report: Reporter) -> None:
        types = ", ".join(self.variants)
        for key in node.mapping:
            if key not in self.known_keys:
                hint = did_you_mean(key, tuple(self.variants))
                if hint:
                    report.error(
                        node.key_lines[key],
                        f"unknown {self.type_word} '{key}'{hint}; {self.type_word}s are: {types}",
                    )
                    return
        keys = ", ".join(node.mapping) or "none"
        report.error(
            node.line,
            f"{self.what} without a {self.type_word} (keys: {keys}); {self.type_word}s are: {types}",
        )
