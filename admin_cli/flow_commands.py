"""`scrm flows ...`: validate, publish, roll back and look at the flows, a few lines over flows/.

The working directory (flows.directory) is what admins edit; releases in the store are
what the bot runs. Every command that publishes validates the whole directory first:
a broken directory is never published, and the current release keeps serving.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option, table, when
from admin_cli.main import cli, echo_json, settings_of
from bot.settings import Settings
from crm_store.models import FlowRelease
from crm_store.tags import sync_catalog
from flows.diagram import duration, mermaid, short, step_targets, summary, svg
from flows.loader import FlowLoadError, load_sources, read_directory, read_paths
from flows.model import (
    EventTrigger,
    ExternalTrigger,
    FaqTrigger,
    Flow,
    FlowSet,
    IntentTrigger,
    MediaTrigger,
    StageTrigger,
    TextTrigger,
    Trigger,
)
from flows.publishing import publish_flows, validate
from flows.releases import NothingToPublish, Published, UnknownRelease, diff, get_release, history, rollback

# ---------------------------------------------------------------- loading


def checked(sources: dict[str, str], settings: Settings, origins: dict[str, Path] | None = None) -> FlowSet:
    """The validated flows, or every error printed as file:line: flow, step: message and exit 1."""
    try:
        return validate(sources, settings.lifecycle, settings.nlu, Path(settings.flows.directory))
    except FlowLoadError as exc:
        raise _rejected(exc, origins or {}) from None


def _rejected(exc: FlowLoadError, origins: dict[str, Path]) -> click.ClickException:
    for error in exc.errors:
        click.echo(str(replace(error, file=str(origins.get(error.file, error.file)))))
    return click.ClickException(f"{len(exc.errors)} error(s) in the flows: nothing was changed")


def working(settings: Settings, directory: Path | None = None) -> tuple[dict[str, str], dict[str, Path]]:
    """File name -> text of the working directory (or `directory`), and file name -> path."""
    folder = Path(directory or settings.flows.directory)
    try:
        sources = read_directory(folder)
    except FlowLoadError as exc:
        raise _rejected(exc, {}) from None
    return sources, {name: folder / name for name in sources}


def published(settings: Settings, release_id: int | None = None) -> tuple[FlowRelease, FlowSet]:
    try:
        release = in_store(settings, lambda session: get_release(session, release_id))
    except UnknownRelease as exc:
        raise click.ClickException(f"{exc} (publish with: scrm flows publish)") from None
    try:
        return release, load_sources(dict(release.sources), settings.lifecycle)
    except FlowLoadError as exc:
        raise _rejected(exc, {}) from None


def _one_flow(settings: Settings, flow_id: str, release_id: int | None, from_working: bool) -> tuple[Flow, str, str]:
    """The flow, what it comes from ("release 3, version 2" or the directory), and its YAML text."""
    if from_working and release_id is not None:
        raise click.UsageError("give --release or --working, not both")
    if from_working:
        sources, origins = working(settings)
        flows, where = checked(sources, settings, origins), str(settings.flows.directory)
        versions: dict[str, Any] = {}
    else:
        release, flows = published(settings, release_id)
        where, versions = f"release {release.id}", release.versions
    if flow_id not in flows.flows:
        raise click.ClickException(f"no flow {flow_id!r} in {where}; flows: {', '.join(sorted(flows.flows))}")
    flow = flows.flows[flow_id]
    version = f", version {versions[flow_id]}" if flow_id in versions else ""
    return flow, where + version, flows.sources[flow.source_path]


def trigger_text(trigger: Trigger) -> str:
    if isinstance(trigger, IntentTrigger):
        return f"intent {trigger.intent} ≥{trigger.min_confidence:g}"
    if isinstance(trigger, TextTrigger):
        return f"keywords {'/'.join(trigger.keywords)}" if trigger.keywords else f"regex {trigger.regex}"
    if isinstance(trigger, EventTrigger):
        where = ", ".join(part for part in (trigger.channel, trigger.code_prefix and f"code {trigger.code_prefix}…")
                          if part)
        return f"event {trigger.event}" + (f" ({where})" if where else "")
    if isinstance(trigger, ExternalTrigger):
        return f"external {trigger.name}"
    if isinstance(trigger, FaqTrigger):
        return f"faq {trigger.entry}"
    if isinstance(trigger, MediaTrigger):
        return f"media {'/'.join(trigger.kinds)}"
    return f"stage {trigger.stage}" if isinstance(trigger, StageTrigger) else f"tag {trigger.tag}"


def _by() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "admin"


# ---------------------------------------------------------------- commands


@cli.group("flows")
def flows_group() -> None:
    """Flows: validate, publish, roll back, and look at what the bot runs."""


@flows_group.command("list")
@click.option("--working", "with_working", is_flag=True, help="Also the working directory's flows, marking "
              "those that differ from the published ones.")
@json_option
@click.pass_context
def list_flows(ctx: click.Context, with_working: bool, as_json: bool) -> None:
    """The published flows: id, version, priority, triggers and description.

    Example: scrm flows list --working
    """
    settings = settings_of(ctx)
    sources = in_store(settings, _current_sources)
    if not sources and not with_working:
        raise click.ClickException("nothing is published yet (scrm flows publish)")
    release, current = published(settings) if sources else (None, FlowSet({}))
    versions = release.versions if release else {}
    rows = [_flow_row(flow, versions.get(flow.id), "") for flow in current.flows.values()]
    if with_working:
        sources, origins = working(settings)
        draft = checked(sources, settings, origins)
        for row in rows:
            flow = current.flows[row["flow"]]
            mine = draft.flows.get(flow.id)
            same = mine is not None and sources.get(mine.source_path) == current.sources[flow.source_path]
            row["working"] = "unchanged" if same else "changed" if mine else "removed"
        rows += [_flow_row(flow, None, "new") for flow in draft.flows.values() if flow.id not in current.flows]
    rows.sort(key=lambda row: (-row["priority"], row["flow"]))
    if as_json:
        echo_json(rows)
        return
    click.echo(f"release {release.id}" if release else "nothing is published yet")
    headers = ["flow", "version", "priority", "triggers", "description"] + (["working"] if with_working else [])
    click.echo(table([[row[h] if h != "triggers" else "; ".join(row[h])[:60] for h in headers] for row in rows],
                     headers))


def _flow_row(flow: Flow, version: int | None, status: str) -> dict[str, Any]:
    row = {"flow": flow.id, "version": version, "priority": flow.priority,
           "triggers": [trigger_text(t) for t in flow.triggers], "description": flow.description}
    return row | ({"working": status} if status else {})


@flows_group.command("show")
@click.argument("flow_id", metavar="FLOW")
@click.option("--release", "release_id", type=int, help="A published release (default: the current one).")
@click.option("--working", "from_working", is_flag=True, help="The working directory instead of a release.")
@click.option("--source", is_flag=True, help="Print the flow's YAML file as published.")
@json_option
@click.pass_context
def show(ctx: click.Context, flow_id: str, release_id: int | None, from_working: bool, source: bool,
         as_json: bool) -> None:
    """One flow: its triggers, then one line per step with its type and where it goes.

    Example: scrm flows show price_question --release 3
    """
    flow, where, text = _one_flow(settings_of(ctx), flow_id, release_id, from_working)
    if source:
        click.echo(text, nl=False)
        return
    steps: list[dict[str, Any]] = [
        {"id": step.id, "line": step.line, "summary": summary(step),
         "targets": [{"to": to.replace(":", " ") or "END", "when": when} for to, when in step_targets(step)]}
        for step in flow.steps
    ]
    if as_json:
        echo_json({"flow": flow.id, "from": where, "description": flow.description, "priority": flow.priority,
                   "interruptible": flow.interruptible, "timeout_s": flow.timeout_s, "file": flow.source_path,
                   "triggers": [trigger_text(t) for t in flow.triggers], "steps": steps})
        return
    click.echo(f"flow {flow.id} ({where}, {flow.source_path}) {flow.description}".rstrip())
    click.echo(f"priority {flow.priority}, {'' if flow.interruptible else 'not '}interruptible, "
               f"ends after {duration(flow.timeout_s)} of silence")
    click.echo("triggers:" if flow.triggers else "triggers: none (started by goto or call only)")
    for trigger in flow.triggers:
        click.echo(f"  {trigger_text(trigger)}")
    click.echo("steps:")
    width = max(len(step["id"]) for step in steps)
    for step in steps:
        goes = ", ".join(t["to"] + (f" ({t['when']})" if t["when"] else "") for t in step["targets"])
        click.echo(f"  {step['id']:<{width}}  {short(step['summary'], 50)}" + (f"  → {goes}" if goes else ""))


@flows_group.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@json_option
@click.pass_context
def validate_command(ctx: click.Context, paths: tuple[Path, ...], as_json: bool) -> None:
    """Check the flow directory, or files and folders replacing its files of the same name.

    Prints every error as file:line: flow, step: message and exits 1; or "ok: N flows".

    Example: scrm flows validate flows/price_question.yaml
    """
    settings = settings_of(ctx)
    directory, base = Path(settings.flows.directory), {}
    try:
        base = read_directory(directory) if directory.is_dir() or not paths else {}
        sources = read_paths(list(paths), base)
        flows = validate(sources, settings.lifecycle, settings.nlu, directory)
    except FlowLoadError as exc:
        if as_json:
            echo_json({"ok": False, "errors": [vars(error) for error in exc.errors]})
            ctx.exit(1)
        raise _rejected(exc, _origins(directory, base, paths)) from None
    counts = {"flows": len(flows.flows), "tags": len(flows.tags.tags), "rules": len(flows.rules)}
    if as_json:
        echo_json({"ok": True, **counts, "errors": []})
    else:
        click.echo(f"ok: {counts['flows']} flows, {counts['tags']} tags, {counts['rules']} rules")


def _origins(directory: Path, base: dict[str, str], paths: Sequence[Path]) -> dict[str, Path]:
    """Where each file name was read from, so errors name a path an editor can open."""
    origins = {name: directory / name for name in base}
    for path in paths:
        found = [path / entry.name for entry in path.iterdir()] if path.is_dir() else [path]
        origins |= {entry.name: entry for entry in found}
    return origins


@flows_group.command("diff")
@click.pass_context
def diff_command(ctx: click.Context) -> None:
    """Unified diff of the working directory against the published release.

    Example: scrm flows diff | less
    """
    settings = settings_of(ctx)
    sources, _ = working(settings)
    current = in_store(settings, _current_sources)
    click.echo(diff(current, sources) or "no differences", nl=False if current != sources else True)


async def _current_sources(session: AsyncSession) -> dict[str, str]:
    try:
        return dict((await get_release(session)).sources)
    except UnknownRelease:
        return {}


@flows_group.command("publish")
@click.option("--note", default="", help="Why: shown by `scrm flows history`.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Publish this directory instead of flows.directory.")
@json_option
@click.pass_context
def publish_command(ctx: click.Context, note: str, directory: Path | None, as_json: bool) -> None:
    """Validate the whole directory, then publish it as a new release (and sync the tag catalog).

    A broken directory is never published: the errors are printed, the current release
    keeps serving, and the exit status is 1.

    Example: scrm flows publish --note "春节活动"
    """
    settings = settings_of(ctx)
    sources, origins = working(settings, directory)
    flows = checked(sources, settings, origins)
    _report(in_store(settings, lambda s: _publish(s, flows, note)), as_json)


async def _publish(session: AsyncSession, flows: FlowSet, note: str) -> Published | str:
    try:
        return await publish_flows(session, flows, note=note, by=_by())
    except NothingToPublish as exc:
        return str(exc)


def _report(outcome: Published | str, as_json: bool) -> None:
    if isinstance(outcome, str):
        echo_json({"release": None, "nothing_to_publish": outcome}) if as_json else click.echo(
            f"nothing to publish: {outcome}")
        return
    if as_json:
        echo_json({"release": outcome.release_id, "changed": outcome.changed, "removed": outcome.removed})
        return
    click.echo(f"published release {outcome.release_id}")
    click.echo(f"  changed: {', '.join(outcome.changed) or 'none'}")
    if outcome.removed:
        click.echo(f"  removed: {', '.join(outcome.removed)}")


@flows_group.command("rollback")
@click.option("--to", "to_release", type=int, help="The release to go back to (default: the one before the current).")
@json_option
@click.pass_context
def rollback_command(ctx: click.Context, to_release: int | None, as_json: bool) -> None:
    """Publish an earlier release again, as a new release (history is never rewritten).

    Example: scrm flows rollback --to 3
    """
    settings = settings_of(ctx)

    async def work(session: AsyncSession) -> Published | str:
        try:
            outcome = await rollback(session, settings.lifecycle, to_release, by=_by())
        except NothingToPublish as exc:
            return str(exc)
        release = await get_release(session, outcome.release_id)
        await sync_catalog(session, load_sources(dict(release.sources), settings.lifecycle).tags.groups)
        return outcome

    try:
        _report(in_store(settings, work), as_json)
    except UnknownRelease as exc:
        raise click.ClickException(str(exc)) from None
    except FlowLoadError as exc:
        raise _rejected(exc, {}) from None


@flows_group.command("history")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
@click.pass_context
def history_command(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Releases, newest first: number, when, by whom, note, and the version of each flow.

    Example: scrm flows history --limit 5
    """
    releases = in_store(settings_of(ctx), lambda session: history(session, limit))
    rows: list[dict[str, Any]] = [{"release": r.id, "published_at": r.published_at, "by": r.published_by, "note": r.note,
             "versions": dict(r.versions)} for r in releases]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("nothing is published yet (scrm flows publish)")
        return
    click.echo(table([[row["release"], when(row["published_at"]), row["by"], row["note"],
                       " ".join(f"{flow}@{version}" for flow, version in sorted(row["versions"].items()))]
                      for row in rows], ["release", "published", "by", "note", "flows"]))


