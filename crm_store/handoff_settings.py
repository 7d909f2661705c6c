"""Settings of the handoff to reps (the `handoff:` section): when, to whom, and how long to wait.

Every threshold is the brand's to tune: a premium brand hands off sooner and waits less
for a rep; a busy one leans on the bot. The defaults are a small team's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crm_store.office_hours import HoursError, WeeklyHours


class HighValue(BaseModel):
    """Signals that a person should take over even though the customer did not ask.

    Any one is enough: the customer is at one of `stages`, has a social score of at least
    `social_min`, said one of `keywords`, or gave an amount (the slot `amount_slot`, in
    yuan) of at least `amount_min`. Each customer is handed off for it at most once per
    `cooldown_h`, so a released VIP is not handed straight back.
    """

    model_config = ConfigDict(extra="forbid")

    stages: list[str] = []
    social_min: float | None = Field(default=None, ge=0)
    keywords: list[str] = []
    amount_slot: str = "budget"
    amount_min: float | None = Field(default=None, ge=0)
    cooldown_h: float = Field(default=24, gt=0)


class HandoffMessages(BaseModel):
    """What the customer is told. {opens_at} is when a person will answer (今天 14:00, 周一 09:00)."""

    model_config = ConfigDict(extra="forbid")

    connecting: str = "好的，正在为您转接人工客服，请稍候。"
    queued: str = "现在是非工作时间，我们的同事将在 {opens_at} 回复您，留言我们都会看到。"
    busy: str = "客服同事都在忙，已为您排队，稍后会有专人联系您。"
    returned: str = "抱歉让您久等了，智能助手继续为您服务，有需要随时说「转人工」。"
    released: str = "本次人工服务已结束，智能助手继续为您服务。"


class HandoffSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = "Asia/Shanghai"
    office_hours: str = "mon-fri 09:00-18:00"
    intents: list[str] = ["want_human", "complain"]  # these intents hand off at once
    low_confidence: float = Field(default=0.5, ge=0, le=1)  # below it twice in a row: hand off
    high_value: HighValue = HighValue()
    routing: Literal["least_loaded", "round_robin"] = "least_loaded"
    answer_within_s: int = Field(default=300, ge=10)  # an offered handoff not taken by then goes to the next rep
    idle_release_s: int = Field(default=1800, ge=60)  # no rep activity for this long: back to the bot
    queued_give_up_s: int = Field(default=3 * 24 * 3600, ge=60)  # a queue nobody ever picks up returns too
    last_messages: int = Field(default=5, ge=0, le=20)  # on the rep's card
    card_url: str = ""  # the card's link, e.g. https://scrm.example.com/customers/{customer_id}
    messages: HandoffMessages = HandoffMessages()

    @field_validator("office_hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        try:
            WeeklyHours.parse(value)
        except HoursError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def hours(self) -> WeeklyHours:
        return WeeklyHours.parse(self.office_hours)
