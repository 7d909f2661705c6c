"""`scrm nlu ...`: check, train, test and try the intent model.

Each command is a thin layer over nlu/: the same code the bot runs. The model is the one
for the project and the FAQ of the flow directory (faq.yaml), as `scrm serve` trains it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import click

from admin_cli.progress import Progress, progress
from core.shared_state import MemoryState, open_shared_state
from flows.errors import FlowLoadError
from flows.faq import read_faq
from nlu.client import NluClient
from nlu.evaluate import Report, cross_validate, evaluate_held_out, format_report
from nlu.faq_training import FaqRows
from nlu.rasa_runtime import RasaUnavailable, TrainingFailed, ensure_model, model_file
from nlu.server import ManagedRasa, find_running
from nlu.settings import NluSettings
from nlu.training_data import TrainingDataError, load_project
from nlu.training_progress import TrainingOutput


def _settings(ctx: click.Context) -> Any:
    return ctx.obj["settings"]()


def _note(message: str) -> None:
    click.echo(f"nlu: {message}", err=True)


def faq_rows(settings: Any) -> FaqRows:
    """The FAQ rows of the flow directory (what the model trains on); a broken faq.yaml stops the command."""
    try:
        return read_faq(Path(settings.flows.directory), settings.lifecycle).training_rows()
    except FlowLoadError as exc:
        raise click.ClickException(f"faq.yaml rejected (scrm flows validate lists every error):\n{exc}") from None


@asynccontextmanager
async def rasa_for_call(settings: NluSettings, faq: FaqRows = ()) -> AsyncIterator[tuple[str | None, str | None]]:
    """(url, token) of a Rasa to use now: external, already running, or started for this command."""
    if settings.mode == "rules":
        yield None, None
        return
    if settings.mode == "external":
        yield settings.rasa_url, settings.auth_token.get_secret_value()
        return
    running = await find_running(settings)
    if running is not None:
        yield running
        return
    _note("no Rasa server running: starting one for this command (training first if the data changed)")
    server = ManagedRasa(settings, faq=faq)
    await server.start()
    try:
        if not await server.wait_ready(settings.start_timeout_s):
            _note(f"Rasa did not start ({server.state}): {server.last_error}")
            yield None, None
        else:
            yield server.url, server.token
    finally:
        await server.stop()


@click.group()
def nlu_group() -> None:
    """Intent detection: Rasa model, keyword rules, accuracy."""


@nlu_group.command("check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check the training and test data; print file:line: reason for every problem.

    Example: scrm nlu check
    """
    project = _settings(ctx).nlu.project_path()
    try:
        data = load_project(project)
    except TrainingDataError as exc:
        raise click.ClickException(f"training data rejected:\n{exc}") from None
    click.echo(f"{project}: {len(data.train)} training and {len(data.test)} test examples, "
               f"{len(data.intents)} intents, {len(data.entities)} entities: OK")


@nlu_group.command("train")
@click.option("--force", is_flag=True, help="Train even if a model for this data already exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def train(ctx: click.Context, force: bool, as_json: bool) -> None:
    """Train the Rasa model when the config or data changed (fingerprinted); reuse it otherwise.

    Example: scrm nlu train
    """
    settings: NluSettings = _settings(ctx).nlu
    faq = faq_rows(_settings(ctx))
    training = force or not model_file(settings, faq=faq).exists()
    if training:
        _note("training (about 2 minutes on 2 cores)...")
    try:
        with progress("nlu train", unit="epochs", quiet=as_json or not training) as shown:
            shown.phase("starting Rasa")
            path, trained = asyncio.run(ensure_model(settings, force=force, on_output=shown_in(shown), faq=faq))
    except (TrainingDataError, TrainingFailed, RasaUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"model": str(path), "trained": trained}))
    else:
        click.echo(f"{'trained' if trained else 'unchanged, reused'}: {path}")


def shown_in(shown: Progress) -> Callable[[str], None]:
    """Rasa's output lines as progress: the component in training, then DIET's epochs."""
    output = TrainingOutput()

    def on_output(line: str) -> None:
        step = output.read(line)
        if step is not None:
            shown.update(shown.done if step.done is None else step.done, step.total, phase=step.phase)

    return on_output


