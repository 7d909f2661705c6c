"""`scrm doctor` through Click's runner, against the fake WeCom/OA API and a fake Rasa on local ports.

A healthy deployment is all ✓; then one thing is broken at a time (a secret, an IP WeCom does
not trust, a kf account not handed to the API, an agent id, the store, Redis, the model) and
exactly that check fails, with its fix. The callback round trips run against the real app.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import Result

from bot.app import create_app
from bot.sandbox.fake_wechat import FakeWeChat
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.migrate import head_revision, upgrade_async
from flows.faq import read_faq
from flows.settings import SHIPPED_FLOWS
from nlu.rasa_runtime import model_file
from nlu.settings import NluSettings
from tests.admin_cli.harness import ScrmRunner, served
from tests.bot.conftest import make_settings
from tests.conftest import Backend, create_pg_database, drop_pg_database

CORP, AGENT, KF_ACCOUNT = "wwdoctorcorp", 1000005, "wkShop"
KF_SECRET, CONTACTS_SECRET, APP_SECRET = "kf-s3cret", "contacts-s3cret", "app-s3cret"
OA_ID, OA_SECRET = "wxdoctoroa", "oa-s3cret"
KEYS = {name: {"token": f"{name}-token", "encoding_aes_key": f"{name}Key".ljust(43, "A")}
        for name in ("kf", "contacts", "app", "oa")}
WECOM = {"corp_id": CORP, "kf": {**KEYS["kf"], "secret": KF_SECRET},
         "contacts": {**KEYS["contacts"], "secret": CONTACTS_SECRET},
         "app": {**KEYS["app"], "secret": APP_SECRET, "agent_id": AGENT}}
OA = {"app_id": OA_ID, "app_secret": OA_SECRET, "mode": "safe", **KEYS["oa"]}
WECHAT_CHECKS = ["wecom.kf.token", "wecom.kf.accounts", "wecom.contacts.token", "wecom.contacts.reps",
                 "wecom.app.token", "wecom.app.agent", "oa.token"]


def flat_env(prefix: str, section: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in section.items():
        name = f"{prefix}__{key.upper()}"
        env.update(flat_env(name, value) if isinstance(value, dict) else {name: str(value)})
    return env


@dataclass
class FakeRasa:
    model: str = ""
    token: str = ""

    def app(self) -> web.Application:
        async def status(request: web.Request) -> web.Response:
            if self.token and request.query.get("token") != self.token:
                return web.json_response({"status": "failure"}, status=401)
            return web.json_response({"model_file": f"models/{self.model}" if self.model else None})

        app = web.Application()
        app.router.add_get("/status", status)
        return app


@dataclass
class Outside:
    """WeChat's side (the fake API) and a Rasa server, as doctor reaches them over HTTP."""

    fake: FakeWeChat
    api_url: str
    rasa: FakeRasa
    rasa_url: str
    env: dict[str, str] = field(default_factory=dict)


def healthy(fake: FakeWeChat) -> None:
    fake.add_kf_account(KF_ACCOUNT, "店小二")
    fake.add_agent(AGENT, APP_SECRET, "销售助手")
    fake.contact_reps = ["zhang", "li"]


def shipped_faq() -> tuple:  # type: ignore[type-arg]
    """The FAQ of the shipped flow directory: the current model is trained on it too."""
    return tuple(read_faq(SHIPPED_FLOWS, LifecycleSettings()).training_rows())


@pytest.fixture
def outside(clean_env: None) -> Iterator[Outside]:
    fake, rasa = FakeWeChat(CORP, [KF_SECRET, CONTACTS_SECRET, APP_SECRET], OA_ID, OA_SECRET), FakeRasa()
    with served(fake.app(), rasa.app()) as (api_root, rasa_url):
        api_url = api_root + "/cgi-bin"
        healthy(fake)
        env = {"SCRM__SANDBOX__ENABLED": "false", "SCRM__WECOM__API_BASE": api_url, "SCRM__OA__API_BASE": api_url,
               "SCRM__MEDIA__LINK_SECRET": "a-real-link-secret",
               **flat_env("SCRM__WECOM", WECOM), **flat_env("SCRM__OA", OA)}
        yield Outside(fake, api_url, rasa, rasa_url, env)


