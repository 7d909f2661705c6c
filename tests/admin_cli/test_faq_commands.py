"""`scrm faq ...` through Click's runner, with a flow directory of its own in tmp_path (only publishing opens a store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from flows.releases import get_release
from tests.admin_cli.harness import ScrmRunner
from tests.conftest import Backend
from tests.flows.test_engine import flow_dir

FAQ = """\
faq:
  - id: delivery_time
    title: 多久发货
    questions: [多久发货, 几天能到, 下单后什么时候发, 发货要多久啊]
    answer: |
      下单后 48 小时内发货。
      偏远地区 3 天。
    links: [{title: 物流说明, url: "https://shop.example/shipping"}]
    tags: [询价]
    set_stage: 意向
    handoff_if_repeated: 10m
  - id: invoice
    title: 开发票
    questions: [能开发票吗, 发票怎么开]
    answer: 可以开电子发票。
"""
NEW_CSV = "id,question,answer\ninvoice,发票能开吗,电子发票，下单时填抬头。\ninvoice,要发票,\nreturns,怎么退货,七天无理由。\nreturns,能退吗,\n"
BAD_CSV = "id,question,answer\nreturns,怎么退货,七天无理由。\nReturns,能退吗,\nreturns,,\nnew_one,多久 发货,答\nnew_one,别的,\n"


class Faq(ScrmRunner):
    command = ("faq",)
    failure_exit = 1

    def __init__(self, store_url: str, directory: Path) -> None:
        super().__init__(store_url, SCRM__FLOWS__DIRECTORY=str(directory))
        self.directory = directory

    @property
    def faq_yaml(self) -> Path:
        return self.directory / "faq.yaml"


@pytest.fixture
def faq(tmp_path: Path, clean_env: None) -> Faq:
    directory = flow_dir(tmp_path)
    (directory / "faq.yaml").write_text(FAQ, encoding="utf-8")
    return Faq(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}", directory)


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> str:
    (tmp_path / name).write_text(text, encoding=encoding)
    return str(tmp_path / name)


def test_list_shows_id_title_and_how_many_questions(faq: Faq) -> None:
    assert faq("list").stdout.splitlines()[1:] == ["delivery_time  多久发货  4", "invoice        开发票    2"]
    assert faq.json("list") == [{"id": "delivery_time", "title": "多久发货", "questions": 4},
                                {"id": "invoice", "title": "开发票", "questions": 2}]


def test_list_without_faq_yaml_says_how_to_start(faq: Faq) -> None:
    faq.faq_yaml.unlink()
    assert "no FAQ in" in faq("list").stdout and faq.json("list") == []


def test_show_prints_the_entry_and_its_effects(faq: Faq) -> None:
    out = faq("show", "delivery_time").stdout
    assert out.startswith("delivery_time: 多久发货 (faq.yaml, line 2)\nquestions:\n  多久发货\n")
    assert "answer:\n  下单后 48 小时内发货。\n  偏远地区 3 天。\n" in out
    assert "tags: 询价\nstage: interested\nhand-off: asked again within 10m" in out
    shown = faq.json("show", "delivery_time")
    assert shown["links"] == [{"title": "物流说明", "url": "https://shop.example/shipping", "desc": ""}]
    assert shown["handoff_if_repeated_s"] == 600
    assert "no FAQ entry 'invoce' (did you mean invoice?)" in faq("show", "invoce", ok=False).stderr


def test_validate_says_ok_with_counts_and_advice(faq: Faq) -> None:
    assert faq("validate").stdout == ("ok: 2 FAQ entries, 6 questions\n"
                                      "advice: invoice have fewer than 4 questions; more ways of asking match better\n")
    assert faq.json("validate")["few_questions"] == ["invoice"]


def test_validate_prints_every_error_with_path_line_and_entry_and_exits_1(faq: Faq) -> None:
    faq.faq_yaml.write_text(FAQ + "  - id: invoice\n    title: 重复\n    questions: [多久 发货, 再问]\n    answer: 答\n",
                            encoding="utf-8")
    result = faq("validate", ok=False)
    assert result.stdout.splitlines() == [
        f"{faq.faq_yaml}:16: entry invoice: duplicate id (first at line 12): give each entry an id of its own",
        f"{faq.faq_yaml}:18: entry invoice: question '多久 发货' is already asked by entry delivery_time (line 4), "
        "compared without spaces and case: each phrasing belongs to one entry, keep it where it fits best",
    ]
    assert "2 error(s)" in result.stderr
    report = json.loads(faq("validate", "--json", ok=False).stdout)
    assert report["ok"] is False and [error["line"] for error in report["errors"]] == [16, 18]


def test_validate_path_checks_a_draft_in_place_of_faq_yaml(faq: Faq, tmp_path: Path) -> None:
    draft = write(tmp_path, "draft.yaml", "faq:\n  - {id: a, title: t, questions: [一], answer: 答}\n")
    result = faq("validate", draft, ok=False)
    assert result.stdout.startswith(f"{draft}:2: entry a: 1 question(s)")
    assert faq("validate", str(faq.directory)).stdout.startswith("ok: 2 FAQ entries")


def test_validate_refuses_a_flow_that_takes_over_an_unknown_entry(faq: Faq) -> None:
    (faq.directory / "takeover.yaml").write_text("flow: takeover\ntriggers: [{faq: invoices}]\nsteps: [{say: 好}]\n",
                                                 encoding="utf-8")
    out = faq("validate", ok=False).stdout
    assert out.startswith(f"{faq.directory / 'takeover.yaml'}:2: flow takeover: unknown FAQ entry 'invoices'")


def test_import_merges_replacing_imported_ids_and_keeping_the_others(faq: Faq, tmp_path: Path) -> None:
    csv_file = write(tmp_path, "faq.csv", NEW_CSV, encoding="utf-8-sig")
    dry = faq("import", csv_file, "--dry-run").stdout
    assert dry.startswith("dry run, nothing written") and faq.faq_yaml.read_text(encoding="utf-8") == FAQ
    assert faq("import", csv_file).stdout.splitlines()[1:] == ["  added: returns", "  replaced: invoice", "  kept: 1"]
    assert [row["id"] for row in faq.json("list")] == ["delivery_time", "invoice", "returns"]
    invoice = faq.json("show", "invoice")
    assert (invoice["title"], invoice["questions"], invoice["answer"]) == ("开发票", ["发票能开吗", "要发票"],
                                                                          "电子发票，下单时填抬头。")
    assert faq.json("show", "delivery_time")["tags"] == ["询价"]  # not in the CSV: untouched
    assert faq.faq_yaml.read_text(encoding="utf-8").startswith("# The FAQ (常见问题)")


def test_import_of_a_csv_with_any_bad_row_writes_nothing_and_names_every_row(faq: Faq, tmp_path: Path) -> None:
    csv_file = write(tmp_path, "bad.csv", BAD_CSV)
    result = faq("import", csv_file, ok=False)
    assert [line.split(": ", 2)[1] for line in result.stdout.splitlines()] == ["row 3", "row 4", "row 5"]
    assert "question '多久 发货' is already asked by entry delivery_time of faq.yaml" in result.stdout
    assert "3 problem(s) in" in result.stderr and "nothing was imported" in result.stderr
    assert faq.faq_yaml.read_text(encoding="utf-8") == FAQ


def test_import_of_an_excel_gbk_csv_says_how_to_save_it(faq: Faq, tmp_path: Path) -> None:
    csv_file = write(tmp_path, "gbk.csv", NEW_CSV, encoding="gbk")
    assert "save it as \"CSV UTF-8\"" in faq("import", csv_file, ok=False).stdout
    assert faq.faq_yaml.read_text(encoding="utf-8") == FAQ


def test_import_that_would_break_the_directory_writes_nothing(faq: Faq, tmp_path: Path) -> None:
    (faq.directory / "broken.yaml").write_text("flow: broken\nsteps:\n  - goto: nowhere\n", encoding="utf-8")
    result = faq("import", write(tmp_path, "faq.csv", NEW_CSV), ok=False)
    assert "must load before and after the import" in result.stdout and f"{faq.directory / 'broken.yaml'}:3:" in result.stdout
    assert faq.faq_yaml.read_text(encoding="utf-8") == FAQ


def test_export_then_import_round_trips(faq: Faq, tmp_path: Path) -> None:
    before = faq.json("show", "delivery_time")
    stdout = faq("export").stdout
    assert stdout.splitlines()[:2] == ["id,question,answer", 'delivery_time,多久发货,"下单后 48 小时内发货。']
    out = tmp_path / "out.csv"
    assert faq("export", "-o", str(out)).stdout == f"2 entries, 6 rows written to {out}\n"
    assert out.read_bytes().startswith(b"\xef\xbb\xbfid,question,answer\r\n")  # Excel reads the BOM as UTF-8
    assert faq.json("import", str(out)) == {"file": str(faq.faq_yaml), "written": True, "added": [],
                                            "replaced": ["delivery_time", "invoice"], "kept": 0}
    assert faq.json("show", "delivery_time") == before | {"line": 5}  # below the header comment
    assert faq("export").stdout == stdout


def test_flows_publish_refuses_a_broken_faq_yaml_and_publishes_a_good_one_in_the_release(
        backend: Backend, tmp_path: Path, clean_env: None) -> None:
    directory = flow_dir(tmp_path)
    (directory / "faq.yaml").write_text(FAQ.replace("[询价]", "[没有这个标签]"), encoding="utf-8")
    flows = ScrmRunner(backend.store_url, SCRM__FLOWS__DIRECTORY=str(directory))
    result = flows("flows", "publish", ok=False)
    assert result.exit_code == 1 and f"{directory / 'faq.yaml'}:9: entry delivery_time: unknown tag" in result.stdout
    (directory / "faq.yaml").write_text(FAQ, encoding="utf-8")
    flows("flows", "publish")

    async def sources(session: AsyncSession) -> dict[str, str]:
        return dict((await get_release(session)).sources)

    assert flows.run(sources)["faq.yaml"] == FAQ
