"""mkdocs hooks: the HTTP API reference rendered from the OpenAPI document the server serves.

`docs/api-reference.md` holds a marker; at build time it is replaced by one section per
operation (parameters, body, answers) and one table per schema, all from
`bot.api.openapi.build_document()`, so the page cannot drift from what the handlers accept.
"""

from __future__ import annotations

from typing import Any

from bot.api.openapi import build_document

MARKER = "<!-- openapi-reference -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render(build_document()))


def render(document: dict[str, Any]) -> str:
    lines: list[str] = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            lines += _operation(method, path, operation)
    lines += ["## Schemas", ""]
    for name, schema in sorted(document["components"]["schemas"].items()):
        lines += _schema(name, schema)
    return "\n".join(lines)


def _operation(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    lines = [f"## `{method.upper()} {path}`", "", operation["summary"], ""]
    parameters = operation.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | required | type |", "| --- | --- | --- | --- |"]
        lines += [f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | {_type(p['schema'])} |"
                  for p in parameters]
        lines.append("")
    body = operation.get("requestBody")
    if body is not None:
        lines += [f"Body: {_type(body['content']['application/json']['schema'])}", ""]
    answers = ", ".join(_answer(status, response) for status, response in operation["responses"].items())
    return [*lines, f"Answers: {answers} (errors as [ErrorBody](#errorbody)).", ""]


def _answer(status: str, response: dict[str, Any]) -> str:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    if int(status) >= 400 or "$ref" not in schema:
        return f"{status} `{response['description']}`"
    return f"{status} {_type(schema)}"


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [" ".join(schema["description"].split()), ""]
    properties = schema.get("properties", {})
    if not properties:
        return [*lines, f"{_type(schema)}", ""]
    required = set(schema.get("required", ()))
    lines += ["| field | type | required | notes |", "| --- | --- | --- | --- |"]
    for field, prop in properties.items():
        lines.append(f"| `{field}` | {_type(prop)} | {'yes' if field in required else 'no'} | {_notes(prop)} |")
    return [*lines, ""]


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(option) for option in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if "enum" in schema:
        return " / ".join(f"`{value}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)


def _notes(prop: dict[str, Any]) -> str:
    notes = [" ".join(str(prop["description"]).split())] if prop.get("description") else []
    for key, label in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("maxLength", "length ≤"),
                       ("maxItems", "items ≤"), ("pattern", "pattern")):
        if key in prop:
            notes.append(f"{label} `{prop[key]}`" if key == "pattern" else f"{label} {prop[key]}")
    if "default" in prop and prop["default"] is not None:
        notes.append(f"default `{prop['default']}`")
    return "; ".join(notes).replace("|", "\\|")
