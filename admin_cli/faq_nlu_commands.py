"""`scrm faq publish | ask | test`: the FAQ commands that need the NLU, added to the `faq` group.

publish  validate the flow directory (faq.yaml with the flows), check the FAQ against the intents'
         training data, train only when the model's fingerprint changed, publish the release, and
         swap the new model into the running managed Rasa (blue/green: it never stops answering).
         Anything wrong: every error printed, exit 1, nothing published, the old model serving.
ask      what the bot would answer: the FAQ entry, its confidence and its answer.
test     held-out accuracy on nlu/project/test/faq_test.yml and how many off-topic messages
         the FAQ would answer (goal 0).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option
from admin_cli.faq_commands import dir_option, faq, faq_of
from admin_cli.flow_commands import checked, working
from admin_cli.main import echo_json, settings_of
from admin_cli.nlu_commands import rasa_for_call, shown_in
from admin_cli.progress import progress
from bot.settings import Settings
from core.shared_state import MemoryState
from flows.faq_model import FaqBook
from flows.model import FlowSet
from flows.publishing import publish_flows
from flows.releases import NothingToPublish, Published
from nlu.client import NluClient
from nlu.faq_evaluate import FaqReport, answered_entry, evaluate_faq, format_faq_report
from nlu.faq_training import FaqRows, check_faq
from nlu.rasa_runtime import RasaUnavailable, TrainingFailed, ensure_model, model_file
from nlu.server import find_running, rasa_status
from nlu.settings import NluSettings
from nlu.swap import SwapFailed, request_swap
from nlu.training_data import TrainingDataError, load_project

# ---------------------------------------------------------------- publish


@faq.command("publish")
@click.option("--note", default="", help="Why: shown by `scrm flows history`.")
@click.option("--no-swap", is_flag=True, help="Train and publish, but leave the running Rasa on its model.")
@dir_option
@json_option
@click.pass_context
def publish_command(ctx: click.Context, note: str, no_swap: bool, directory: Path | None, as_json: bool) -> None:
    """Validate, train the model if the FAQ or NLU data changed, publish, and swap the model in without downtime.

    The whole flow directory is validated (faq.yaml with the flows) and the FAQ is checked against
    the intents' training data first: on any error every one is printed, the exit status is 1,
    nothing is published and the running model keeps serving. Training is skipped when neither
    the FAQ's questions nor the NLU data changed (rewording an answer needs none).

    Example: scrm faq publish --note "双11 发货时效"
    """
    settings = settings_of(ctx)
    began = time.monotonic()
    sources, origins = working(settings, directory)
    flows = checked(sources, settings, origins)
    rows = flows.faq.training_rows()
    _check_against_intents(rows, settings.nlu)
    timings: dict[str, Any] = {"validate_s": round(time.monotonic() - began, 2)}
    model = _train(settings.nlu, rows, timings, quiet=as_json) if settings.nlu.mode != "rules" else None
    outcome = in_store(settings, lambda session: _publish(session, flows, note))
    swap = _swap(settings.nlu, model, timings) if model is not None and not no_swap else "not asked"
    _report(flows.faq, model, outcome, swap, timings, as_json)


def _check_against_intents(rows: FaqRows, nlu: NluSettings) -> None:
    try:
        check_faq(rows, load_project(nlu.project_path()))
    except TrainingDataError as exc:
        for problem in exc.problems:
            click.echo(str(problem))
        raise click.ClickException(f"{len(exc.problems)} problem(s) between the FAQ and the NLU data: "
                                   "nothing was published") from None


def _train(nlu: NluSettings, rows: FaqRows, timings: dict[str, Any], quiet: bool) -> Path:
    """The model for the intents and this FAQ, trained only if missing (with the progress nlu train shows)."""
    training = not model_file(nlu, faq=rows).exists()
    if training:
        click.echo("faq: training the model with the FAQ (a few minutes on 2 cores)...", err=True)
    began = time.monotonic()
    try:
        with progress("faq train", unit="epochs", quiet=quiet or not training) as shown:
            shown.phase("starting Rasa")
            path, trained = asyncio.run(ensure_model(nlu, on_output=shown_in(shown), faq=rows))
    except (TrainingDataError, TrainingFailed, RasaUnavailable) as exc:
        raise click.ClickException(f"{exc}\nnothing was published") from None
    timings["train_s"] = round(time.monotonic() - began, 1) if trained else None
    return path


async def _publish(session: AsyncSession, flows: FlowSet, note: str) -> Published | str:
    try:
        return await publish_flows(session, flows, note=note, by=_by())
    except NothingToPublish as exc:
        return str(exc)


def _by() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "admin"


def _swap(nlu: NluSettings, model: Path, timings: dict[str, Any]) -> str:
    """Ask the managed Rasa that `scrm serve` runs to serve `model`; what happened, in words."""
    if nlu.mode == "external":
        return f"external Rasa: load {model} into each server (one at a time, see nlu/swap.py)"
    serving = asyncio.run(_served_model(nlu))
    if serving is None:
        return "no managed Rasa running: `scrm serve` starts with the new model"
    if serving == model.name:
        return f"already serving {model.name}"
    try:
        swapped = asyncio.run(request_swap(nlu, model))
    except SwapFailed as exc:
        raise click.ClickException(f"published, but the model was not swapped in ({exc}); Rasa keeps serving "
                                   f"{serving}: retry with scrm faq publish, or restart scrm serve") from None
    timings["swap_s"] = round(swapped.seconds, 1)
    return f"swapped {serving} -> {model.name}"


async def _served_model(nlu: NluSettings) -> str | None:
    running = await find_running(nlu)
    if running is None:
        return None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        return await rasa_status(session, *running)


def _report(book: FaqBook, model: Path | None, outcome: Published | str, swap: str, timings: dict[str, Any],
            as_json: bool) -> None:
    release = outcome.release_id if isinstance(outcome, Published) else None
    if as_json:
        echo_json({"release": release, "nothing_to_publish": None if release else outcome,
                   "entries": len(book.entries), "model": model.name if model else None,
                   "trained": timings.get("train_s") is not None, "swap": swap, **timings})
        return
    click.echo(f"published release {release}" if release else f"nothing to publish: {outcome}")
    click.echo(f"  FAQ: {len(book.entries)} entries")
    if model is not None:
        trained = timings.get("train_s")
        click.echo(f"  model: {model.name} ({f'trained in {trained} s' if trained is not None else 'unchanged, reused'})")
    click.echo(f"  Rasa: {swap}" + (f" in {timings['swap_s']} s" if "swap_s" in timings else ""))
    click.echo(f"  validated in {timings['validate_s']} s")


# ---------------------------------------------------------------- ask


@faq.command("ask")
@click.argument("text", required=False)
@dir_option
@click.option("--json", "as_json", is_flag=True, help='One object a line: {"text", "faq" (id or null), '
              '"confidence", "answer", "source"}.')
@click.pass_context
def ask_command(ctx: click.Context, text: str | None, directory: Path | None, as_json: bool) -> None:
    """What the bot answers from the FAQ: TEXT, or one question per line on standard input.

    Each line: the entry answered (or "-"), the selector's confidence, where the answer came
    from (rasa; rules while Rasa is down) and the answer. An entry is answered when the model
    says the message is an FAQ question (or one of flows.faq_answers_intents) and the entry has
    confidence >= flows.faq_answer_at.

    Example: scrm faq ask 几天能到   or   printf '几天能到\\n能开发票吗\\n' | scrm faq ask --json
    """
    settings = settings_of(ctx)
    book = faq_of(settings, directory)
    lines = [text] if text is not None else [line.rstrip("\n") for line in sys.stdin if line.strip()]
    asyncio.run(_ask(settings, book, lines, as_json))


async def _ask(settings: Settings, book: FaqBook, lines: list[str], as_json: bool) -> None:
    rows, answer_at = book.training_rows(), settings.flows.faq_answer_at
    async with rasa_for_call(settings.nlu, rows) as (url, token):
        client = NluClient(settings.nlu, MemoryState(), url, token, faq=rows,
                           faq_titles={entry.id: entry.title for entry in book.entries.values()})
        await client.start()
        try:
            if url and not await client.wait_ready(10):
                click.echo(f"faq: Rasa at {url} does not answer: keyword rules answer", err=True)
            for line in lines:
                intent = await client.parse(line)
                entry = answered_entry(intent, answer_at, settings.flows.faq_answers_intents)
                found = book.get(entry) if entry else None
                row = {"text": line, "faq": entry, "confidence": round(intent.faq.confidence, 4) if intent.faq else None,
                       "answer": found.answer if found else None, "source": intent.source}
                if as_json:
                    click.echo(json.dumps(row, ensure_ascii=False))
                else:
                    confidence = f"{row['confidence']:.2f}" if row["confidence"] is not None else "-"
                    click.echo(f"{entry or '-':<20} {confidence} {intent.source:<6} {line}"
                               + (f"\n  {found.answer.replace(chr(10), chr(10) + '  ')}" if found else ""))
        finally:
            await client.close()


# ---------------------------------------------------------------- test


@faq.command("test")
@click.option("--fail-under", type=float, default=0.0, help="Exit 1 if the held-out retrieval accuracy is lower.")
@click.option("--fail-answered-under", type=float, default=0.0,
              help="Exit 1 if the held-out answered accuracy (answered at once, not offered) is lower.")
@click.option("--max-offtopic", type=int, default=None, help="Exit 1 if the FAQ answers more off-topic messages.")
@click.option("--rules", "rules_only", is_flag=True, help="Score the keyword rules alone (as when Rasa is down).")
@dir_option
@json_option
@click.pass_context
def test_command(ctx: click.Context, fail_under: float, fail_answered_under: float, max_offtopic: int | None,
                 rules_only: bool, directory: Path | None, as_json: bool) -> None:
    """Held-out FAQ accuracy (nlu/project/test/faq_test.yml, never trained on) and off-topic messages answered.

    Retrieval accuracy: the selector's first pick is the right entry. Answered accuracy: the bot
    would answer with it (the message is read as an FAQ question, at >= flows.faq_answer_at).
    Off-topic: out_of_scope messages of the intents' held-out set and faq_test.yml's `offtopic:`.

    Example: scrm faq test --fail-under 0.9 --max-offtopic 0
    """
    settings = settings_of(ctx)
    book = faq_of(settings, directory)
    nlu = settings.nlu.model_copy(update={"mode": "rules"}) if rules_only else settings.nlu
    try:
        report = asyncio.run(_test(nlu, book.training_rows(), settings.flows.faq_answer_at,
                                   settings.flows.faq_answers_intents))
    except (TrainingDataError, TrainingFailed, RasaUnavailable, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) if as_json else format_faq_report(report))
    if report.retrieval_accuracy < fail_under:
        raise click.ClickException(f"held-out retrieval accuracy {report.retrieval_accuracy:.3f} is below {fail_under}")
    if report.answered_accuracy < fail_answered_under:
        raise click.ClickException(f"held-out answered accuracy {report.answered_accuracy:.3f} is below "
                                   f"{fail_answered_under}")
    if max_offtopic is not None and len(report.offtopic_answered) > max_offtopic:
        raise click.ClickException(f"{len(report.offtopic_answered)} off-topic messages answered by an FAQ "
                                   f"(more than {max_offtopic})")


async def _test(nlu: NluSettings, rows: FaqRows, answer_at: float, answer_intents: tuple[str, ...]) -> FaqReport:
    if nlu.mode == "managed":
        await ensure_model(nlu, faq=rows)
    async with rasa_for_call(nlu, rows) as (url, token):
        if nlu.mode != "rules" and url is None:
            raise RuntimeError("no Rasa server to evaluate: see the message above")
        if nlu.mode == "managed" and url is not None:
            await _serving_this_faq(nlu, rows, url, token or "")
        return await evaluate_faq(nlu, url, token, rows, answer_at, answer_intents=answer_intents)


async def _serving_this_faq(nlu: NluSettings, rows: FaqRows, url: str, token: str) -> None:
    """A running server with another model would score that model: say so instead."""
    expected = model_file(nlu, faq=rows).name
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        served = await rasa_status(session, url, token)
    if served != expected:
        raise RuntimeError(f"the running Rasa at {url} serves {served}, not the model of this FAQ and NLU data "
                           f"({expected}): publish it first (scrm faq publish)")
