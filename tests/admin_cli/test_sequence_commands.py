"""`scrm sequences ...` through Click's runner on SQLite and PostgreSQL, with sequence files in tmp_path."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli import sequence_commands
from admin_cli.main import cli
from bot.settings import load_settings
from crm_store.customers import Profile, resolve_customer
from crm_store.nurture_models import Enrolment, NurtureSend, SequenceState, SequenceVersion
from crm_store.tags import add_tags, sync_catalog
from flows.loader import load_sources
from flows.sequences import load_sequences
from tests.admin_cli.harness import ScrmRunner
from tests.conftest import Backend

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
VALID = ROOT / "tests" / "flows" / "fixtures" / "valid"  # tags: 高意向 低意向 连衣裙 衬衫
CATALOG = {"意向": ("高意向", "低意向"), "偏好": ("连衣裙", "衬衫")}
DRESS = """\
sequence: dress_lead
description: 连衣裙意向培育
enroll:
  - {stage: 意向}
  - {tag: 连衣裙}
exit: [replied, unsubscribed, {tag: 衬衫}]
steps:
  - {id: welcome, say: "{{ customer.name }}，欢迎～"}
  - {id: tips, after: 1d, say: 连衣裙搭配小贴士, when: {tag: 连衣裙}}
  - {id: coupon, at: "day 3 10:00", say: 送您一张券}
  - {id: check_in, after_previous: 4d, say: 最近怎么样？, when: {stage: interested, social_min: 10}}
