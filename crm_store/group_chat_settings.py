"""Settings of customer groups (the `groupchats:` section): full syncs, group pushes, group SOPs.

WeCom limits each API to about 10,000 calls a minute per enterprise (45009 beyond, the
DESIGN's platform facts); a full sync and a push's task creation stay under `calls_per_minute`
so that they leave room for everything else the bot calls at the same time.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GroupChatSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sync_page_size: int = Field(default=1000, ge=1, le=1000)  # groupchat/list: limit 1–1000
    sync_concurrency: int = Field(default=8, ge=1, le=64)  # groupchat/get calls in flight
    calls_per_minute: int = Field(default=6000, ge=1, le=10_000)  # per API, this process; WeCom's is 10,000
    push_check_s: float = Field(default=30.0, gt=0)  # how often due group pushes and SOP occurrences are looked for
    remind_after_s: int = Field(default=7200, ge=600)  # an owner who has not confirmed a task is reminded after this
    max_reminders: int = Field(default=3, ge=0, le=3)  # remind_groupmsg_send: 3 a task in 24 h (WeCom's)
    results_after_s: int = Field(default=3600, ge=60)  # results are read back this long after a task, then daily
    results_for_days: int = Field(default=3, ge=1, le=30)  # …for this many days
