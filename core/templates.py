"""Message templates: text with `{{ customer.name }}` fields, and nothing else.

Written by hand with two regular expressions, on purpose: a template engine such
as Jinja evaluates expressions (`{{ x.__class__.__mro__ }}`, calls, filters), and a
flow file must never be able to run code. Here a field is a dotted name (letters,
digits and `_`, each part starting with a letter); anything else between `{{ }}`,
any `{% %}` or `{# #}`, and an unpaired `{{` or `}}` is a TemplateError.

`render` substitutes values in one pass: a value that itself looks like a field
(a customer called "{{ customer.id }}") is shown as it is, never expanded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*"
_FIELD = re.compile(r"\{\{\s*(" + _NAME + r")\s*\}\}")
# A candidate field (no braces inside, so scanning stays linear), a statement or
# comment opener, or an unpaired pair of braces.
_TOKEN = re.compile(r"\{\{[^{}]*\}\}|\{%|\{#|\{\{|\}\}")
ALLOWED = (
    "a template only shows fields such as {{ customer.name }} or {{ slots.product }} "
    "(letters, digits and _, each part starting with a letter, joined by dots); "
    "no calls, filters, operators, indexing or {% %} statements"
)
_SNIPPET = 40


@dataclass(frozen=True)
class Template:
    """Text with `{{ customer.name }}`-style fields; `fields` are the dotted names it uses."""

    source: str
    fields: tuple[str, ...] = ()


class TemplateError(ValueError):
    """A template uses something other than `{{ dotted.name }}` fields."""


def parse_template(source: str) -> Template:
    """The template and the dotted fields it uses, in order of first use."""
    fields: list[str] = []
    for match in _TOKEN.finditer(source):
        token = match.group()
        if token in ("{%", "{#"):
            raise TemplateError(f"{_snippet(source, match.start())!r} is not allowed: {ALLOWED}")
        if token == "{{":
            raise TemplateError(
                f"'{{{{' without a closing '}}}}' in {_snippet(source, match.start())!r}: {ALLOWED}"
            )
        if token == "}}":
            raise TemplateError(
                f"'}}}}' without an opening '{{{{' in {_snippet(source, match.start())!r}: {ALLOWED}"
            )
        field = _FIELD.fullmatch(token)
        if field is None:
            raise TemplateError(f"template field {token[: _SNIPPET * 2]!r} is not allowed: {ALLOWED}")
        if field.group(1) not in fields:
            fields.append(field.group(1))
    return Template(source, tuple(fields))


def render(template: Template, values: Mapping[str, object]) -> str:
    """The text with each field replaced by its value (keyed by dotted name); missing values show as ""."""
    return _FIELD.sub(lambda match: _show(values.get(match.group(1))), template.source)


def _show(value: object) -> str:
    return "" if value is None else str(value)


def _snippet(source: str, start: int) -> str:
    text = source[start : start + _SNIPPET]
    for closer in ("%}", "#}", "}}"):
        end = text.find(closer, 2)
        if end != -1:
            return text[: end + 2]
    return text