"""
BAD = {  # what is wrong -> (the file, its line, what the error says)
    "negative delay": ("steps:\n  - {id: a, say: hi}\n  - {id: b, after: -1d, say: x}\n", 5,
                       "step b: after: a delay may not be negative"),
    "after a terminal exit": ("steps:\n  - {id: a, say: hi}\n  - {id: done, exit: true}\n  - {id: late, say: x}\n",
                              6, "step late: comes after the terminal exit at step done"),
    "unknown tag": ("steps:\n  - {id: a, say: hi, when: {tag: 裙子}}\n", 4, "'裙子' is not in the tag catalog"),
    "statement": ('steps:\n  - {id: a, say: "{% if vip %}hi{% endif %}"}\n', 4, "is not allowed"),
    "secret field": ('steps:\n  - {id: a, say: "{{ secrets }}"}\n', 4, "unknown field(s) secrets"),
}


class Scrm(ScrmRunner):
    """`scrm sequences` against one store and one flow directory, and that store for making data."""

    command = ("sequences",)
    failure_exit = -1

    def __init__(self, store_url: str, directory: Path) -> None:
        super().__init__(store_url, SCRM__FLOWS__DIRECTORY=str(directory))
        self.directory = directory

    def write(self, name: str, text: str) -> Path:
        path = self.directory / "sequences" / name
        path.write_text(text, encoding="utf-8")
        return path

    def customer(self, name: str, tags: tuple[str, ...] = (), opted_out: bool = False) -> int:
        async def work(session: AsyncSession) -> int:
            customer = await resolve_customer(session, "wecom", f"wm_{name}", Profile(display_name=name))
            customer.marketing_opt_out = opted_out
            await add_tags(session, customer, tags, "test")
            await session.flush()
            return customer.id

        return self.run(work)


    def rows(self) -> tuple[int, ...]:
        return tuple(self.count(model) for model in (SequenceVersion, SequenceState, Enrolment, NurtureSend))


@pytest.fixture
def scrm(backend: Backend, tmp_path: Path, clean_env: None) -> Scrm:
    return sequence_store(backend, tmp_path)


def sequence_store(backend: Backend, tmp_path: Path) -> Scrm:
    """A flow directory with dress_lead.yaml (not yet published) and the tag catalog in the store."""
    shutil.copytree(VALID, tmp_path / "flows")
    (tmp_path / "flows" / "sequences").mkdir()
    run = Scrm(backend.store_url, tmp_path / "flows")
    run.write("dress_lead.yaml", DRESS)
    run.run(lambda session: sync_catalog(session, CATALOG))
    return run


@pytest.fixture
def published(scrm: Scrm) -> Scrm:
    scrm("publish")
    return scrm


# ---------------------------------------------------------------- validate and publish


def test_validate_counts_the_sequences(scrm: Scrm) -> None:
    assert scrm("validate").stdout == "ok: 1 sequences\n"


@pytest.mark.parametrize("problem", list(BAD))
def test_validate_names_file_line_and_step_and_exits_1(scrm: Scrm, problem: str) -> None:
    steps, line, message = BAD[problem]
    path = scrm.write("bad.yaml", f"sequence: bad\nexit: [replied]\n{steps}")
    for args in ((), (str(path),)):
        result = scrm("validate", *args, ok=False)
        assert result.exit_code == 1 and "error(s) in the sequences" in result.output
        assert any(row.startswith(f"{path}:{line}: flow sequence bad, ") and message in row
                   for row in result.stdout.splitlines()), result.stdout


def test_validate_a_missing_path(scrm: Scrm) -> None:
    result = scrm("validate", str(scrm.directory / "nope.yaml"), ok=False)
    assert result.exit_code == 1 and "no such file or directory" in result.output


def test_publish_versions_what_changed_and_retires_removed_files(scrm: Scrm) -> None:
    assert scrm("publish").stdout == "dress_lead: v1 (changed)\n"
    scrm.write("dress_lead.yaml", DRESS.replace("送您一张券", "送您一张 20 元券"))
    scrm.write("other.yaml", "sequence: other\nsteps:\n  - {id: hi, say: 你好}\n")
    assert scrm("publish").stdout == "dress_lead: v2 (changed)\nother: v1 (changed)\n"
    (scrm.directory / "sequences" / "other.yaml").unlink()
    assert scrm("publish").stdout.endswith("\nother: retired (its file is gone: no new enrolments)\n")
    assert scrm.json("list")[1] | {"enrolled": 0} == {"sequence": "other", "version": 1, "paused": False,
                                                      "retired": True, "enrolled": 0, "active": 0, "steps": 1,
                                                      "description": ""}
    assert scrm.json("show", "dress_lead", "--version", "1")["steps"][2]["say"] == "送您一张券"


def test_publishing_unchanged_files_makes_no_new_version(scrm: Scrm) -> None:
    assert scrm("publish").stdout == "dress_lead: v1 (changed)\n"
    assert scrm("publish").stdout == "dress_lead: v1 (unchanged)\n"


@pytest.mark.parametrize("problem", list(BAD))
def test_a_broken_file_publishes_nothing(scrm: Scrm, problem: str) -> None:
    scrm("publish")
    before = scrm.rows()
    scrm.write("dress_lead.yaml", DRESS.replace("送您一张券", "送您一张 20 元券"))
    scrm.write("bad.yaml", f"sequence: bad\n{BAD[problem][0]}")
    result = scrm("publish", ok=False)
    assert result.exit_code == 1 and "nothing was changed" in result.output
    assert scrm.rows() == before
    assert scrm.json("show", "dress_lead")["version"] == 1


# ---------------------------------------------------------------- list and show


def test_list_and_show(published: Scrm) -> None:
    listed = published("list").stdout.splitlines()
    assert listed[0].split() == ["sequence", "version", "state", "enrolled/active", "steps", "description"]
    assert listed[1].split() == ["dress_lead", "v1", "live", "0/0", "4", "连衣裙意向培育"]
    shown = published("show", "dress_lead").stdout
    assert shown.startswith("sequence dress_lead v1 (published ")
    assert "marketing: yes" in shown
    assert "enrolled by: stage interested; tag 连衣裙" in shown
    assert "exits on: replied; unsubscribed; tag 衬衫" in shown
    rows = {line.split()[1]: line for line in shown.splitlines() if line[:1].isdigit()}
    assert "at once" in rows["welcome"] and "{{ customer.name }}，欢迎～" in rows["welcome"]
    assert "1d after enrolment" in rows["tips"] and "tag 连衣裙" in rows["tips"]
    assert "day 3 10:00" in rows["coupon"]
    assert "4d after the previous" in rows["check_in"] and "stage interested and social ≥ 10" in rows["check_in"]
    missing = published("show", "nope", ok=False)
    assert missing.exit_code == 1 and "no published sequence 'nope'" in missing.output
    assert "has no version 7" in published("show", "dress_lead", "--version", "7", ok=False).output


def test_list_before_anything_is_published(scrm: Scrm) -> None:
    assert "no sequences published yet" in scrm("list").stdout


# ---------------------------------------------------------------- enroll, pause, stop


def test_enroll_customers_by_id_schedules_their_first_step(published: Scrm) -> None:
    may, li = published.customer("阿May"), published.customer("小李")
    out = published.customer("退订者", opted_out=True)
    assert published("enroll", "dress_lead", "--customer", str(may), "--customer", str(li)).stdout == (
        "dress_lead v1: enrolled 2, already enrolled 0\n")
    assert published.json("enroll", "dress_lead", "--customer", str(may), "--customer", str(out)) == {
        "sequence": "dress_lead", "version": 1, "enrolled": 0, "already_enrolled": 1, "opted_out": 1}

    async def sends(session: AsyncSession) -> list[tuple[int, str, str]]:
        rows = await session.execute(select(NurtureSend.customer_id, NurtureSend.step, NurtureSend.status)
                                     .order_by(NurtureSend.customer_id))
        return [tuple(row) for row in rows.tuples()]  # type: ignore[misc]

    assert published.run(sends) == [(may, "welcome", "pending"), (li, "welcome", "pending")]
    assert published.json("list")[0]["enrolled"] == 2


def test_enroll_refuses_unknown_customers_and_sequences_and_writes_nothing(published: Scrm) -> None:
    may = published.customer("阿May")
    before = published.rows()
    result = published("enroll", "dress_lead", "--customer", str(may), "--customer", "999", ok=False)
    assert result.exit_code == 1 and "no customer 999: nobody was enrolled" in result.output
    result = published("enroll", "nope", "--customer", str(may), ok=False)
    assert result.exit_code == 1 and "no published sequence nope" in result.output
    result = published("enroll", "dress_lead", "--tag", "裙子", ok=False)
    assert result.exit_code == 1 and "tag '裙子' is not in the tag catalog" in result.output
    assert published("enroll", "dress_lead", ok=False).exit_code == 2
    assert published("enroll", "dress_lead", "--customer", str(may), "--tag", "连衣裙", ok=False).exit_code == 2
    assert published.rows() == before


def test_enroll_a_segment_in_batches(published: Scrm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequence_commands, "BATCH", 2)
    dress = [published.customer(f"c{i}", ("连衣裙",)) for i in range(5)]
    published.customer("shirt", ("衬衫",))
    published.customer("out", ("连衣裙",), opted_out=True)
    published("enroll", "dress_lead", "--customer", str(dress[0]))
    assert published("enroll", "dress_lead", "--tag", "连衣裙").stdout == (
        "dress_lead v1: enrolled 4, already enrolled 1\n")
    assert published.count(Enrolment) == 5


def test_pause_resume_and_stop(published: Scrm) -> None:
    may, li = published.customer("阿May"), published.customer("小李")
    published("enroll", "dress_lead", "--customer", str(may), "--customer", str(li))
    assert published("pause", "dress_lead").stdout.startswith("dress_lead paused: its 2 active enrolment(s) wait")
    assert published.json("list")[0]["paused"] is True
    assert published("resume", "dress_lead").stdout == "dress_lead resumed: 2 active enrolment(s)\n"
    assert published.json("list")[0]["paused"] is False
    assert published("pause", "nope", ok=False).exit_code == 1
    assert published("stop", "dress_lead", "--customer", str(may)).stdout == "dress_lead: stopped 1 enrolment(s)\n"

    async def state(session: AsyncSession) -> list[tuple[str, str, str, str]]:
        rows = await session.execute(select(Enrolment.status, Enrolment.exit_reason, NurtureSend.status,
                                            NurtureSend.reason).join(NurtureSend, NurtureSend.enrolment_id == Enrolment.id)
                                     .where(Enrolment.customer_id == may))
        return [tuple(row) for row in rows.tuples()]  # type: ignore[misc]

    assert published.run(state) == [("exited", "admin", "skipped", "exited: admin")]
    again = published("stop", "dress_lead", "--customer", str(may), ok=False)
    assert again.exit_code == 1 and "is not in sequence dress_lead" in again.output


# ---------------------------------------------------------------- stats


def test_stats_counts_per_step_and_draws_bars(published: Scrm) -> None:
    ids = [published.customer(f"c{i}") for i in range(4)]
    published("enroll", "dress_lead", *[arg for i in ids for arg in ("--customer", str(i))])
    now = datetime.now(UTC)

    async def dispatched(session: AsyncSession) -> None:  # what the dispatcher and the engine would have done
        sends = list(await session.scalars(select(NurtureSend).order_by(NurtureSend.customer_id)))
        for send, (status, reason) in zip(sends, [("sent", ""), ("sent", ""), ("sent", ""), ("skipped", "quiet")],
                                          strict=True):
            send.status, send.reason, send.sent_at = status, reason, now - timedelta(hours=1)
        sends[0].replied_at = now
        await session.execute(update(Enrolment).where(Enrolment.customer_id == ids[0])
                              .values(converted_at=now, status="exited", exit_reason="replied"))

    published.run(dispatched)
    [stats] = published.json("stats", "dress_lead")
    assert (stats["enrolled"], stats["by_version"], stats["active"], stats["exited"], stats["exited_by"],
            stats["converted"]) == (4, {"1": 4}, 3, 1, {"replied": 1}, 1)
    assert stats["steps"] == [{"step": "welcome", "index": 0, "pending": 0, "sent": 3, "failed": 0, "replied": 1,
                               "converted": 1, "skipped": {"quiet": 1}, "waiting": {}}]
    shown = published("stats").stdout.splitlines()
    assert shown[0] == ("dress_lead: 4 enrolled (v1 4); active 3, paused 0, completed 0, exited 1 (replied 1); "
                        "converted 1 (25%)")
    assert shown[2].split() == ["welcome", "3", "1", "1", "1", "0", "0", "quiet", "1"]
    assert shown[3] == "  welcome  sent      " + "█" * 30 + " 3"
    assert shown[4] == "           replied   " + "█" * 10 + " 1"


def test_stats_show_what_pending_sends_wait_for_no_quota_included(published: Scrm) -> None:
    ids = [published.customer(f"c{i}") for i in range(4)]
    published("enroll", "dress_lead", *[arg for i in ids for arg in ("--customer", str(i))])
    assert "waiting for" not in published("stats").stdout  # nothing put off yet: no column

    async def deferred(session: AsyncSession) -> None:  # what the dispatcher would have done
        sends = list(await session.scalars(select(NurtureSend).order_by(NurtureSend.customer_id)))
        for send, reason in zip(sends, ["waiting: no quota", "waiting: no quota", "waiting: quiet hours", ""],
                                strict=True):
            send.reason = reason

    published.run(deferred)
    [step] = published.json("stats", "dress_lead")[0]["steps"]
    assert (step["pending"], step["waiting"]) == (4, {"no quota": 2, "quiet hours": 1})
    shown = published("stats").stdout.splitlines()
    assert shown[1].split()[-3:] == ["because", "waiting", "for"]
    assert shown[2].split()[1:] == ["0", "0", "0", "0", "0", "4", "no", "quota", "2,", "quiet", "hours", "1"]


def test_bars_show_a_sliver_for_small_numbers() -> None:
    assert sequence_commands.bar(0, 100) == ""
    assert sequence_commands.bar(1, 100) == "▌"
    assert sequence_commands.bar(50, 100) == "█" * 15


# ---------------------------------------------------------------- the shipped example


def test_the_shipped_sequence_loads_and_the_flows_still_validate(clean_env: None) -> None:
    library = ROOT / "flows" / "library"
    settings = load_settings(nlu={"mode": "rules"})
    stages = {s.id: s.id for s in settings.lifecycle.stages} | {s.label: s.id for s in settings.lifecycle.stages}
    tags = load_sources({"tags.yaml": (library / "tags.yaml").read_text(encoding="utf-8")}, settings.lifecycle).tags
    sequences, _ = load_sequences(library / "sequences", sorted(tags.tags), stages)
    new_lead = sequences["new_lead"]
    assert [step.id for step in new_lead.steps] == ["welcome", "tips", "coupon", "check_in"]
    assert (new_lead.steps[2].at_day, new_lead.steps[2].at_time, new_lead.steps[3].after_previous_s) == (
        3, "10:00", 4 * 86400)
    assert new_lead.enroll == (("stage", "interested"),)
    assert {kind for kind, _ in new_lead.exits} == {"replied", "stage_changed", "unsubscribed", "handed_off"}
    env = {"SCRM__FLOWS__DIRECTORY": str(library), "SCRM__NLU__MODE": "rules"}
    assert CliRunner().invoke(cli, ["sequences", "validate"], env=env).stdout == "ok: 1 sequences\n"
    assert CliRunner().invoke(cli, ["flows", "validate"], env=env).exit_code == 0