@flows_group.command("export")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--release", "release_id", type=int, help="Default: the current release.")
@click.option("--force", is_flag=True, help="Write into a non-empty directory, replacing its flow files.")
@click.pass_context
def export_command(ctx: click.Context, dest: Path, release_id: int | None, force: bool) -> None:
    """Write a release's files into the directory DEST (created), and nothing else.

    Example: scrm flows export --release 3 backup/release-3
    """
    release, _ = published(settings_of(ctx), release_id)
    names = sorted(release.sources)
    if any(Path(name).name != name or name.startswith(".") for name in names):
        raise click.ClickException(f"release {release.id} has a file name that is not a plain name: {names}")
    if dest.exists() and any(dest.iterdir()) and not force:
        raise click.ClickException(f"{dest} is not empty: choose an empty directory, or add --force")
    dest.mkdir(parents=True, exist_ok=True)
    for stale in [p for p in dest.iterdir() if p.suffix in (".yaml", ".yml") and p.name not in release.sources]:
        stale.unlink()  # the directory holds exactly the release's flow files
    for name in names:
        (dest / name).write_text(release.sources[name], encoding="utf-8")
    click.echo(f"release {release.id}: {len(names)} files written to {dest}")


@flows_group.command("import")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@json_option
@click.pass_context
def import_command(ctx: click.Context, src: Path, as_json: bool) -> None:
    """Validate a directory of flow files (e.g. exported ones) and publish it.

    Example: scrm flows import backup/release-3
    """
    ctx.invoke(publish_command, note=f"import from {src}", directory=src, as_json=as_json)


