"""Configuration: config.yaml read once into typed settings, overridable from the environment.

Every key can be set as `SCRM__SECTION__KEY` (e.g. `SCRM__WECOM__KF__TOKEN`); the
environment wins over the file, so secrets never need to be committed. A wrong or
missing key stops start-up with a message that names it (`SettingsError`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from core.api_budget import DEFAULT_SHARE, MAX_WAIT_S
from crm_store.group_chat_settings import GroupChatSettings
from crm_store.growth_settings import GrowthSettings
from crm_store.handoff_settings import HandoffSettings
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.media_settings import MediaSettings
from crm_store.nurture_settings import NurtureSettings
from flows.loader import FlowLoadError, intents_of_domain
from flows.settings import FlowSettings
from nlu.settings import NluSettings

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
SANDBOX_SECRET_PREFIX = "sandbox"


class SettingsError(Exception):
    """The configuration cannot be used; the message names every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _public_url(value: str) -> str:
    url = value.strip().rstrip("/")
    if url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
        raise ValueError("must be the bot's address as reps and WeChat reach it, e.g. https://scrm.example.com")
    return url


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Where reps' phones reach the bot (links to stored media); empty: http://host:port, for the sandbox only.
    public_url: Annotated[str, AfterValidator(_public_url)] = ""
    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)


class StoreSettings(_Section):
    url: str = "sqlite+aiosqlite:///var/scrm.db"
    echo: bool = False


class RedisSettings(_Section):
    url: str = ""


class SecuritySettings(_Section):
    timestamp_tolerance_s: int = Field(default=300, ge=0)


def _aes_key_shape(value: SecretStr) -> SecretStr:
    key = value.get_secret_value()
    if key and (len(key) != 43 or not re.fullmatch(r"[A-Za-z0-9+/]{43}", key)):
        raise ValueError("must be the 43-character EncodingAESKey shown in the admin console")
    return value


AesKey = Annotated[SecretStr, AfterValidator(_aes_key_shape)]


class CallbackKeys(_Section):
    """A callback's token and EncodingAESKey, plus the secret that buys its access token."""

    token: SecretStr
    encoding_aes_key: AesKey
    secret: SecretStr = SecretStr("")


class AppKeys(CallbackKeys):
    agent_id: int = 0


class WecomSettings(_Section):
    corp_id: str
    api_base: str = "https://qyapi.weixin.qq.com/cgi-bin"
    kf: CallbackKeys
    contacts: CallbackKeys
    app: AppKeys


class OaSettings(_Section):
    app_id: str
    app_secret: SecretStr = SecretStr("")
    token: SecretStr
    encoding_aes_key: AesKey = SecretStr("")
    mode: Literal["plain", "compat", "safe"] = "safe"
    api_base: str = "https://api.weixin.qq.com/cgi-bin"

    @model_validator(mode="after")
    def _key_for_encrypted_modes(self) -> OaSettings:
        if self.mode != "plain" and not self.encoding_aes_key.get_secret_value():
            raise ValueError(f"oa.mode {self.mode} needs oa.encoding_aes_key")
        return self


class WorkerSettings(_Section):
    inbox_concurrency: int = Field(default=8, ge=1)
    outbox_concurrency: int = Field(default=32, ge=1)
    poll_interval_s: float = Field(default=0.5, gt=0)
    claim_ttl_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    retry_base_s: float = Field(default=1.0, gt=0)


class SenderSettings(_Section):
    """The outbox sender's share of each WeChat API budget (docs/quotas.md): WeCom's 10,000 calls a minute and
    150,000 an hour per API and enterprise, the OA's daily limits. Below 1 leaves the rest to other systems that
    call for the same corp or account. A call that fits within `budget_wait_s` waits; later ones are put back."""

    budget_share: float = Field(default=DEFAULT_SHARE, gt=0, le=1)
    budget_wait_s: float = Field(default=MAX_WAIT_S, ge=0, le=30)
    # Marketing sends (nurture steps, pushes) stop at this fraction of each budget: a push draining at the
    # platform's limit still leaves calls for the replies of customers chatting meanwhile.
    marketing_share: float = Field(default=0.8, gt=0, le=1)
    # False: calls are not counted at all (something else paces them, or a benchmark measures the sender
    # itself); WeChat's 45009 is still answered by a pause.
    budgets: bool = True


class ApiSettings(_Section):
    """The integration API (/api/v1): per-key rate limit and body size."""

    requests_per_window: int = Field(default=120, ge=1)
    window_s: int = Field(default=60, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=10 * 1024 * 1024)


class SandboxSettings(_Section):
    enabled: bool = False
    api_port: int = Field(default=8081, ge=0, le=65535)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


LogLevel = Annotated[str, AfterValidator(_log_level)]


