"""Configuration: the file, SCRM__ overrides, loud errors that name the key, masked secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from admin_cli.main import cli
from bot.settings import DEFAULT_CONFIG, SettingsError, load_settings

pytestmark = pytest.mark.usefixtures("clean_env")


def test_shipped_config_loads_with_sandbox_on() -> None:
    settings = load_settings()
    assert settings.sandbox.enabled
    assert settings.store.url.startswith("sqlite+aiosqlite")
    assert settings.security.timestamp_tolerance_s == 300


def test_environment_overrides_nested_keys() -> None:
    os.environ["SCRM__WECOM__KF__TOKEN"] = "from-env"
    os.environ["SCRM__SERVER__PORT"] = "9123"
    os.environ["SCRM__STORE__URL"] = "postgresql+asyncpg://postgres@127.0.0.1/scrm"
    settings = load_settings()
    assert settings.wecom.kf.token.get_secret_value() == "from-env"
    assert settings.server.port == 9123
    assert settings.store.url.endswith("/scrm")


def test_wrong_value_names_the_key_and_its_variable() -> None:
    os.environ["SCRM__SERVER__PORT"] = "eighty"
    with pytest.raises(SettingsError, match=r"server\.port.*SCRM__SERVER__PORT"):
        load_settings()


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(DEFAULT_CONFIG.read_text() + "\nserver_typo:\n  port: 1\n")
    with pytest.raises(SettingsError, match="server_typo: unknown key"):
        load_settings(config)


def test_missing_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(DEFAULT_CONFIG.read_text().replace("  corp_id: wwsandboxcorp\n", ""))
    with pytest.raises(SettingsError, match=r"wecom\.corp_id: Field required"):
        load_settings(config)


def test_a_misspelt_intent_the_faq_answers_is_named() -> None:
    os.environ["SCRM__FLOWS__FAQ_ANSWERS_INTENTS"] = '["ask_shiping"]'
    with pytest.raises(SettingsError, match=r"faq_answers_intents names unknown intent\(s\) \['ask_shiping'\].*ask_shipping"):
        load_settings()
    os.environ["SCRM__FLOWS__FAQ_ANSWERS_INTENTS"] = '["ask_shipping", "ask_product"]'
    assert load_settings().flows.faq_answers_intents == ("ask_shipping", "ask_product")


def test_bad_aes_key_is_refused() -> None:
    os.environ["SCRM__WECOM__APP__ENCODING_AES_KEY"] = "short"
    with pytest.raises(SettingsError, match="wecom.app.encoding_aes_key"):
        load_settings()


def test_production_refuses_sandbox_secrets() -> None:
    os.environ["SCRM__SANDBOX__ENABLED"] = "false"
    with pytest.raises(SettingsError, match="sandbox values: wecom.kf.token"):
        load_settings()


def test_config_show_masks_secrets() -> None:
    os.environ["SCRM__WECOM__KF__SECRET"] = "sandbox-very-secret-value"
    result = CliRunner().invoke(cli, ["config", "show"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["wecom"]["kf"]["secret"] == "**********"
    assert "very-secret" not in result.output


def test_cli_reports_bad_config_without_a_traceback() -> None:
    os.environ["SCRM__SERVER__PORT"] = "x"
    result = CliRunner().invoke(cli, ["config", "show"])
    assert result.exit_code == 1
    assert "server.port" in result.output and "Traceback" not in result.output
