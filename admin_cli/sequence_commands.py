"""`scrm sequences ...`: nurture sequences (培育/SOP): validate, publish, enrol, pause, and how they do.

Sequences are YAML files in `<flows.directory>/sequences/` (the format is at the top of
flows/sequences.py), checked against the flows' tag catalog (tags.yaml) and the lifecycle.
Publishing makes a new version only of what changed; an enrolment keeps the version it
started on. Each command is one transaction over crm_store.enrolments, except enrolling a
segment, which commits batch by batch so a large one never holds a long transaction.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option, table, when
from admin_cli.main import cli, echo_json, settings_of
from admin_cli.progress import progress
from admin_cli.push_commands import admin_name, segment_of, segment_options
from bot.settings import Settings
from core.sequences import Condition, NurtureSequence, SeqStep
from crm_store.customer_queries import current_customer
from crm_store.enrolments import EnrolError, SequenceCatalog, end_enrolments, enrol, publish
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer, utcnow
from crm_store.nurture_models import Enrolment, SequenceState, SequenceVersion
from crm_store.segments import Segment, SegmentError, checked_segment, count_and_sample, segment_query
from crm_store.sequence_stats import SequenceStats, sequence_overview, sequence_stats
from flows.diagram import duration, short
from flows.errors import FlowLoadError
from flows.loader import load_sources
from flows.sequences import load_sequences, sequence_dir

BATCH = 500  # customers enrolled per transaction
BAR = 30  # characters of the longest bar in `stats`

# ---------------------------------------------------------------- loading


def _rejected(exc: FlowLoadError, folder: Path, origins: dict[str, Path] | None = None) -> click.ClickException:
    for error in exc.errors:
        click.echo(str(replace(error, file=str((origins or {}).get(error.file, folder / error.file)))))
    return click.ClickException(f"{len(exc.errors)} error(s) in the sequences: nothing was changed")


def _names(settings: Settings) -> tuple[list[str], dict[str, str]]:
    """The tag catalog of the flow directory (tags.yaml), and stage ids and labels -> ids."""
    path = Path(settings.flows.directory) / "tags.yaml"
    tags: list[str] = []
    if path.is_file():
        try:
            tags = sorted(load_sources({path.name: path.read_text(encoding="utf-8")}, settings.lifecycle).tags.tags)
        except FlowLoadError as exc:
            raise _rejected(exc, path.parent) from None
    stages = {stage.label: stage.id for stage in settings.lifecycle.stages}
    return tags, stages | {stage.id: stage.id for stage in settings.lifecycle.stages}


def loaded(settings: Settings, path: Path | None = None) -> tuple[dict[str, NurtureSequence], dict[str, str]]:
    """The checked sequences of the sequence directory (or a file or folder), or every error and exit 1."""
    folder = path or sequence_dir(Path(settings.flows.directory))
    tags, stages = _names(settings)
    if folder.is_file():
        with tempfile.TemporaryDirectory() as scratch:
            shutil.copy(folder, Path(scratch) / folder.name)
            try:
                return load_sequences(Path(scratch), tags, stages)
            except FlowLoadError as exc:
                raise _rejected(exc, folder.parent, {folder.name: folder}) from None
    if not folder.is_dir():
        raise click.ClickException(f"{folder}: no such directory (sequences are YAML files in "
                                   "<flows.directory>/sequences/)")
    try:
        return load_sequences(folder, tags, stages)
    except FlowLoadError as exc:
        raise _rejected(exc, folder) from None


# ---------------------------------------------------------------- showing


def timing(step: SeqStep) -> str:
    if step.at_day is not None:
        return f"day {step.at_day} {step.at_time}"
    if step.after_s is not None:
        return "at once" if not step.after_s else f"{duration(step.after_s)} after enrolment"
    return f"{duration(step.after_previous_s)} after the previous" if step.after_previous_s else "right after"


def condition_text(condition: Condition | None) -> str:
    if condition is None:
        return ""
    parts = [f"tag {tag}" for tag in condition.tags] + [f"not tag {tag}" for tag in condition.not_tags]
    parts += [f"stage {'|'.join(condition.stages)}"] if condition.stages else []
    parts += [f"social ≥ {condition.social_min:g}"] if condition.social_min is not None else []
    parts += [f"slot {key}={value}" for key, value in condition.slots.items()]
    return " and ".join(parts)


def pair_text(kind: str, value: str) -> str:
    if kind == "contact_added":
        return "contact added" + ("" if value in ("", "any") else f" via {value}")
    return f"{kind} {value}".strip()


# ---------------------------------------------------------------- commands


@cli.group("sequences")
def sequences_group() -> None:
    """Nurture sequences: validate, publish, enrol customers, pause, and their results."""


@sequences_group.command("list")
@json_option
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Published sequences: version, live/paused/retired, enrolments (all and active), steps.

    Example: scrm sequences list --json
    """
    rows = in_store(settings_of(ctx), sequence_overview)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no sequences published yet (scrm sequences publish)")
        return
    click.echo(table([[r["sequence"], f"v{r['version']}", "retired" if r["retired"] else "paused" if r["paused"]
                       else "live", f"{r['enrolled']}/{r['active']}", r["steps"], r["description"]] for r in rows],
                     ["sequence", "version", "state", "enrolled/active", "steps", "description"]))


