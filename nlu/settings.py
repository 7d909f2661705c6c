"""Settings of the intent-detection stage (the `nlu:` section of config.yaml).

Paths left empty resolve next to this package, so a checkout runs with no
configuration: the Rasa project in nlu/project, models in nlu/models, and the
Rasa virtualenv in .venv-rasa at the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


class NluSettings(BaseModel):
    """How the bot reaches Rasa, and how long it may wait.

    mode: "managed" trains and runs Rasa as a child process on loopback;
    "external" calls `rasa_url` (production, several Rasa servers behind a
    load balancer); "rules" never calls Rasa (tests, or no Rasa virtualenv).
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["managed", "external", "rules"] = "managed"
    rasa_url: str = ""
    auth_token: SecretStr = SecretStr("")
    # A callback must be answered within 5 s: Rasa gets this long, then rules answer.
    timeout_ms: int = Field(default=300, gt=0)
    cache_ttl_s: int = Field(default=86400, ge=0)
    # Longer messages are cut before parsing: intent lives in the first sentences,
    # and DIET's cost grows with length.
    max_text_chars: int = Field(default=300, gt=0)
    # After this many Rasa failures in a row, skip Rasa for `breaker_cooldown_s`
    # instead of making every message wait for the timeout.
    breaker_failures: int = Field(default=3, gt=0)
    breaker_cooldown_s: float = Field(default=5.0, gt=0)

    # Managed mode.
    managed_host: str = "127.0.0.1"
    managed_port: int = Field(default=0, ge=0, le=65535)  # 0: any free port
    project_dir: str = ""  # default: nlu/project
    model_dir: str = ""  # default: nlu/models
    rasa_venv: str = ""  # default: $SCRM_RASA_VENV or .venv-rasa
    start_timeout_s: float = Field(default=600.0, gt=0)  # training included

    def project_path(self) -> Path:
        return Path(self.project_dir) if self.project_dir else PACKAGE_DIR / "project"

    def model_path(self) -> Path:
        return Path(self.model_dir) if self.model_dir else PACKAGE_DIR / "models"

    def rasa_venv_path(self) -> Path:
        if self.rasa_venv:
            return Path(self.rasa_venv)
        return Path(os.environ.get("SCRM_RASA_VENV") or REPO_ROOT / ".venv-rasa")
