"""`scrm faq suggest` and `scrm report faq` through Click's runner, on SQLite and PostgreSQL, on timelines
written as turns write them (a turn's events share one time)."""

from __future__ import annotations

import csv
import io
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.faq_queries import FAQ_ANSWERED, FAQ_OFFERED, TURN_UNANSWERED
from crm_store.models import TimelineEvent, utcnow
from tests.admin_cli.test_growth_commands import Scrm
from tests.conftest import Backend

ROOT = Path(__file__).resolve().parents[2]
NOW = utcnow().replace(microsecond=0)
Event = tuple[float, str, dict[str, Any]]  # minutes ago, kind, data


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> Scrm:
    return Scrm(backend.store_url)


def timelines(scrm: Scrm, *customers: list[Event]) -> None:
    ids = scrm.customers(*(f"客{n}" for n in range(len(customers))))

    async def work(session: AsyncSession) -> None:
        for customer_id, events in zip(ids, customers, strict=True):
            session.add_all(TimelineEvent(customer_id=customer_id, kind=kind, data=data,
                                          created_at=NOW - timedelta(minutes=ago)) for ago, kind, data in events)

    scrm.run(work)


def missed(ago: float, text: str) -> Event:
    return ago, TURN_UNANSWERED, {"text": text}


def shop_misses(scrm: Scrm) -> None:
    """Invoices asked five times by three customers (one then handed off), Xinjiang twice, one odd question;
    a "转人工" the desk took, and an invoice question of two months ago."""
    timelines(
        scrm,
        [missed(50, "能开发票吗"), missed(40, "能开发票吗？"), (38, "handoff.opened", {"reason": "want_human"}),
         missed(30, "新疆发货吗"), missed(15, "转人工"), (15, "handoff.opened", {"reason": "want_human"})],
        [missed(45, "怎么开发票"), missed(44, "可以开发票吗"), missed(10, "新疆能发货吗")],
        [missed(5, "请问能开发票吗"), missed(4, "你们老板是谁"), missed(3, "😀😀"), missed(86_400, "开发票吗")],
    )


def test_suggest_groups_what_nothing_answered_most_asked_first(scrm: Scrm) -> None:
    shop_misses(scrm)
    found = scrm.json("faq", "suggest", "--since", "30d")
    assert found["messages"] == 9  # not the old one, not "转人工"; the emoji is counted, then dropped
    summary = [(s["id"], s["title"], s["count"], s["customers"], s["handed_off"]) for s in found["suggestions"]]
    assert summary == [("new_01", "能开发票吗", 5, 3, 1), ("new_02", "新疆发货吗", 2, 2, 0),
                       ("new_03", "你们老板是谁", 1, 1, 0)]
    assert found["suggestions"][0]["examples"] == ["能开发票吗", "可以开发票吗", "怎么开发票"]

    text = scrm("faq", "suggest", "--limit", "1").stdout
    assert "9 unanswered messages since 30d" in text and "new_01" in text and "新疆" not in text
    assert scrm.json("faq", "suggest", "--since", "2h")["messages"] == 9
    assert scrm.json("faq", "suggest", "--since", (NOW + timedelta(days=2)).date().isoformat())["messages"] == 0


def test_suggest_writes_a_csv_that_imports_once_the_answers_are_written(scrm: Scrm, tmp_path: Path) -> None:
    shop_misses(scrm)
    path = tmp_path / "new-faq.csv"
    out = scrm("faq", "suggest", "--limit", "2", "--csv", str(path)).stdout
    assert f"wrote 2 entries (6 rows) to {path}" in out
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")  # Excel opens it as UTF-8
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0] == ["id", "question", "answer"]
    assert [row[0] for row in rows[1:]] == ["new_01"] * 4 + ["new_02"] * 2
    assert {row[2] for row in rows[1:]} == {""}

    flows = tmp_path / "flows"
    shutil.copytree(ROOT / "docs" / "examples" / "flows", flows)
    refused = scrm("faq", "import", str(path), "--dir", str(flows), "--dry-run", ok=False)
    assert "new_01 has no answer" in refused.output
    answered = [rows[0], *([row[0], row[1], "可以开，下单时备注抬头和税号。"] if row[0] == "new_01" else
                          [row[0], row[1], "新疆包邮，5～7 天到。"] for row in rows[1:])]
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(answered)
    done = scrm.json("faq", "import", str(path), "--dir", str(flows), "--dry-run")
    assert done["added"] == ["new_01", "new_02"]


def test_suggest_of_nothing_writes_no_csv(scrm: Scrm, tmp_path: Path) -> None:
    path = tmp_path / "none.csv"
    assert "nothing went unanswered since 30d" in scrm("faq", "suggest", "--csv", str(path)).stdout
    assert not path.exists()
    found = scrm.json("faq", "suggest", "--since", "2026-03-01")
    assert found == {"since": "2026-03-01T00:00:00+08:00", "messages": 0, "suggestions": []}  # growth.timezone


def answered(ago: float, entry: str, source: str = "rasa") -> Event:
    return ago, FAQ_ANSWERED, {"entry": entry, "confidence": 0.91, "source": source, "text": "发货"}


def test_report_faq_shows_per_entry_what_did_not_help(scrm: Scrm, tmp_path: Path) -> None:
    timelines(
        scrm,
        [answered(60, "shipping"), answered(55, "shipping")],  # asked again within 10 minutes
        [(30, FAQ_OFFERED, {"entries": ["shipping", "invoice"], "text": "发"}), answered(29, "invoice", "choice"),
         (25, "handoff.opened", {"reason": "want_human"})],  # chosen, then a person
        [answered(20, "shipping", "cache")],
    )
    report = scrm.json("report", "faq", "--since", "1d")
    assert report == [
        {"entry": "shipping", "asked": 3, "answered": 3, "chosen": 0, "offered": 1, "followed_by_handoff": 0,
         "repeated": 1, "not_helped": 1, "not_helped_rate": 0.3333},
        {"entry": "invoice", "asked": 1, "answered": 0, "chosen": 1, "offered": 1, "followed_by_handoff": 1,
         "repeated": 0, "not_helped": 1, "not_helped_rate": 1.0},
    ]
    text = scrm("report", "faq").stdout
    assert "answers given: 4   did not help: 2   did-not-help rate: 50.0%" in text
    assert "shipping" in text and "33.3%" in text
    assert scrm.json("report", "faq", "--until", (NOW - timedelta(days=2)).date().isoformat()) == []

    page = tmp_path / "report.html"
    scrm("report", "html", "-o", str(page))
    html = page.read_text(encoding="utf-8")
    assert "<h2>FAQ</h2>" in html and "<td>invoice</td><td>1</td><td>0</td><td>1</td>" in html


@pytest.mark.parametrize("command", [("faq", "suggest"), ("report", "faq")])
def test_a_bad_since_is_a_clear_error(scrm: Scrm, command: tuple[str, ...]) -> None:
    result = scrm(*command, "--since", "last month", ok=False)
    assert result.exit_code == 1 and "--since" in result.output and "30d" in result.output