@sequences_group.command("show")
@click.argument("name")
@click.option("--version", "version_no", type=int, help="A published version (default: the current one).")
@json_option
@click.pass_context
def show(ctx: click.Context, name: str, version_no: int | None, as_json: bool) -> None:
    """One sequence: how customers enter and leave it, and each step's timing, condition and text.

    Example: scrm sequences show new_lead --version 2
    """
    settings = settings_of(ctx)

    async def work(session: AsyncSession) -> tuple[SequenceState, SequenceVersion | None] | None:
        state = await session.get(SequenceState, name)
        if state is None:
            return None
        return state, await session.get(SequenceVersion, (name, version_no or state.current_version))

    found = in_store(settings, work)
    if found is None:
        raise click.ClickException(f"no published sequence {name!r} (see: scrm sequences list)")
    state, row = found
    if row is None:
        raise click.ClickException(f"{name} has no version {version_no} (the current one is v{state.current_version})")
    sequence = NurtureSequence.from_data(row.definition)
    if as_json:
        echo_json({"version": row.version, "published_at": row.published_at, "published_by": row.published_by,
                   "paused": state.paused, "retired": state.retired, **sequence.to_data()})
        return
    click.echo(f"sequence {name} v{row.version} (published {when(row.published_at)} by {row.published_by or '-'})"
               f" {sequence.description}".rstrip())
    click.echo(f"state: {'retired' if state.retired else 'paused' if state.paused else 'live'}; marketing: "
               f"{'yes (never sent to customers who unsubscribed)' if sequence.marketing else 'no'}")
    click.echo(f"enrolled by: {'; '.join(pair_text(*pair) for pair in sequence.enroll) or 'admins only'}")
    click.echo(f"exits on: {'; '.join(pair_text(*pair) for pair in sequence.exits) or 'nothing (runs to the end)'}")
    click.echo(table([[i + 1, s.id, timing(s), condition_text(s.when), "exit" if s.exit and not s.say
                       else short(s.say, 80) + ("  (then exit)" if s.exit else "")]
                      for i, s in enumerate(sequence.steps)], ["#", "step", "when", "if", "says"]))


@sequences_group.command("validate")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.pass_context
def validate(ctx: click.Context, path: Path | None) -> None:
    """Check the sequence directory (or one file or folder): every error as file:line and exit 1, or "ok: N sequences".

    Example: scrm sequences validate flows/library/sequences/new_lead.yaml
    """
    if path is not None and not path.exists():
        raise click.ClickException(f"{path}: no such file or directory")
    sequences, _ = loaded(settings_of(ctx), path)
    click.echo(f"ok: {len(sequences)} sequences")


@sequences_group.command("publish")
@json_option
@click.pass_context
def publish_command(ctx: click.Context, as_json: bool) -> None:
    """Validate the sequence directory, then publish a new version of each sequence that changed.

    A sequence whose file is gone retires: no new enrolments, running ones finish. Nothing is
    published when any file has an error.

    Example: scrm sequences publish
    """
    settings = settings_of(ctx)
    sequences, sources = loaded(settings)

    async def work(session: AsyncSession) -> dict[str, Any]:
        live = set(await session.scalars(select(SequenceState.name).where(SequenceState.retired.is_(False))))
        published = await publish(session, sequences, sources, by=admin_name())
        return {"published": [{"sequence": p.name, "version": p.version, "changed": p.changed} for p in published],
                "retired": sorted(live - set(sequences))}

    outcome = in_store(settings, work)
    if as_json:
        echo_json(outcome)
        return
    for item in outcome["published"]:
        click.echo(f"{item['sequence']}: v{item['version']} ({'changed' if item['changed'] else 'unchanged'})")
    for name in outcome["retired"]:
        click.echo(f"{name}: retired (its file is gone: no new enrolments)")
    if not outcome["published"] and not outcome["retired"]:
        click.echo("no sequences to publish")


