"""The documentation's shell examples run: every `scrm …` line of a ```sh block in README.md and docs/.

Pages run one by one (README.md, then docs/ in mkdocs.yml's nav order), each on a store of its own
(SQLite, migrated): a page that links to docs/cli.md#examples on the example store described there
(three customers, nothing else), any other page on an empty one. A page's commands run
in order through Click's runner (continuations joined, trailing `# comments` dropped), from a
temporary directory holding a copy of docs/examples, against the sandbox's fake WeCom/OA API on a
local port. Each must exit 0, or with the status its comment names (`# exits 1: …`); a failure names
the page, the line, the command and its output. A leading `NAME=value` sets an environment variable.

Not run, by rule (SKIPPED below):
- lines that are not `scrm` commands (make, curl, .venv/bin/python bench/…): other tools
  (`.venv/bin/scrm …` is `scrm`, and runs);
- `scrm serve` (runs until stopped), `scrm flows try` (a chat in the terminal);
- `scrm nlu train`, and `scrm nlu test` without --rules: they need Rasa (`make rasa`) and take minutes.
Refused: shell syntax a runner cannot honour (`|`, `>`, `;`, `&&`, `$(…)`) and synopses (`[--port N]`,
`ID…`): write those in a ```text block, which is not run.

What differs from run to run:
- channel codes are random: a `ch_…` code in an example stands for the codes earlier commands of
  the page printed, in the order the page first names them;
- https://erp.example.com, the webhook receiver of the examples, is a local endpoint this test serves.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from click.testing import CliRunner, Result

from admin_cli.main import cli
from bot.sandbox.simulator import fake_for
from bot.settings import load_settings
from crm_store.customers import Profile, resolve_customer
from crm_store.db import create_engine, session_factory
from crm_store.migrate import upgrade
from tests.admin_cli.harness import served

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_STORE = "cli.md#examples"  # a page that links there runs on the example store, any other on a new one
# The example store's customers: (identity kind, external id, name, the rep they added on WeCom).
CUSTOMERS = (("wecom", "wmWangFang", "王芳", "zhangsan"), ("wecom", "wmLiLei", "李雷", ""),
             ("oa", "oChenJing", "陈静", ""))
SKIPPED = {("serve",): "runs until stopped", ("flows", "try"): "a chat in the terminal",
           ("nlu", "train"): "needs Rasa", ("nlu", "test"): "needs Rasa"}
RULES_ONLY = "--rules"  # `scrm nlu test --rules` scores the keyword rules alone: no Rasa, run
WEBHOOK_HOST = "https://erp.example.com"
CHANNEL_CODE = re.compile(r"ch_[23456789A-HJKMNP-Z]{8}")
EXITS = re.compile(r"exits (\d+)\b")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"```(\S*)$")


# ---------------------------------------------------------------- reading the pages


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    text: str  # as written, continuations joined
    argv: tuple[str, ...]  # after `scrm`
    env: dict[str, str] = field(default_factory=dict)
    exit_code: int = 0
    problem: str = ""  # why the line cannot be run as written

    def where(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def pages() -> list[str]:
    """README.md, then the docs pages in the site's nav order."""
    def walk(entries: list[object]) -> Iterator[str]:
        for entry in entries:
            for value in entry.values() if isinstance(entry, dict) else [entry]:
                yield from walk(value) if isinstance(value, list) else [f"docs/{value}"]

    return ["README.md", *walk(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])]


def sh_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, logical line) of every ```sh block, `\\` continuations joined."""
    language, pending, start = None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.fullmatch(line.strip())
        if fence:
            language = fence.group(1) if language is None else None
            continue
        if language != "sh":
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, (pending + line).strip()
        pending = ""


def split_comment(line: str) -> tuple[str, str]:
    """The command and its trailing comment: the first `#` outside quotes that starts a word."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].strip(), line[index + 1:].strip()
    return line.strip(), ""