@flows_group.command("graph")
@click.argument("flow_id", metavar="FLOW")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="FILE.svg for a picture, FILE.mmd for Mermaid text (default: Mermaid on stdout).")
@click.option("--release", "release_id", type=int, help="A published release (default: the current one).")
@click.option("--working", "from_working", is_flag=True, help="The working directory instead of a release.")
@click.pass_context
def graph(ctx: click.Context, flow_id: str, output: Path | None, release_id: int | None, from_working: bool) -> None:
    """Draw a flow: Mermaid flowchart text, or an SVG picture with --output FILE.svg.

    Example: scrm flows graph price_question --working -o price.svg
    """
    if output is not None and output.suffix not in (".svg", ".mmd", ".md"):
        raise click.UsageError("--output must end in .svg (a picture) or .mmd (Mermaid text)")
    flow, _, _ = _one_flow(settings_of(ctx), flow_id, release_id, from_working)
    if output is None:
        click.echo(mermaid(flow), nl=False)
        return
    output.write_text(svg(flow) if output.suffix == ".svg" else mermaid(flow), encoding="utf-8")
    click.echo(f"{flow.id}: {len(flow.steps)} steps drawn in {output}")


__all__ = ["when", "checked", "flows_group", "in_store", "json_option", "published", "table", "working"]
