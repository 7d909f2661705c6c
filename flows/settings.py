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
    # The FAQ (faq.yaml): answer when Rasa's ResponseSelector is at least this sure; below, offer the
    # closest entries at least `faq_offer_at` sure as choices (at most `faq_offer_max`), valid this long.
    faq_answer_at: float = Field(default=0.7, gt=0, le=1)
    faq_offer_at: float = Field(default=0.3, gt=0, le=1)
    faq_offer_max: int = Field(default=3, ge=1, le=5)
    faq_offer_ttl_s: int = Field(default=1800, ge=60)
    # A sure FAQ answer beats flows below this priority (price, coupons, order status: 50-60), not those above
    # (a complaint, a person, unsubscribing: 90+).
    faq_priority: int = Field(default=70, ge=0, le=100)
    # Intents the FAQ answers too when it is sure: what they mean is a question the FAQ holds. Rasa reads
    # "包邮不" as ask_shipping, whose flow (order status) would ask for a phone number; with shipping in the
    # FAQ, its answer is the better one. A flow taking the intent still runs when the FAQ is unsure.
    faq_answers_intents: tuple[str, ...] = ("ask_shipping",)
