"""Progress of long commands: plain lines off a terminal, rich's bar on one, nothing for --json.

The plain kind is driven with a fake clock; the commands run through Click's runner (not a
terminal: plain lines), with SCRM_PROGRESS=bar (the bar forced), and once in a real
pseudo-terminal, where the bar must be chosen on its own.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.main import cli
from admin_cli.progress import PlainProgress, chosen_kind, progress, span
from crm_store import social
from crm_store.migrate import alembic_config, pending
from crm_store.models import Customer, CustomerTag, Tag
from tests.admin_cli.test_growth_commands import Scrm as GrowthScrm
from tests.admin_cli.test_growth_commands import bumped
from tests.admin_cli.test_sequence_commands import Scrm, sequence_store
from tests.conftest import Backend

ESCAPES = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # anything but a newline: colours, \r, cursor moves


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines_of(stderr: str, label: str) -> list[str]:
    assert not ESCAPES.search(stderr), repr(stderr)
    return [line for line in stderr.splitlines() if line.startswith(f"{label}:")]


# ---------------------------------------------------------------- the plain kind, by itself


def test_plain_lines_at_each_tenth_at_phase_changes_and_every_few_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    shown = PlainProgress("enroll", 5000, "customers", clock=clock, every_s=5)
    for at, done in ((1, 400), (2, 1200), (4, 1300), (8, 1400)):  # 8%: no line; 24%; 2 s later; 6 s later
        clock.now = at
        shown.update(done)
    shown.phase("checking opt-outs")
    shown.phase("checking opt-outs")  # the same phase again is no news
    clock.now = 12
    shown.update(5000)  # 100%: the last line says so
    shown.stop(ok=True)
    assert capsys.readouterr().err.splitlines() == [
        "enroll: 1200/5000 customers (24%) 6.3 s left",
        "enroll: 1400/5000 customers (28%) 21 s left",
        "enroll: 1400/5000 customers (28%) 21 s left, checking opt-outs",
        "enroll: 5000/5000 customers done in 12 s",
    ]


def test_plain_says_where_it_stopped_and_what_it_does_without_a_total(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    shown = PlainProgress("nlu train", unit="epochs", clock=clock)
    shown.phase("starting Rasa")
    clock.now = 75
    shown.update(3, 100, phase="training DIETClassifier\x1b[0m")  # control characters never get through
    shown.stop(ok=False)
    assert capsys.readouterr().err.splitlines() == [
        "nlu train: 0.0 s elapsed, starting Rasa",
        "nlu train: 3/100 epochs (3%) 1:15 elapsed, training DIETClassifier",
        "nlu train: stopped at 3/100 epochs (3%) after 1:15",
    ]


def test_spans_read_as_seconds_then_minutes_then_hours() -> None:
    assert [span(s) for s in (3.14, 42.4, 125, 3725)] == ["3.1 s", "42 s", "2:05", "1:02:05"]


def test_the_kind_follows_scrm_progress_then_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCRM_PROGRESS", raising=False)
    assert chosen_kind() == "plain"  # pytest's stderr is no terminal
    assert chosen_kind(quiet=True) == "off"
    for wanted in ("bar", "plain", "off"):
        monkeypatch.setenv("SCRM_PROGRESS", wanted)
        assert chosen_kind() == wanted
    monkeypatch.setenv("SCRM_PROGRESS", "fancy")
    with pytest.raises(click.UsageError, match="SCRM_PROGRESS='fancy'"):
        chosen_kind()


def test_quiet_shows_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SCRM_PROGRESS", "plain")
    with progress("rescore", 10, quiet=True) as shown:
        shown.advance(10)
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------- commands


def many_customers(scrm: Scrm, count: int, tag: str) -> None:
    """`count` customers carrying `tag`, made in bulk (resolving each through a channel identity takes seconds)."""

    async def work(session: AsyncSession) -> None:
        customers = [Customer(display_name=f"客户{n}") for n in range(count)]
        session.add_all(customers)
        tag_id = await session.scalar(select(Tag.id).where(Tag.name == tag))
        await session.flush()
        session.add_all([CustomerTag(customer_id=customer.id, tag_id=tag_id, cause="test") for customer in customers])

    scrm.run(work)


@pytest.fixture
def dress_lead(backend: Backend, tmp_path: Path, clean_env: None) -> Scrm:
    """dress_lead published, and 300 customers tagged 连衣裙 (its segment below)."""
    run = sequence_store(backend, tmp_path)
    run("publish")
    many_customers(run, 300, "连衣裙")
    return run


def test_enrolling_a_segment_prints_progress_plain_as_a_bar_or_not_at_all(
        dress_lead: Scrm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("admin_cli.sequence_commands.BATCH", 50)
    result = dress_lead("enroll", "dress_lead", "--tag", "连衣裙")
    assert result.stdout == "dress_lead v1: enrolled 300, already enrolled 0\n"  # the result alone on stdout
    lines = lines_of(result.stderr, "enroll dress_lead")
    counts = [re.fullmatch(r"enroll dress_lead: (\d+)/300 customers \(\d+%\) \S+( s)? (left|elapsed)", line)
              for line in lines[:-1]]
    assert all(counts), lines
    assert {50, 100, 150, 200, 250} <= {int(found[1]) for found in counts if found}  # one a batch: each a tenth on
    assert re.fullmatch(r"enroll dress_lead: 300/300 customers done in \S+( s)?", lines[-1]), lines

    as_json = dress_lead("enroll", "dress_lead", "--tag", "连衣裙", "--json")
    assert as_json.stderr == "" and '"already_enrolled": 300' in as_json.stdout

    bar = dress_lead("enroll", "dress_lead", "--tag", "连衣裙", env={"SCRM_PROGRESS": "bar"})
    assert bar.stdout == "dress_lead v1: enrolled 0, already enrolled 300\n"
    assert "\x1b[" in bar.stderr and "━" in bar.stderr  # colours and the bar's line
    assert "enroll dress_lead" in bar.stderr and "300/300 customers (100%)" in bar.stderr


def test_migrate_names_each_revision_as_it_goes(tmp_path: Path, clean_env: None) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    plan = pending(alembic_config(url), url)
    result = CliRunner().invoke(cli, ["migrate"], env={"SCRM__STORE__URL": url})
    assert result.exit_code == 0, result.output
    lines, total = lines_of(result.stderr, "migrate"), len(plan)
    assert [line.split(", applying ")[1] for line in lines[:-1]] == plan  # "0004 handoffs: reps, teams, handoffs"
    assert lines[0].startswith(f"migrate: 0/{total} revisions (0%)")
    assert re.fullmatch(rf"migrate: {total}/{total} revisions done in \S+( s)?", lines[-1])
    again = CliRunner().invoke(cli, ["migrate"], env={"SCRM__STORE__URL": url})
    assert lines_of(again.stderr, "migrate")[-1].startswith("migrate: 0 revisions done in")


def test_rescore_in_batches_gives_the_scores_of_one_update(
        backend: Backend, clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    scrm = GrowthScrm(backend.store_url)
    ids = scrm.customers("Ann", "Bob", "Cy", "Dee", "Eve")
    bumped(scrm, {customer_id: {"friends": n + 1} for n, customer_id in enumerate(ids)})
    monkeypatch.setattr(social, "RESCORE_BATCH", 2)
    weights = {"SCRM__GROWTH__SOCIAL_WEIGHTS__FRIENDS": "10"}
    result = scrm("referrals", "rescore", env=weights)
    assert result.stdout.startswith("rescored 5 customer(s)")
    lines = lines_of(result.stderr, "rescore")
    assert lines[:2] == [line for line in lines if "(40%)" in line or "(80%)" in line]  # batches of 2
    assert re.fullmatch(r"rescore: 5/5 scores done in \S+( s)?", lines[-1])
    assert [r["score"] for r in scrm.json("referrals", "leaderboard")] == [50.0, 40.0, 30.0, 20.0, 10.0]


FAKE_RASA = """\
#!{python}
'''Writes what `rasa train nlu` writes (colours, tqdm's carriage returns), then the model file.'''
import pathlib, sys
args = sys.argv[1:]
out, name = args[args.index("--out") + 1], args[args.index("--fixed-model-name") + 1]
hooks = "2026-12-03 07:39:44 INFO     rasa.engine.training.hooks  - "
for component in ("JiebaTokenizer", "CountVectorsFeaturizer", "DIETClassifier"):
    print(hooks + f"Starting to train component '{{component}}'.", file=sys.stderr, flush=True)