def example_of(page: str, number: int, line: str) -> Example | None:
    """The `scrm` command on the line, or None when a rule says it is not run."""
    command, comment = split_comment(line)
    words = shlex.shlex(command, posix=True, punctuation_chars=True)
    words.whitespace_split = True
    tokens = list(words)
    env = {}
    while tokens and ASSIGNMENT.match(tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env[name] = value
    if not tokens or tokens[0].rpartition("/")[2] != "scrm":  # scrm, or .venv/bin/scrm
        return None
    argv = tuple(tokens[1:])
    if skipped(argv):
        return None
    exits = EXITS.match(comment)
    problem = ("shell syntax the runner cannot honour" if any(token and set(token) <= set("|&;<>()") for token in argv)
               else "a synopsis" if any("…" in token or token.startswith("[") for token in argv) else "")
    return Example(page, number, line, argv, env, int(exits.group(1)) if exits else 0, problem)


def skipped(argv: tuple[str, ...]) -> str:
    """Why the rules leave the command out, or ""."""
    for prefix, why in SKIPPED.items():
        if argv[:len(prefix)] == prefix and not (prefix == ("nlu", "test") and RULES_ONLY in argv):
            return why
    return ""


def examples_of(page: str) -> list[Example]:
    text = (ROOT / page).read_text(encoding="utf-8")
    return [example for number, line in sh_lines(text) if (example := example_of(page, number, line)) is not None]


PAGES = [page for page in pages() if examples_of(page)]


# ---------------------------------------------------------------- the world the examples run in


@pytest.fixture(scope="module")
def outside() -> Iterator[str]:
    """WeChat's API (the sandbox's fake) at URL/cgi-bin and a webhook receiver at URL/hooks/…, one local port."""
    with pytest.MonkeyPatch.context() as patch:  # the sandbox credentials of config.yaml, as the commands see them
        for name in [name for name in os.environ if name.startswith("SCRM")]:
            patch.delenv(name)
        app = fake_for(load_settings(nlu={"mode": "rules"})).app()

    async def received(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app.router.add_post("/hooks/{path:.*}", received)
    with served(app) as (url,):
        yield url


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """A new store (migrated, empty) and the example store (the same, with the example customers), made once;
    keyed by "has the example customers", and copied for each page."""
    folder = tmp_path_factory.mktemp("stores")
    empty, example = folder / "new.db", folder / "example.db"
    upgrade(f"sqlite+aiosqlite:///{empty}")
    shutil.copy(empty, example)

    async def seed() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{example}")
        try:
            async with session_factory(engine)() as session, session.begin():
                for kind, external_id, name, owner in CUSTOMERS:
                    customer = await resolve_customer(session, kind, external_id, Profile(display_name=name))
                    customer.owner_userid = owner or None
        finally:
            await engine.dispose()

    asyncio.run(seed())
    assert not list(folder.glob("*.db-*")), "a store is not one file: copying it would lose writes"
    return {False: empty, True: example}


@dataclass
class PageRun:
    """One page's commands against one store, with what they printed so far."""

    env: dict[str, str]
    hooks: str
    printed_codes: list[str] = field(default_factory=list)
    named_codes: dict[str, str] = field(default_factory=dict)

    def argv(self, example: Example) -> list[str]:
        return [CHANNEL_CODE.sub(lambda code: self._code(code.group(), example), token)
                .replace(WEBHOOK_HOST, self.hooks) for token in example.argv]

    def _code(self, text: str, example: Example) -> str:
        if text not in self.named_codes:
            assert len(self.named_codes) < len(self.printed_codes), (
                f"{example.where()}\n  {text} stands for a channel code printed earlier, and none is left")
            self.named_codes[text] = self.printed_codes[len(self.named_codes)]
        return self.named_codes[text]

    def run(self, example: Example) -> Result:
        assert not example.problem, f"{example.where()}\n  {example.problem}: write it in a ```text block"
        argv = self.argv(example)
        result = CliRunner().invoke(cli, argv, env=self.env | example.env)
        failed = "" if result.exception is None or isinstance(result.exception, SystemExit) else "".join(
            traceback.format_exception(result.exception))
        assert result.exit_code == example.exit_code, (
            f"{example.where()}\n  ran: scrm {shlex.join(argv)}\n  exit status {result.exit_code}, the page says "
            f"{example.exit_code}; it printed:\n{result.output}{failed}")
        self.printed_codes += [code for code in CHANNEL_CODE.findall(result.output) if code not in self.printed_codes]
        return result


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("page", PAGES)
def test_the_page_examples_run_in_order(page: str, outside: str, stores: dict[bool, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    store = tmp_path / "scrm.db"
    shutil.copy(stores[EXAMPLE_STORE in (ROOT / page).read_text(encoding="utf-8")], store)
    work = tmp_path / "work"
    shutil.copytree(ROOT / "docs" / "examples", work / "docs" / "examples")
    monkeypatch.chdir(work)
    run = PageRun({"SCRM__STORE__URL": f"sqlite+aiosqlite:///{store}", "SCRM__REDIS__URL": "",
                   "SCRM__NLU__MODE": "rules", "SCRM__WECOM__API_BASE": f"{outside}/cgi-bin",
                   "SCRM__OA__API_BASE": f"{outside}/cgi-bin"}, f"{outside}/hooks")
    for example in examples_of(page):
        run.run(example)


def test_the_rules_read_a_line_as_a_shell_would() -> None:
    page = ("```sh\nscrm push create --name x --text \"a # b\" \\\n     --tag 高意向   # exits 1: no catalog\n"
            "make test   # not scrm\nSCRM__SERVER__PORT=9000 scrm config show\nscrm serve --port 8080\n"
            "scrm nlu test --rules\nscrm nlu test --folds 5\nscrm reps list [--all]\nscrm flows diff | less\n```\n"
            "```text\nscrm flows show FLOW\n```\n")
    found = [example_of("page.md", number, line) for number, line in sh_lines(page)]
    assert [(e.line, e.argv[:2], e.env, e.exit_code, e.problem) for e in found if e is not None] == [
        (2, ("push", "create"), {}, 1, ""), (5, ("config", "show"), {"SCRM__SERVER__PORT": "9000"}, 0, ""),
        (7, ("nlu", "test"), {}, 0, ""), (9, ("reps", "list"), {}, 0, "a synopsis"),
        (10, ("flows", "diff"), {}, 0, "shell syntax the runner cannot honour")]
    assert found[0] is not None and found[0].argv[4:] == ("--text", "a # b", "--tag", "高意向")
