"""Every `scrm` command explains itself: help text with an example, and a mention in the documentation."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from admin_cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
# The hand-written pages: the generated CLI reference holds only a directive, so it proves nothing here.
DOCS = "\n".join(path.read_text(encoding="utf-8") for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))])


def leaf_commands(group: click.Group, prefix: str = "scrm") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found.extend(leaf_commands(command, path))
        else:
            found.append((path, command))
    return found


COMMANDS = leaf_commands(cli)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[path for path, _ in COMMANDS])
def test_command_has_help_with_an_example(path: str, command: click.Command) -> None:
    text = command.help or ""
    assert text.strip(), f"{path} has no help"
    assert "Example" in text or "example" in text, f"{path}: add an example to its docstring"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[path for path, _ in COMMANDS])
def test_command_is_in_the_docs(path: str, command: click.Command) -> None:
    assert path in DOCS, f"{path} is not mentioned in README.md or docs/"
