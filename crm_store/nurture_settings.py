"""Settings of nurture sequences and pushes (the `nurture:` section): politeness and pace.

Marketing that annoys costs more than it earns: quiet hours, a cap per customer across
every sequence and push, and WeCom's own monthly limit on group messages are the brand's
to set, and are never overridden by a sequence.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

CLOCK = r"^([01]\d|2[0-3]):[0-5]\d$"


class NurtureSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = "Asia/Shanghai"  # the brand's clock (customers' own zones are not known)
    quiet_from: str = Field(default="21:30", pattern=CLOCK)  # no marketing from…
    quiet_until: str = Field(default="08:30", pattern=CLOCK)  # …until: due sends wait for the morning
    cap_per_day: int = Field(default=2, ge=1, le=50)  # marketing messages per customer per 24 h, all sources
    group_messages_per_month: int = Field(default=4, ge=0, le=31)  # WeCom: per customer, from the company
    handoff_recheck_s: int = Field(default=1800, ge=60)  # a rep has the customer: look again this much later
    quota_recheck_s: int = Field(default=3600, ge=60)  # chat window open, its messages used: look again this later
    batch: int = Field(default=500, ge=1, le=5000)  # due sends claimed per transaction
    interval_s: float = Field(default=5.0, gt=0)  # how often the scheduler looks for due sends