class LoggingSettings(_Section):
    """The console: a root level, levels per logger (`{"scrm.sender": "DEBUG"}`), text or JSON lines.

    `json: true` is the older spelling of `format: json`, still accepted: either one turns JSON on
    (so `SCRM__LOGGING__JSON=true` keeps working over a file that says `format: text`).
    """

    level: LogLevel = "INFO"
    levels: dict[str, LogLevel] = {}
    format: Literal["text", "json"] = "text"
    json_format: bool = Field(default=False, alias="json")

    @model_validator(mode="after")
    def _json_alias(self) -> LoggingSettings:
        if self.json_format or self.format == "json":
            self.format, self.json_format = "json", True
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SCRM__",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    redis: RedisSettings = RedisSettings()
    security: SecuritySettings = SecuritySettings()
    wecom: WecomSettings
    oa: OaSettings
    nlu: NluSettings = NluSettings()
    flows: FlowSettings = FlowSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    growth: GrowthSettings = GrowthSettings()
    handoff: HandoffSettings = HandoffSettings()
    nurture: NurtureSettings = NurtureSettings()
    media: MediaSettings = MediaSettings()
    groupchats: GroupChatSettings = GroupChatSettings()
    worker: WorkerSettings = WorkerSettings()
    sender: SenderSettings = SenderSettings()
    api: ApiSettings = ApiSettings()
    sandbox: SandboxSettings = SandboxSettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get("SCRM_CONFIG", str(DEFAULT_CONFIG))
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))

    @model_validator(mode="after")
    def _growth_stages_known(self) -> Settings:
        unknown = self.growth.unknown_stages({stage.id for stage in self.lifecycle.stages})
        if unknown:
            raise ValueError(f"growth names unknown stage(s) {unknown}; the lifecycle defines them")
        unknown = sorted(set(self.handoff.high_value.stages) - {stage.id for stage in self.lifecycle.stages})
        if unknown:
            raise ValueError(f"handoff.high_value names unknown stage(s) {unknown}; the lifecycle defines them")
        return self

    @model_validator(mode="after")
    def _faq_intents_known(self) -> Settings:
        """A misspelt intent in flows.faq_answers_intents would quietly never match: name it instead."""
        domain = self.nlu.project_path() / "domain.yml"
        if not self.flows.faq_answers_intents or not domain.is_file():
            return self
        try:
            known = intents_of_domain(domain)
        except FlowLoadError:
            return self  # unreadable: the flows' own validation names the file and the reason
        unknown = sorted(set(self.flows.faq_answers_intents) - known)
        if unknown:
            raise ValueError(f"flows.faq_answers_intents names unknown intent(s) {unknown}; the NLU domain "
                             f"({domain}) defines: {', '.join(sorted(known))}")
        return self

    @model_validator(mode="after")
    def _no_sandbox_secrets_in_production(self) -> Settings:
        if self.sandbox.enabled:
            return self
        offending = [name for name, value in _secrets(self) if value.startswith(SANDBOX_SECRET_PREFIX)]
        if offending:
            raise ValueError(
                "sandbox is off but these keys still hold sandbox values: "
                + ", ".join(offending)
                + " (set them from the environment, e.g. SCRM__WECOM__KF__TOKEN)"
            )
        return self

    @property
    def public_base(self) -> str:
        """The bot's address for links people open: server.public_url, or this host and port without one."""
        return self.server.public_url or f"http://{self.server.host}:{self.server.port}"

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with every secret shown as '**********'."""
        return self.model_dump(mode="json", by_alias=True)


def _secrets(settings: Settings) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(model: BaseModel, path: str) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                found.append((f"{path}{name}", value.get_secret_value()))
            elif isinstance(value, BaseModel):
                walk(value, f"{path}{name}.")

    walk(settings, "")
    return found


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read config.yaml (or `path`) and the environment once; raise SettingsError naming bad keys."""
    config_path = Path(path) if path else Path(os.environ.get("SCRM_CONFIG", DEFAULT_CONFIG))
    if not config_path.is_file():
        raise SettingsError(f"config file not found: {config_path}")
    previous = os.environ.get("SCRM_CONFIG")
    os.environ["SCRM_CONFIG"] = str(config_path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, config_path)) from None
    finally:
        if previous is None:
            os.environ.pop("SCRM_CONFIG", None)
        else:
            os.environ["SCRM_CONFIG"] = previous


def _describe(exc: ValidationError, config_path: Path) -> str:
    lines = [f"invalid configuration ({config_path}, or SCRM__ environment variables):"]
    for error in exc.errors():
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        if not error["loc"]:
            lines.append(f"  {message}")
            continue
        key = ".".join(str(part) for part in error["loc"])
        env = "SCRM__" + "__".join(str(part).upper() for part in error["loc"])
        lines.append(f"  {key}: {message} [env {env}]")
    return "\n".join(lines)
