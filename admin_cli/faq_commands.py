"""`scrm faq ...`: the FAQ (常见问题) of the flow directory, a few lines over flows/faq.py and flows/faq_csv.py.

Admins edit faq.yaml in the flow directory (or import a CSV into it); `scrm flows publish`
publishes it with the flows. The group is `faq`; admin_cli/faq_nlu_commands.py adds the
commands that need the NLU (training, asking) to the same group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click

from admin_cli.common import json_option, table
from admin_cli.flow_commands import checked, working
from admin_cli.main import cli, echo_json, settings_of
from bot.settings import Settings
from core.spelling import did_you_mean
from flows.diagram import duration
from flows.errors import FlowLoadError
from flows.faq import few_questions, read_faq
from flows.faq_csv import MAX_CSV_BYTES, FaqCsvError, Imported, export_csv, import_into
from flows.faq_model import FAQ_FILE, FaqBook, FaqEntry
from flows.loader import read_paths
from flows.model import FlowSet
from flows.publishing import known_intents, validate

# ---------------------------------------------------------------- shared


def dir_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                        help="The flow directory holding faq.yaml (default: flows.directory).")(function)


def faq_directory(settings: Settings, directory: Path | None) -> Path:
    return Path(directory or settings.flows.directory)


def faq_of(settings: Settings, directory: Path | None = None) -> FaqBook:
    """The FAQ of the working directory, or every error printed as file:line: message and exit 1."""
    folder = faq_directory(settings, directory)
    try:
        return read_faq(folder, settings.lifecycle)
    except FlowLoadError as exc:
        raise _rejected(exc, folder) from None


def _rejected(exc: FlowLoadError, folder: Path, what: str = "nothing was changed") -> click.ClickException:
    for error in exc.errors:
        click.echo(str(replace(error, file=str(folder / error.file))))
    return click.ClickException(f"{len(exc.errors)} error(s) in {folder}: {what}")


# ---------------------------------------------------------------- commands


@cli.group("faq")
def faq() -> None:
    """FAQ / 常见问题: the questions the bot answers from faq.yaml in the flow directory.

    Edit faq.yaml (format and checks: docs/flows.md, "FAQ (faq.yaml)") or import a CSV,
    then publish it with the flows: scrm flows publish.
    """


@faq.command("list")
@dir_option
@json_option
@click.pass_context
def list_command(ctx: click.Context, directory: Path | None, as_json: bool) -> None:
    """The entries of faq.yaml: id, title and how many questions (ways of asking) each has.

    Example: scrm faq list --json
    """
    settings = settings_of(ctx)
    book = faq_of(settings, directory)
    rows = [{"id": entry.id, "title": entry.title, "questions": len(entry.questions)} for entry in book.entries.values()]
    if as_json:
        echo_json(rows)
    elif not rows:
        click.echo(f"no FAQ in {faq_directory(settings, directory)}: write {FAQ_FILE}, or scrm faq import FILE.csv")
    else:
        click.echo(table([[row["id"], row["title"], row["questions"]] for row in rows], ["id", "title", "questions"]))


@faq.command("show")
@click.argument("entry_id", metavar="ID")
@dir_option
@json_option
@click.pass_context
def show_command(ctx: click.Context, entry_id: str, directory: Path | None, as_json: bool) -> None:
    """One entry: its questions, its answer and what else answering it does (cards, tags, stage, hand-off).

    Example: scrm faq show delivery_time
    """
    book = faq_of(settings_of(ctx), directory)
    entry = book.get(entry_id)
    if entry is None:
        hint = did_you_mean(entry_id, sorted(book.entries))
        raise click.ClickException(f"no FAQ entry {entry_id!r}{hint} (see: scrm faq list)")
    if as_json:
        echo_json(asdict(entry))
        return
    click.echo(f"{entry.id}: {entry.title} ({FAQ_FILE}, line {entry.line})")
    click.echo("questions:\n" + "\n".join(f"  {question}" for question in entry.questions))
    click.echo("answer:\n" + "\n".join(f"  {line}" for line in entry.answer.splitlines()))
    for line in _extras(entry):
        click.echo(line)


def _extras(entry: FaqEntry) -> list[str]:
    lines = [f"link: {link.title} {link.url}" for link in entry.links]
    if entry.miniprogram is not None:
        lines.append(f"mini-program: {entry.miniprogram.title} ({entry.miniprogram.appid} {entry.miniprogram.pagepath})")
    if entry.tags:
        lines.append(f"tags: {', '.join(entry.tags)}")
    if entry.set_stage:
        lines.append(f"stage: {entry.set_stage}")
    if entry.handoff_if_repeated_s:
        lines.append(f"hand-off: asked again within {duration(entry.handoff_if_repeated_s)}")
    return lines


@faq.command("validate")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@json_option
@click.pass_context
def validate_command(ctx: click.Context, path: Path | None, as_json: bool) -> None:
    """Check faq.yaml with the whole flow directory, as a publish would; PATH is a FAQ file to check in place
    of the directory's faq.yaml, or another flow directory.

    Prints every error as file:line: entry …: message and exits 1; or "ok:" and the counts.

    Example: scrm faq validate drafts/faq.yaml
    """
    settings = settings_of(ctx)
    sources, origins = _sources(settings, path)
    if as_json:
        try:
            flows = validate(sources, settings.lifecycle, settings.nlu)
        except FlowLoadError as exc:
            echo_json({"ok": False, "errors": [vars(error) for error in exc.errors]})
            ctx.exit(1)
    else:
        flows = checked(sources, settings, origins)
    _report_valid(flows, as_json)


def _sources(settings: Settings, path: Path | None) -> tuple[dict[str, str], dict[str, Path]]:
    """The directory's files (`path`'s if it is one), with a FAQ file given as `path` as faq.yaml."""
    if path is None or path.is_dir():
        return working(settings, path)
    sources, origins = working(settings) if Path(settings.flows.directory).is_dir() else ({}, {})
    try:
        sources[FAQ_FILE] = read_paths([path], {})[path.name]
    except FlowLoadError as exc:  # one file: every error is about `path`
        raise _rejected(FlowLoadError(replace(error, file=str(path)) for error in exc.errors), Path()) from None
    return sources, origins | {FAQ_FILE: path}


def _report_valid(flows: FlowSet, as_json: bool) -> None:
    entries = flows.faq.entries.values()
    counts = {"entries": len(entries), "questions": sum(len(entry.questions) for entry in entries)}
    thin = few_questions(flows.faq)
    if as_json:
        echo_json({"ok": True, **counts, "few_questions": thin, "errors": []})
        return
    click.echo(f"ok: {counts['entries']} FAQ entries, {counts['questions']} questions")
    if thin:
        click.echo(f"advice: {', '.join(thin)} have fewer than 4 questions; more ways of asking match better")


@faq.command("import")
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check every row and the directory with the result; write nothing.")
@dir_option
@json_option
@click.pass_context
def import_command(ctx: click.Context, csv_file: Path, dry_run: bool, directory: Path | None, as_json: bool) -> None:
    """Merge a CSV (columns id,question,answer; one row per question) into faq.yaml.

    Rows with the same id form one entry; its first non-empty answer is the answer. An imported id
    replaces that entry's questions and answer; other entries stay. Nothing is written when any row
    is wrong (each problem is printed with its row) or the directory would not load.

    Example: scrm faq import faq.csv --dry-run
    """
    settings = settings_of(ctx)
    folder = faq_directory(settings, directory)
    with csv_file.open("rb") as handle:
        data = handle.read(MAX_CSV_BYTES + 1)
    try:
        done = import_into(folder, data, settings.lifecycle, known_intents(settings.nlu), dry_run=dry_run)
    except FaqCsvError as exc:
        for problem in exc.problems:
            click.echo(f"{csv_file}: {problem}")
        raise click.ClickException(f"{len(exc.problems)} problem(s) in {csv_file}: nothing was imported") from None
    except FlowLoadError as exc:
        click.echo(f"{folder} must load before and after the import (its {FAQ_FILE} as the import would write it):")
        raise _rejected(exc, folder, "nothing was imported") from None
    _report_import(done, as_json)


def _report_import(done: Imported, as_json: bool) -> None:
    if as_json:
        echo_json({"file": str(done.path), "written": done.written, "added": list(done.added),
                   "replaced": list(done.replaced), "kept": done.kept})
        return
    verb = "imported into" if done.written else "dry run, nothing written; would import into"
    click.echo(f"{verb} {done.path}: {len(done.added) + len(done.replaced)} entries")
    click.echo(f"  added: {', '.join(done.added) or 'none'}")
    click.echo(f"  replaced: {', '.join(done.replaced) or 'none'}")
    click.echo(f"  kept: {done.kept}")


@faq.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write FILE (UTF-8 with a BOM, so Excel opens it right); default: standard output.")
@dir_option
@click.pass_context
def export_command(ctx: click.Context, output: Path | None, directory: Path | None) -> None:
    """faq.yaml as CSV (id,question,answer): one row per question, the answer on each entry's first row.

    What `scrm faq import` reads back: export, edit in a spreadsheet, import.

    Example: scrm faq export -o faq.csv
    """
    book = faq_of(settings_of(ctx), directory)
    text = export_csv(book)
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8-sig", newline="")
    rows = sum(len(entry.questions) for entry in book.entries.values())
    click.echo(f"{len(book.entries)} entries, {rows} rows written to {output}")


__all__ = ["dir_option", "faq", "faq_directory", "faq_of"]
