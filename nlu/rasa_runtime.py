"""Running the Rasa command line from its own virtualenv: locate it, train a model.

Rasa 3.6 needs Python 3.10 and old libraries, so it is never imported here: it
runs as a child process from .venv-rasa (created by scripts/setup_rasa.sh).
Models are named after the fingerprint of the project (config, domain, data,
dictionary) and of the FAQ entries trained with it (nlu/faq_training.py), so an
unchanged project and FAQ reuse their model and training is skipped. With an FAQ the
model is trained from a build directory under the model dir; without, from the project.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from nlu.faq_training import FaqRows, build_project, faq_fingerprint_part
from nlu.settings import REPO_ROOT, NluSettings
from nlu.training_data import fingerprint, load_project

log = logging.getLogger("scrm.nlu.rasa")

MODEL_PREFIX = "nlu-"
KEEP_MODELS = 3
BUILD_DIR = "build"  # under the model dir: the generated training projects (intents + FAQ)
REQUIREMENTS = REPO_ROOT / "nlu" / "requirements-rasa.txt"
FOLLOW_EVERY_S = 0.5  # how often the training log is read for `on_output`


class RasaUnavailable(Exception):
    """The Rasa virtualenv is missing or broken; scripts/setup_rasa.sh creates it."""


class TrainingFailed(Exception):
    """`rasa train nlu` exited with an error; the message holds the end of its log."""


def rasa_executable(settings: NluSettings) -> Path:
    rasa = settings.rasa_venv_path() / "bin" / "rasa"
    if not os.access(rasa, os.X_OK):
        raise RasaUnavailable(f"no Rasa at {rasa}: run scripts/setup_rasa.sh (or `make rasa`)")
    return rasa


def rasa_env(settings: NluSettings) -> dict[str, str]:
    """The child's environment: no telemetry, no network, quiet TensorFlow.

    Rasa's training cache (reused components, a few hundred MB) goes next to the
    models instead of into the project folder.
    """
    env = dict(os.environ)
    env.update(
        RASA_CACHE_DIRECTORY=str(settings.model_path() / ".rasa-cache"),
        RASA_TELEMETRY_ENABLED="false",
        TF_CPP_MIN_LOG_LEVEL="2",
        SQLALCHEMY_SILENCE_UBER_WARNING="1",
        PYTHONWARNINGS="ignore",
        TQDM_DISABLE="1",
    )
    env.pop("PYTHONPATH", None)  # the app's packages must not shadow Rasa's
    return env


def project_fingerprint(settings: NluSettings, faq: FaqRows = ()) -> str:
    """Changes when anything that shapes the model changes: project, FAQ questions, Rasa version.

    Without an FAQ it is the project's alone, so the model of a project with no FAQ is unchanged.
    """
    extra = REQUIREMENTS.read_text(encoding="utf-8") if REQUIREMENTS.exists() else ""
    return fingerprint(settings.project_path(), extra + faq_fingerprint_part(faq))


def model_file(settings: NluSettings, fp: str | None = None, faq: FaqRows = ()) -> Path:
    return settings.model_path() / f"{MODEL_PREFIX}{fp or project_fingerprint(settings, faq)}.tar.gz"


async def ensure_model(settings: NluSettings, force: bool = False,
                       on_output: Callable[[str], None] | None = None, faq: FaqRows = ()) -> tuple[Path, bool]:
    """The model for the current project and FAQ, trained only when missing; returns (path, trained).

    `faq` holds the entries' rows (FaqBook.training_rows()). `on_output` gets each line Rasa
    writes while it trains (for progress), a moment after it is written.
    """
    load_project(settings.project_path())  # file, line and reason before TensorFlow starts
    target = model_file(settings, faq=faq)
    if target.exists() and not force:
        log.info("nlu.train.skipped model=%s (fingerprint unchanged)", target.name)
        return target, False
    project = settings.project_path()
    if faq:  # checked and copied off the event loop: a few hundred small files
        build = settings.model_path() / BUILD_DIR / target.name.removesuffix(".tar.gz")
        project = await asyncio.to_thread(build_project, settings.project_path(), build, faq)
    await _train(settings, target, on_output, project)
    _prune(settings.model_path(), keep=target)
    return target, True


async def _train(settings: NluSettings, target: Path, on_output: Callable[[str], None] | None = None,
                 project: Path | None = None) -> None:
    rasa = rasa_executable(settings)
    project = project or settings.project_path()
    # A build (with an FAQ) has responses in its domain, which `rasa train nlu` reads only when told.
    domain = ["--domain", "domain.yml"] if project != settings.project_path() else []
    target.parent.mkdir(parents=True, exist_ok=True)
    log_path = target.parent / "train.log"
    started = time.monotonic()
    log.info("nlu.train.started model=%s log=%s", target.name, log_path)
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(rasa), "train", "nlu", "--config", "config.yml", "--nlu", "data", *domain,
            "--out", str(target.parent), "--fixed-model-name", target.name.removesuffix(".tar.gz"),
            cwd=project, env=rasa_env(settings), stdout=out, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
        exited = asyncio.Event()
        follower = asyncio.create_task(_follow(log_path, on_output, exited)) if on_output else None
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
        finally:
            exited.set()
            if follower is not None:
                await follower  # the lines written last, up to the end (at once: the child has exited)
    if code != 0 or not target.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise TrainingFailed(f"rasa train nlu exited with {code}; end of {log_path}:\n{tail}")
    log.info("nlu.train.done model=%s seconds=%.1f", target.name, time.monotonic() - started)


async def _follow(log_path: Path, on_output: Callable[[str], None], exited: asyncio.Event) -> None:
    """Hand each line of the growing log to `on_output`, until the child has exited and all is read.

    The child keeps writing to the file (the log stays whole whoever reads it); tqdm redraws
    its bar after a carriage return, so both \r and \n end a line.
    """
    decoder, pending = codecs.getincrementaldecoder("utf-8")(errors="replace"), ""
    with log_path.open("rb") as log_file:
        while True:
            last = exited.is_set()  # read once more after the exit: the child may have written to the end
            *lines, pending = re.split(r"[\r\n]", pending + decoder.decode(log_file.read(), final=last))
            for line in lines + ([pending] if last else []):
                if line.strip():
                    on_output(line)
            if last:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), FOLLOW_EVERY_S)


def _prune(model_dir: Path, keep: Path) -> None:
    """Keep the newest few models: enough to roll back, not enough to fill the disk.

    The build directory of a model goes with it (a training in progress has no model yet: its stays).
    """
    models = sorted(model_dir.glob(f"{MODEL_PREFIX}*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [m for m in models if m != keep][KEEP_MODELS - 1:]:
        old.unlink(missing_ok=True)
        shutil.rmtree(model_dir / BUILD_DIR / old.name.removesuffix(".tar.gz"), ignore_errors=True)
