"""Settings of the flow engine (the `flows:` section); the lifecycle's are in crm_store/lifecycle_settings.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_FLOWS = PACKAGE_DIR / "library"


class FlowSettings(BaseModel):
    """interrupt: whether a message that matches another flow's trigger may stop the running flow.

    never: the running flow always gets the message; stronger: only a flow of higher
    priority (complaints, a person, unsubscribe); any: every matching trigger.
    """

    model_config = ConfigDict(extra="forbid")

    directory: Path = SHIPPED_FLOWS
    interrupt: Literal["never", "stronger", "any"] = "stronger"
    fallback_flow: str = "fallback"  # answers messages no trigger matched (when that flow exists)
    max_steps_per_turn: int = Field(default=50, ge=5, le=1000)
    wake_interval_s: float = Field(default=5.0, gt=0)
    publish_on_start: bool = True  # publish the directory when nothing has been published yet
