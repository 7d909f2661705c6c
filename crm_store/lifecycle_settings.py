"""Settings of the lifecycle (the `lifecycle:` section).

Stages are the brand's, not ours: ids for code and flows, labels for people (flows
may use either), and the transitions that are allowed. Leaving the churned stage is
always allowed: a customer who comes back returns to the stage they left from.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StageDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    label: str = Field(min_length=1, max_length=32)


class LifecycleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: list[StageDef] = Field(
        default_factory=lambda: [
            StageDef(id="lead", label="潜在"),
            StageDef(id="interested", label="意向"),
            StageDef(id="customer", label="成交"),
            StageDef(id="repeat", label="复购"),
            StageDef(id="loyal", label="忠诚"),
            StageDef(id="churned", label="流失"),
        ]
    )
    initial: str = "lead"
    churned: str = "churned"
    transitions: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "lead": ["interested", "customer", "churned"],
            "interested": ["lead", "customer", "churned"],
            "customer": ["repeat", "loyal", "churned"],
            "repeat": ["loyal", "churned"],
            "loyal": ["repeat", "churned"],
            "churned": [],
        }
    )

    @model_validator(mode="after")
    def _stages_known(self) -> LifecycleSettings:
        ids = [stage.id for stage in self.stages]
        if len(set(ids)) != len(ids):
            raise ValueError("stage ids must be unique")
        named = {self.initial, self.churned} | set(self.transitions)
        named |= {target for targets in self.transitions.values() for target in targets}
        unknown = sorted(named - set(ids))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; defined: {ids}")
        return self
