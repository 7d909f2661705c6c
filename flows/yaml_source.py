"""Safe YAML for flow files: text → a tree of `Node`s that each know their line.

Flow files are written by admins and may be uploaded, so parsing refuses what a
plain `yaml.safe_load` lets through or gets wrong:

- files over MAX_BYTES (checked before parsing; the loader checks before reading);
- anchors, aliases and merge keys: "billion laughs" expands a few lines into
  gigabytes, and nothing in a flow needs them;
- duplicate keys (PyYAML silently keeps the last one);
- tags other than the plain YAML ones (`!!python/...`, `!custom`, `!!binary`, `!!set`);
- more than one document, a non-mapping document, nesting deeper than MAX_DEPTH.

Only the composer runs (events → nodes with marks); no constructor ever sees a
tag. Scalars are resolved as YAML 1.1 does (`yes` is true, `1:30` is 90); keys are
always the text as written. Dates stay text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from flows.errors import Reporter

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32

_YAML = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_YAML}{name}" for name in ("str", "int", "float", "bool", "null", "timestamp")}
_CONSTRUCT = SafeConstructor()


@dataclass(frozen=True, eq=False)
class Node:
    """A YAML value and its 1-based line; maps keep the line of each key."""

    kind: str  # "map" | "seq" | "scalar"
    line: int
    value: Any  # dict[str, Node] | list[Node] | str | int | float | bool | None
    raw: str = ""  # scalars: the text as written
    key_lines: dict[str, int] = field(default_factory=dict)

    @property
    def mapping(self) -> dict[str, Node]:
        return self.value if self.kind == "map" else {}

    @property
    def items(self) -> list[Node]:
        return self.value if self.kind == "seq" else []

    def get(self, key: str) -> Node | None:
        return self.mapping.get(key)

    @property
    def text(self) -> str:
        """A scalar as text: strings as they are, numbers and booleans as written."""
        if self.kind != "scalar" or self.value is None:
            return ""
        return self.value if isinstance(self.value, str) else self.raw


class _Refused(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Composer(yaml.SafeLoader):
    """SafeLoader's parser and composer, refusing anchors, aliases and deep nesting as they come."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(line, "anchors and aliases (&name, *name) are not allowed: write the value out")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(line, f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_yaml(text: str, report: Reporter) -> Node | None:
    """The document of `text` as Nodes, or None after reporting why it cannot be used."""
    size = len(text) if len(text) > MAX_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        report.error(
            0,
            f"file is {human_size(size)}; the limit is {human_size(MAX_BYTES)}",
        )
        return None
    try:
        root = _compose(text.removeprefix("\ufeff"))
    except _Refused as refused:
        report.error(refused.line, refused.message)
        return None
    except yaml.YAMLError as exc:
        report.error(*_describe(exc, text))
        return None
    if root is None:
        report.error(0, "file is empty")
        return None
    before = report.count
    tree = _convert(root, report)
    if report.count > before:
        return None
    if tree.kind != "map":
        report.error(
            tree.line, "the file must be a mapping of keys (key: value), not a list or a single value"
        )
        return None
    return tree


def _compose(text: str) -> Any:
    composer = _Composer(text)  # the reader checks for unprintable characters here already
    try:
        return composer.get_single_node()
    finally:
        composer.dispose()


def _convert(node: yaml.Node, report: Reporter) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        _check_tag(node, f"{_YAML}map", report)
        return _convert_map(node, report)
    if isinstance(node, yaml.SequenceNode):
        _check_tag(node, f"{_YAML}seq", report)
        return Node("seq", line, [_convert(item, report) for item in node.value])
    if node.tag not in _SCALAR_TAGS:
        _check_tag(node, f"{_YAML}str", report)
        return Node("scalar", line, None, node.value)
    return Node("scalar", line, _scalar(node), node.value)


def _convert_map(node: yaml.MappingNode, report: Reporter) -> Node:
    entries: dict[str, Node] = {}
    key_lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == f"{_YAML}merge":
            report.error(line, "merge keys (<<) are not allowed: write the keys out")
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            report.error(line, "a key must be plain text, not a list or a mapping")
            continue
        key = str(key_node.value)
        if key in entries:
            report.error(line, f"duplicate key '{key}' (first at line {key_lines[key]}): keep one")
            continue
        entries[key] = _convert(value_node, report)
        key_lines[key] = line
    return Node("map", node.start_mark.line + 1, entries, key_lines=key_lines)


def _scalar(node: yaml.ScalarNode) -> Any:
    kind = node.tag.removeprefix(_YAML)
    if kind == "int":
        return _CONSTRUCT.construct_yaml_int(node)
    if kind == "float":
        return _CONSTRUCT.construct_yaml_float(node)
    if kind == "bool":
        return _CONSTRUCT.construct_yaml_bool(node)
    if kind == "null":
        return None
    return str(node.value)  # str, and timestamps kept as written


def _check_tag(node: yaml.Node, expected: str, report: Reporter) -> None:
    if node.tag != expected:
        tag = node.tag.replace(_YAML, "!!")
        report.error(
            node.start_mark.line + 1, f"custom tag '{tag}' is not allowed: flow files hold plain values"
        )


def _describe(exc: yaml.YAMLError, text: str) -> tuple[int, str]:
    if isinstance(exc, yaml.composer.ComposerError) and exc.problem == "but found another document":
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        return line, "one document per file: found a second one (---); put each flow in a file of its own"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        return (mark.line + 1 if mark else 0), f"not valid YAML: {reason}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or " ")
        return line, f"not valid YAML: the control character U+{character:04X} is not allowed"
    return 0, f"not valid YAML: {exc}"


def human_size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MB"
    return f"{count / 1024:.0f} KB"