class Doctor(ScrmRunner):
    command = ("doctor",)
    failure_exit = 1

    def checks(self, *args: str, ok: bool = True, env: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
        report = json.loads(self(*args, "--json", ok=ok, env=env).stdout)
        return {check["name"]: check for check in report["checks"]}

    def failing(self, *args: str, **env: str) -> dict[str, dict[str, str]]:
        """The failed checks of a run that must exit 1."""
        return {name: c for name, c in self.checks(*args, ok=False, env=env).items() if c["status"] == "fail"}


@pytest.fixture
async def store(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'scrm.db'}"
    await upgrade_async(url)
    return url


@pytest.fixture
def doctor(store: str, outside: Outside) -> Doctor:
    return Doctor(store, **outside.env)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_healthy_deployment_is_all_ticks_and_exits_0(backend: Backend, outside: Outside) -> None:
    result = Doctor(backend.store_url, **outside.env, SCRM__REDIS__URL=backend.redis_url)()
    lines = result.stdout.splitlines()
    assert all(line.startswith("✓ ") for line in lines[:-1]), result.stdout
    assert lines[-1] == f"all {len(lines) - 1} checks passed"
    names = [line.split()[1] for line in lines[:-1]]
    assert names == ["config", "sandbox", "store", "redis", "nlu", *WECHAT_CHECKS]
    assert f"at migration {head_revision()}, the newest" in result.stdout
    assert "handed to the API: 店小二 (wkShop)" in result.stdout and "agent 1000005 is 销售助手" in result.stdout


Setup = Callable[[FakeWeChat], None]
BREAKAGES: list[tuple[str, Setup | None, dict[str, str], dict[str, tuple[str, str]]]] = [
    ("wrong kf secret", None, {"SCRM__WECOM__KF__SECRET": "not-it"},
     {"wecom.kf.token": ("errcode 40001", "SCRM__WECOM__KF__SECRET")}),
    ("wrong corp id", None, {"SCRM__WECOM__CORP_ID": "wwother"},
     {f"wecom.{app}.token": ("errcode 40013", "企业ID") for app in ("kf", "contacts", "app")}),
    ("wrong OA secret", None, {"SCRM__OA__APP_SECRET": "not-it"},
     {"oa.token": ("errcode 40125", "SCRM__OA__APP_SECRET")}),
    ("wrong OA app id", None, {"SCRM__OA__APP_ID": "wxother"}, {"oa.token": ("errcode 40013", "SCRM__OA__APP_ID")}),
    ("app IP not trusted", lambda fake: fake.refuse_ip(APP_SECRET), {},
     {"wecom.app.agent": ("errcode 60020", "add 203.0.113.7 (this server's egress IP) to the 企业可信IP")}),
    ("contacts IP not trusted", lambda fake: fake.refuse_ip(CONTACTS_SECRET, "198.51.100.9"), {},
     {"wecom.contacts.reps": ("from this server's IP 198.51.100.9", "企业可信IP of the app whose Secret is "
                                                                     "wecom.contacts.secret")}),
    ("OA IP not whitelisted", lambda fake: fake.refuse_ip(OA_SECRET), {},
     {"oa.token": ("errcode 40164", "add 203.0.113.7 (this server's egress IP) to 公众平台 → 设置与开发 → 基本配置 → IP白名单")}),
    ("kf account not handed to the API", lambda fake: fake.add_kf_account(KF_ACCOUNT, "店小二", managed=False), {},
     {"wecom.kf.accounts": ("no account is handed to this app's API", "可管理的客服账号")}),
    ("no kf account", lambda fake: fake.kf_accounts.clear(), {},
     {"wecom.kf.accounts": ("no kf account is visible", "可调用接口的应用")}),
    ("kf API not allowed", lambda fake: fake.fail_next("kf/account/list", 48002), {},
     {"wecom.kf.accounts": ("errcode 48002", "add this app to 微信客服 → 可调用接口的应用")}),
    ("invalid agent id", None, {"SCRM__WECOM__APP__AGENT_ID": "1000099"},
     {"wecom.app.agent": ("errcode 40056", "SCRM__WECOM__APP__AGENT_ID")}),
    ("agent of another app", lambda fake: fake.add_agent(AGENT, KF_SECRET), {},
     {"wecom.app.agent": ("errcode 301002", "the same app")}),
    ("app disabled", lambda fake: fake.add_agent(AGENT, APP_SECRET, "销售助手", closed=True), {},
     {"wecom.app.agent": ("is disabled", "启用")}),
]


@pytest.mark.parametrize(("setup", "env", "expected"), [b[1:] for b in BREAKAGES], ids=[b[0] for b in BREAKAGES])
def test_each_breakage_fails_exactly_its_check_with_the_fix(
    doctor: Doctor, outside: Outside, setup: Setup | None, env: dict[str, str], expected: dict[str, tuple[str, str]]
) -> None:
    if setup is not None:
        setup(outside.fake)
    failed = doctor.failing(**env)
    assert sorted(failed) == sorted(expected)
    for name, (detail, fix) in expected.items():
        assert detail in failed[name]["detail"] and fix in failed[name]["fix"], failed[name]


def test_the_failure_reads_as_a_cross_with_its_fix_under_it(doctor: Doctor, outside: Outside) -> None:
    outside.fake.refuse_ip(KF_SECRET)
    out = doctor(ok=False).stdout
    width = len("wecom.contacts.token")  # the longest name: the details start in one column
    assert f"✓ {'wecom.kf.token':<{width}}  wecom.kf.secret buys an access token" in out
    assert (f"✗ {'wecom.kf.accounts':<{width}}  errcode 60020 (not allow to access from your ip): WeCom refuses "
            "this app's calls from this server's IP 203.0.113.7") in out
    assert f"  {'':<{width}}  fix: add 203.0.113.7 (this server's egress IP) to the 企业可信IP" in out
    assert out.splitlines()[-1] == "1 failed, 0 to look at: fix the ✗ lines first"


def test_json_is_one_object_with_every_check(doctor: Doctor, outside: Outside) -> None:
    report = json.loads(doctor("--json").stdout)
    assert (report["status"], report["failed"], report["warnings"]) == ("ok", 0, 0)
    assert all(set(check) == {"name", "status", "detail", "fix"} for check in report["checks"])
    outside.fake.contact_reps.clear()
    outside.fake.refuse_ip(OA_SECRET)
    report = json.loads(doctor("--json", ok=False).stdout)
    assert (report["status"], report["failed"], report["warnings"]) == ("fail", 1, 1)
    assert {c["name"]: c["status"] for c in report["checks"] if c["status"] != "ok"} == {
        "wecom.contacts.reps": "warn", "oa.token": "fail"}


def test_an_api_base_that_does_not_answer_is_named(doctor: Doctor) -> None:
    failed = doctor.failing(SCRM__WECOM__API_BASE=f"http://127.0.0.1:{closed_port()}/cgi-bin")
    assert sorted(failed) == ["wecom.app.token", "wecom.contacts.token", "wecom.kf.token"]
    assert "does not answer usably" in failed["wecom.kf.token"]["detail"]
    assert "SCRM__WECOM__API_BASE" in failed["wecom.kf.token"]["fix"]


def test_sandbox_values_or_a_sandbox_left_on_are_said_and_wechat_is_not_asked(doctor: Doctor, outside: Outside) -> None:
    checks = doctor.checks(ok=False, env={"SCRM__SANDBOX__ENABLED": "true", "SCRM__WECOM__KF__SECRET": "sandbox-kf-secret",
                                          "SCRM__STORE__URL": f"postgresql+asyncpg://127.0.0.1:{closed_port()}/scrm"})
    assert checks["config"]["status"] == "fail" and "a sandbox value: wecom.kf.secret" in checks["config"]["detail"]
    assert checks["sandbox"]["status"] == "warn" and "a postgresql store" in checks["sandbox"]["detail"]
    assert "SCRM__SANDBOX__ENABLED=false" in checks["sandbox"]["fix"]
    assert checks["wecom.kf.token"]["status"] == "warn" and "wecom.kf.accounts" not in checks
    assert outside.fake.calls.count("gettoken") == 2  # contacts and app: nothing was asked with the unusable key


def test_a_configuration_that_does_not_load_is_one_failed_line(doctor: Doctor) -> None:
    out = doctor(ok=False, env={"SCRM__WECOM__KF__TOKEN": "sandbox-left-over"}).stdout
    assert out.startswith("✗ config  ") and "wecom.kf.token" in out and len(out.splitlines()) == 3
    checks = doctor.checks(ok=False, env={"SCRM__WECOM__KF__TOKEN": "sandbox-left-over"})
    assert list(checks) == ["config"]


async def test_a_store_behind_missing_or_empty_says_scrm_migrate(tmp_path: Path, outside: Outside) -> None:
    behind = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await upgrade_async(behind, "0007")
    name, empty = await create_pg_database()
    try:
        for url, said in ((behind, f"is at migration 0007, this version needs {head_revision()}"),
                          (f"sqlite+aiosqlite:///{tmp_path / 'none.db'}", "no database file"),
                          (empty, "has no schema yet")):
            failed = await asyncio.to_thread(Doctor(url, **outside.env).failing)
            assert list(failed) == ["store"] and said in failed["store"]["detail"]
            assert failed["store"]["fix"].startswith("run: scrm migrate")
    finally:
        await drop_pg_database(name)
    assert not (tmp_path / "none.db").exists()  # doctor looked, it did not create


def test_an_unreachable_store_names_its_url_without_the_password(outside: Outside) -> None:
    url = f"postgresql+asyncpg://scrm:hunter2@127.0.0.1:{closed_port()}/scrm"
    failed = Doctor(url, **outside.env).failing()
    assert list(failed) == ["store"] and "cannot be read" in failed["store"]["detail"]
    assert "hunter2" not in failed["store"]["detail"] and "SCRM__STORE__URL" in failed["store"]["fix"]


def test_redis_on_a_closed_port_fails_without_showing_its_password(doctor: Doctor) -> None:
    failed = doctor.failing(SCRM__REDIS__URL=f"redis://:hunter2@127.0.0.1:{closed_port()}/15")
    assert list(failed) == ["redis"] and "does not answer" in failed["redis"]["detail"]
    assert "hunter2" not in json.dumps(failed) and "SCRM__REDIS__URL" in failed["redis"]["fix"]


def test_an_external_rasa_must_answer_with_the_model_of_the_current_data(doctor: Doctor, outside: Outside) -> None:
    current = model_file(NluSettings(), faq=shipped_faq()).name
    external = {"SCRM__NLU__MODE": "external", "SCRM__NLU__RASA_URL": outside.rasa_url}
    outside.rasa.model = current
    checks = doctor.checks(env=external)
    assert (checks["nlu.model"]["status"], checks["nlu.server"]["status"]) == ("ok", "ok")
    outside.rasa.model = "nlu-0000000000000000.tar.gz"
    assert "trained on other data" in doctor.failing(**external)["nlu.model"]["detail"]
    outside.rasa.model = "20261201-my-model.tar.gz"
    assert doctor.checks(env=external)["nlu.model"]["status"] == "warn"
    outside.rasa.token = "right"
    assert "refuses the token (HTTP 401)" in doctor.failing(**external)["nlu.server"]["detail"]
    down = doctor.failing(SCRM__NLU__MODE="external", SCRM__NLU__RASA_URL=f"http://127.0.0.1:{closed_port()}")
    assert list(down) == ["nlu.server"] and "SCRM__NLU__RASA_URL" in down["nlu.server"]["fix"]


def test_a_managed_rasa_needs_its_virtualenv_a_model_and_a_server_with_that_model(
    doctor: Doctor, outside: Outside, tmp_path: Path
) -> None:
    venv, models = tmp_path / "rasa-venv", tmp_path / "models"
    managed = {"SCRM__NLU__MODE": "managed", "SCRM__NLU__MODEL_DIR": str(models), "SCRM__NLU__RASA_VENV": str(venv)}
    assert "setup_rasa.sh" in doctor.failing(**managed)["nlu.model"]["fix"]
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "rasa").write_text("#!/bin/sh\n")
    (venv / "bin" / "rasa").chmod(0o755)
    assert "scrm nlu train" in doctor.failing(**managed)["nlu.model"]["fix"]
    current = model_file(NluSettings(model_dir=str(models)), faq=shipped_faq())
    models.mkdir()
    current.write_bytes(b"model")
    checks = doctor.checks(env=managed)
    assert (checks["nlu.model"]["status"], checks["nlu.server"]["status"]) == ("ok", "warn")  # no server.json
    (models / "server.json").write_text(json.dumps({"url": outside.rasa_url, "token": "", "pid": os.getpid()}))
    outside.rasa.model = "nlu-0000000000000000.tar.gz"
    assert "restart scrm serve" in doctor.failing(**managed)["nlu.server"]["fix"]
    outside.rasa.model = current.name
    assert doctor.checks(env=managed)["nlu.server"]["status"] == "ok"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_public_callback_urls_answer_the_signed_check_of_the_running_bot(
    backend: Backend, outside: Outside, aiohttp_client: Any
) -> None:
    app = create_app(make_settings(backend, wecom=WECOM, oa=OA), run_workers=False)
    url = str((await aiohttp_client(app)).make_url("")).rstrip("/")
    run = Doctor(backend.store_url, **outside.env)

    passed: Result = await asyncio.to_thread(run, "--public-url", url)
    for path in ("/wecom/kf/callback", "/wecom/contacts/callback", "/wecom/app/callback", "/oa/callback"):
        assert re.search(rf"^✓ callback {path} +{url}{path} answers WeChat's signed check", passed.stdout, re.M)

    other_keys = await asyncio.to_thread(run.failing, "--public-url", url, SCRM__WECOM__KF__TOKEN="not-the-bots")
    assert list(other_keys) == ["callback /wecom/kf/callback"]
    assert "runs with other keys" in other_keys["callback /wecom/kf/callback"]["detail"]
    assert "SCRM__WECOM__KF__TOKEN" in other_keys["callback /wecom/kf/callback"]["fix"]

    wrong_path = await asyncio.to_thread(run.failing, "--public-url", f"{url}/bot")
    assert len(wrong_path) == 4 and all("HTTP 404" in check["detail"] for check in wrong_path.values())