bars = [f"Epochs: {{n * 10:3d}}%|#         | {{n}}/10 [00:0{{n}}<00:10, 1.00s/it, i_acc=0.{{n}}]" for n in range(11)]
sys.stderr.write("\\x1b[0m" + "\\r".join(bars) + "\\n")
print(hooks + "Finished training component 'DIETClassifier'.", file=sys.stderr)
pathlib.Path(out, name + ".tar.gz").write_bytes(b"model")
print(f"\\x1b[92mYour Rasa model is trained and saved at '{{out}}/{{name}}.tar.gz'.\\x1b[0m")
"""


def test_nlu_train_shows_rasa_phases_and_epochs(tmp_path: Path, clean_env: None) -> None:
    rasa = tmp_path / "rasa-venv" / "bin" / "rasa"
    rasa.parent.mkdir(parents=True)
    rasa.write_text(FAKE_RASA.format(python=sys.executable))
    rasa.chmod(0o755)
    env = {"SCRM__NLU__MODE": "rules", "SCRM__REDIS__URL": "", "SCRM__NLU__RASA_VENV": str(rasa.parent.parent),
           "SCRM__NLU__MODEL_DIR": str(tmp_path / "models")}
    result = CliRunner().invoke(cli, ["nlu", "train"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("trained: ") and (tmp_path / "models" / "train.log").exists()
    lines = [re.sub(r"\d+\.\d s", "T", line) for line in lines_of(result.stderr, "nlu train")]
    assert lines[:4] == ["nlu train: T elapsed, starting Rasa", "nlu train: T elapsed, training JiebaTokenizer",
                         "nlu train: T elapsed, training CountVectorsFeaturizer",
                         "nlu train: T elapsed, training DIETClassifier"]
    assert [line.split(" epochs")[0] for line in lines[4:-2]] == [f"nlu train: {n}/10" for n in range(1, 10)]
    assert lines[-2:] == ["nlu train: 10/10 epochs (100%) T elapsed, model saved", "nlu train: 10/10 epochs done in T"]
    quiet = CliRunner().invoke(cli, ["nlu", "train", "--force", "--json"], env=env)
    assert quiet.exit_code == 0 and "nlu train:" not in quiet.stderr


def test_a_real_terminal_gets_the_bar_without_being_asked(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SCRM")}
    env |= {"SCRM__STORE__URL": f"sqlite+aiosqlite:///{tmp_path / 'tty.db'}", "TERM": "xterm-256color"}
    terminal, child_end = pty.openpty()
    child = subprocess.Popen([sys.executable, "-c", "from admin_cli.main import cli; cli()", "migrate"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=child_end, env=env)
    os.close(child_end)
    seen = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: the child's end of the terminal is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(terminal)
    stdout, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and stdout == b"database is up to date\n"
    text = seen.decode("utf-8", errors="replace")
    assert "\x1b[" in text and "━" in text and "revisions (100%)" in text, text
