"""Settings of the growth mechanics (the `growth:` section): share links, conversion, rewards, social value.

Reward rules are data the brand tunes ("3 friends → coupon A"): each names the event
that qualifies a friend, whom it rewards, and optionally a tier (the inviter's Nth
qualifying friend). The ledger grants each rule once per friend, or once per tier.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

QUALIFYING_EVENT = r"^(arrival|group_filled|group_joined|stage:[a-z][a-z0-9_]{0,31})$"


class RewardRule(BaseModel):
    """when: arrival (the friend came through a code), stage:<id> (first time at that stage), group_filled
    (a group-buy), group_joined (the friend joined a customer group through the inviter's personal code).

    tier 0: granted for every friend who qualifies; tier N: once, when the Nth friend qualifies.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    when: str = Field(pattern=QUALIFYING_EVENT)  # not `on`: YAML reads a bare on as true
    tier: int = Field(default=0, ge=0, le=100_000)
    to: Literal["inviter", "friend"] = "inviter"
    reward: str = Field(min_length=1, max_length=128)
    message: str = Field(default="", max_length=500)  # told to the receiver; {reward} and {friend} are filled in

    @model_validator(mode="after")
    def _tiers_reward_inviters(self) -> RewardRule:
        if self.tier and self.to != "inviter":
            raise ValueError(f"reward rule {self.id}: a tier counts an inviter's friends, so `to` must be inviter")
        return self


class SocialWeights(BaseModel):
    """How much each thing a customer brought counts in their social value."""

    model_config = ConfigDict(extra="forbid")

    friends: float = Field(default=1.0, ge=0)
    friends_converted: float = Field(default=5.0, ge=0)
    groups_led: float = Field(default=1.0, ge=0)
    groups_filled: float = Field(default=3.0, ge=0)
    downstream_converted: float = Field(default=2.0, ge=0)


class GrowthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = "Asia/Shanghai"  # the brand's day: daily caps, deadlines shown to customers
    share_link: str = ""  # the kf contact link (kf/add_contact_way); codes are appended as scene_param
    purchase_stages: list[str] = Field(default_factory=lambda: ["customer", "repeat", "loyal"])
    new_customer_window_s: int = Field(default=86_400, ge=0)  # how young a customer may be to be attributed
    referral_depth: int = Field(default=5, ge=2, le=20)  # how far up conversions count for social value
    group_fill_tags: list[str] = Field(default_factory=lambda: ["拼团成功"])
    rewards: list[RewardRule] = Field(default_factory=list)
    social_weights: SocialWeights = SocialWeights()

    @model_validator(mode="after")
    def _rule_ids_unique(self) -> GrowthSettings:
        ids = [rule.id for rule in self.rewards]
        duplicates = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
        if duplicates:
            raise ValueError(f"reward rule ids must be unique: {duplicates}")
        return self

    def unknown_stages(self, stage_ids: set[str]) -> list[str]:
        """Stages named here that the lifecycle does not define (checked with the lifecycle section)."""
        named = set(self.purchase_stages) | {rule.when[6:] for rule in self.rewards if rule.when.startswith("stage:")}
        return sorted(named - stage_ids)