@sequences_group.command("enroll")
@click.argument("name")
@click.option("--customer", "customer_ids", type=int, multiple=True, metavar="ID", help="This customer (repeat).")
@segment_options
@json_option
@click.pass_context
def enroll(ctx: click.Context, name: str, customer_ids: tuple[int, ...], as_json: bool, **options: Any) -> None:
    """Enrol customers by id, or everyone in a segment (the options of scrm push), in the current version.

    Example: scrm sequences enroll new_lead --tag 询价 --active-within 7
    """
    settings = settings_of(ctx)
    segment = segment_of(options)
    if bool(customer_ids) == bool(segment):
        raise click.UsageError("give --customer ID (repeat) or segment options such as --tag, not both")
    try:
        tally = (_enrol_ids(settings, name, customer_ids) if customer_ids
                 else _enrol_segment(settings, name, segment, quiet=as_json))
    except (EnrolError, SegmentError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(tally)
        return
    left_out = f", left out {tally['opted_out']} who opted out of marketing" if tally.get("opted_out") else ""
    click.echo(f"{name} v{tally['version']}: enrolled {tally['enrolled']}, already enrolled "
               f"{tally['already_enrolled']}{left_out}")


async def _enrol_each(session: AsyncSession, customers: list[Customer], sequence: NurtureSequence, version: int,
                      source: str, zone: ZoneInfo, tally: Counter[str]) -> None:
    for customer in customers:
        if sequence.marketing and customer.marketing_opt_out:
            tally["opted_out"] += 1
        else:
            made = await enrol(session, customer.id, sequence, version, source, zone)
            tally["enrolled" if made else "already_enrolled"] += 1


def _enrol_ids(settings: Settings, name: str, customer_ids: tuple[int, ...]) -> dict[str, Any]:
    zone, source = ZoneInfo(settings.nurture.timezone), f"admin:{admin_name()}"

    async def work(session: AsyncSession) -> dict[str, Any]:
        sequence, state = await SequenceCatalog().current(session, name)
        found = {customer_id: await current_customer(session, customer_id) for customer_id in customer_ids}
        missing = [str(customer_id) for customer_id, customer in found.items() if customer is None]
        if missing:
            raise EnrolError(f"no customer {', '.join(missing)}: nobody was enrolled")
        customers = {c.id: c for c in found.values() if c is not None}  # merged ids stand for their customer
        tally: Counter[str] = Counter({"enrolled": 0, "already_enrolled": 0, "opted_out": 0})
        await _enrol_each(session, list(customers.values()), sequence, state.current_version, source, zone, tally)
        return {"sequence": name, "version": state.current_version, **tally}

    return in_store(settings, work)


def _enrol_segment(settings: Settings, name: str, segment: Segment | None, quiet: bool = False) -> dict[str, Any]:
    """Batch after batch, one transaction each, by ascending id (customers who opted out are not selected).

    Progress (on stderr) counts the customers gone through out of the segment's size at the start.
    """
    zone, source, lifecycle = ZoneInfo(settings.nurture.timezone), f"admin:{admin_name()}", Lifecycle(settings.lifecycle)
    now = utcnow()

    async def first(session: AsyncSession) -> tuple[NurtureSequence, int, Segment, int]:
        sequence, state = await SequenceCatalog().current(session, name)
        checked = await checked_segment(session, segment or Segment(), lifecycle)
        size, _ = await count_and_sample(session, checked, 0, now, exclude_opted_out=sequence.marketing)
        return sequence, state.current_version, checked, size

    sequence, version, checked, size = in_store(settings, first)
    tally, after = Counter({"enrolled": 0, "already_enrolled": 0}), 0

    async def batch(session: AsyncSession) -> int:
        customers = list(await session.scalars(select(Customer).where(Customer.id.in_(
            segment_query(checked, now, exclude_opted_out=sequence.marketing).where(Customer.id > after)
            .order_by(Customer.id).limit(BATCH))).order_by(Customer.id)))
        await _enrol_each(session, customers, sequence, version, source, zone, tally)
        return customers[-1].id if customers else 0

    with progress(f"enroll {name}", size, unit="customers", quiet=quiet) as shown:
        while after := in_store(settings, batch):
            shown.update(sum(tally.values()))
    return {"sequence": name, "version": version, "segment": checked.to_data(), **tally}


@sequences_group.command("pause")
@click.argument("name")
@click.pass_context
def pause(ctx: click.Context, name: str) -> None:
    """Pause a sequence: nothing of it is sent until it is resumed; enrolments and their places are kept.

    Example: scrm sequences pause new_lead
    """
    active = _set_paused(settings_of(ctx), name, True)
    click.echo(f"{name} paused: its {active} active enrolment(s) wait until: scrm sequences resume {name}")


@sequences_group.command("resume")
@click.argument("name")
@click.pass_context
def resume(ctx: click.Context, name: str) -> None:
    """Resume a paused sequence: messages that fell due meanwhile go out at the dispatcher's next run.

    Example: scrm sequences resume new_lead
    """
    active = _set_paused(settings_of(ctx), name, False)
    click.echo(f"{name} resumed: {active} active enrolment(s)")


def _set_paused(settings: Settings, name: str, paused: bool) -> int:
    async def work(session: AsyncSession) -> int | None:
        state = await session.get(SequenceState, name)
        if state is None:
            return None
        state.paused = paused
        return int(await session.scalar(select(func.count()).select_from(Enrolment).where(
            Enrolment.sequence == name, Enrolment.status == "active")) or 0)

    active = in_store(settings, work)
    if active is None:
        raise click.ClickException(f"no published sequence {name!r} (see: scrm sequences list)")
    return active


@sequences_group.command("stop")
@click.argument("name")
@click.option("--customer", "customer_ids", type=int, multiple=True, required=True, metavar="ID",
              help="The customer (repeat).")
@click.pass_context
def stop(ctx: click.Context, name: str, customer_ids: tuple[int, ...]) -> None:
    """Take customers out of a sequence (exit reason "admin"); their pending message is skipped.

    Example: scrm sequences stop new_lead --customer 42
    """
    ended = in_store(settings_of(ctx), lambda session: end_enrolments(session, customer_ids, "admin", [name]))
    if not ended:
        raise click.ClickException(f"customer {', '.join(map(str, customer_ids))} is not in sequence {name}: "
                                   "nothing stopped")
    click.echo(f"{name}: stopped {ended} enrolment(s)")


@sequences_group.command("stats")
@click.argument("name", required=False)
@json_option
@click.pass_context
def stats(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Enrolments by version and outcome, and per step: sent, replied, converted, skipped, failed, pending (and
    what the pending wait for: quiet hours, the daily cap, no quota…).

    Example: scrm sequences stats new_lead
    """
    found = in_store(settings_of(ctx), lambda session: sequence_stats(session, [name] if name else None))
    if as_json:
        echo_json([one.to_data() for one in found])
        return
    if not found:
        click.echo("no sequences published yet (scrm sequences publish)")
    for one in found:
        _print_stats(one)


def _print_stats(stats: SequenceStats) -> None:
    versions = ", ".join(f"v{version} {count}" for version, count in sorted(stats.enrolled.items()))
    exits = ", ".join(f"{reason} {count}" for reason, count in stats.exited.most_common())
    rate = f" ({stats.converted / stats.total:.0%})" if stats.total else ""
    click.echo(f"{stats.name}: {stats.total} enrolled" + (f" ({versions})" if versions else "")
               + f"; active {stats.statuses['active']}, paused {stats.statuses['paused']}, completed "
               f"{stats.statuses['completed']}, exited {stats.statuses['exited']}" + (f" ({exits})" if exits else "")
               + f"; converted {stats.converted}{rate}")
    steps = stats.ordered_steps()
    if not steps:
        return
    waits = any(s.waiting for s in steps)  # the column appears once something is put off (quiet hours, no quota…)
    click.echo(table([[s.step or "(before any)", s.sent, s.replied, s.converted, sum(s.skipped.values()), s.failed,
                       s.pending, _reasons(s.skipped)] + ([_reasons(s.waiting)] if waits else []) for s in steps],
                     ["step", "sent", "replied", "converted", "skipped", "failed", "pending", "skipped because"]
                     + (["waiting for"] if waits else [])))
    top = max(max(s.sent, s.replied, s.converted) for s in steps) or 1
    width = max(len(s.step or "(before any)") for s in steps)
    for s in steps:
        for i, (label, value) in enumerate((("sent", s.sent), ("replied", s.replied), ("converted", s.converted))):
            head = (s.step or "(before any)") if i == 0 else ""
            click.echo(f"  {head:<{width}}  {label:<9} {bar(value, top)} {value}")


def _reasons(counts: Counter[str]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counts.most_common(3))


def bar(value: int, top: int) -> str:
    """A bar of █ blocks, `BAR` wide at `top`; any value above 0 shows at least a sliver."""
    cells = value / top * BAR
    whole = int(cells)
    half = value > 0 and (whole == 0 or cells - whole >= 0.5)
    return "█" * whole + ("▌" if half else "")


__all__ = ["bar", "condition_text", "loaded", "sequences_group", "timing"]