@nlu_group.command("test")
@click.option("--folds", default=5, show_default=True, help="Cross-validation folds (0: skip; it trains K models).")
@click.option("--rules", "rules_only", is_flag=True, help="Score the keyword rules alone (no Rasa).")
@click.option("--fail-under", type=float, default=0.0, help="Exit 1 if held-out accuracy or macro-F1 is lower.")
@click.option("--max-harmful", type=int, default=None, help="Exit 1 if the held-out set has more harmful "
              "predictions (a costly intent such as unsubscribe read into another message).")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@click.pass_context
def test(ctx: click.Context, folds: int, rules_only: bool, fail_under: float, max_harmful: int | None,
         as_json: bool) -> None:
    """Accuracy, per-intent precision/recall/F1, the confusion table and its harmful cells: held-out test
    set, then cross-validation.

    Example: scrm nlu test --folds 3 --fail-under 0.9 --max-harmful 0
    """
    settings: NluSettings = _settings(ctx).nlu
    if rules_only:
        settings = settings.model_copy(update={"mode": "rules"})
    try:
        reports = asyncio.run(_test(settings, 0 if rules_only else folds, faq_rows(_settings(ctx))))
    except (TrainingDataError, TrainingFailed, RasaUnavailable, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in reports], ensure_ascii=False, indent=2))
    else:
        click.echo("\n\n".join(format_report(r) for r in reports))
    held_out = reports[0]
    if min(held_out.accuracy, held_out.macro_f1) < fail_under:
        raise click.ClickException(f"held-out accuracy {held_out.accuracy:.3f} / macro-F1 "
                                   f"{held_out.macro_f1:.3f} is below {fail_under}")
    if max_harmful is not None and held_out.harmful_total > max_harmful:
        raise click.ClickException(f"{held_out.harmful_total} harmful predictions on the held-out set "
                                   f"(more than {max_harmful})")


async def _test(settings: NluSettings, folds: int, faq: FaqRows = ()) -> list[Report]:
    if settings.mode == "managed":
        await ensure_model(settings, faq=faq)
    async with rasa_for_call(settings, faq) as (url, token):
        if settings.mode != "rules" and url is None:
            raise RuntimeError("no Rasa server to evaluate: see the message above")
        reports = [await evaluate_held_out(settings, url, token)]
    if folds >= 2:
        _note(f"{folds}-fold cross-validation: training {folds} models...")
        reports.append(await cross_validate(settings, folds))
    return reports


@nlu_group.command("parse")
@click.argument("texts", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: text, intent, confidence, "
              "entities, source.")
@click.option("--no-cache", is_flag=True, help="Ask Rasa even for texts parsed before.")
@click.pass_context
def parse(ctx: click.Context, texts: tuple[str, ...], as_json: bool, no_cache: bool) -> None:
    """Parse texts given as arguments, or one per line on standard input.

    Example: scrm nlu parse 在吗 "拼团还差几个人"   or   cat msgs.txt | scrm nlu parse --json
    """
    settings = _settings(ctx)
    lines = list(texts) or [line.rstrip("\n") for line in sys.stdin]
    asyncio.run(_parse(settings.nlu, settings.redis.url, lines, as_json, no_cache, faq_rows(settings)))


async def _parse(settings: NluSettings, redis_url: str, lines: list[str], as_json: bool, no_cache: bool,
                 faq: FaqRows = ()) -> None:
    state = MemoryState() if no_cache or not redis_url else open_shared_state(redis_url)
    async with rasa_for_call(settings, faq) as (url, token):
        client = NluClient(settings, state, url, token, faq=faq)
        await client.start()
        try:
            if url and not await client.wait_ready(10):
                _note(f"Rasa at {url} does not answer")
            if client.health()["status"] != "ok" or settings.mode == "rules":
                _note(f"answering with keyword rules, not the Rasa model ({client.health()['reason']})")
            for text in lines:
                intent = await client.parse(text)
                if as_json:
                    click.echo(json.dumps({"text": text, **intent.to_dict()}, ensure_ascii=False))
                else:
                    entities = " ".join(f"{e.name}={e.value}" for e in intent.entities)
                    click.echo(f"{intent.name:<22} {intent.confidence:.2f} {intent.source:<6} {text} {entities}".rstrip())
        finally:
            await client.close()
            await state.close()
